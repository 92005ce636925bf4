"""The validation gate: evidence a version must show on held-out rows before promotion.

`run_gate` re-creates the held-out test split of the exact dataset version a model version
was trained on (same config, same seed, digest verified) — or takes a file — and runs the
checks of the config's `gate` section: absolute metric thresholds, a comparison with the
current champion (`raymlops.loop.comparison`: a paired test on fresh labelled rows neither
model trained on when retraining held some out, else on the same held-out rows; skipped for
a model's first version), behavioural tests (invariance, minimum functionality on
slices, directional expectations), group-fairness limits and a p95 latency budget. Every
prediction goes through `Predictor.predict`, the one path from rows to predictions.

The result is logged as an MLflow run (metrics + `gate.json`), attached to the version as
`raymlops.gate.*` tags (which `raymlops promote` reads), and appended to the model's alias
history. The pure parts (`evaluate_gate`, the fairness metrics) need no registry and no Ray.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raymlops.core.config import (
    GATE_METRICS,
    DirectionalTest,
    GateConfig,
    InvarianceTest,
    PipelineConfig,
)
from raymlops.core.errors import ConfigError, DataError
from raymlops.loop.comparison import FIRST_VERSION, champion_check
from raymlops.loop.gate_result import (
    _GATE_TAG,
    GATE_STATUS_TAG,
    CheckResult,
    CheckStatus,
    GateResult,
    _fmt,
    load_gate_result,
    recorded_gate,
)
from raymlops.loop.scoring import Scored, check_metric_for_task, score, task_metrics
from raymlops.registry.store import metric_key

_EPS = 1e-12
_MISSING = "<missing>"

if TYPE_CHECKING:
    import pyarrow as pa

    from raymlops.model.predictor import Predictor
    from raymlops.registry.store import ModelVersionInfo, Registry

__all__ = [
    "GATE_STATUS_TAG",
    "CheckResult",
    "GateResult",
    "demographic_parity_difference",
    "equalized_odds_difference",
    "evaluate_gate",
    "group_rates",
    "load_gate_result",
    "recorded_config",
    "recorded_gate",
    "run_gate",
    "task_metrics",
]


def group_rates(
    y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray
) -> dict[str, dict[str, float]]:
    """Per group: rows, selection rate P(ŷ=1), true-positive rate and false-positive rate.

    `y_true` and `y_pred` are booleans (the positive class or not). A rate that is undefined
    in a group (no positives for TPR, no negatives for FPR) is NaN.
    """
    truth = np.asarray(y_true, dtype=bool)
    pred = np.asarray(y_pred, dtype=bool)
    labels = np.asarray(groups).astype(str)
    out: dict[str, dict[str, float]] = {}
    for group in sorted(set(labels.tolist())):
        mask = labels == group
        t, p = truth[mask], pred[mask]
        positives, negatives = int(t.sum()), int((~t).sum())
        out[group] = {
            "rows": float(mask.sum()),
            "selection_rate": float(p.mean()),
            "true_positive_rate": float((p & t).sum() / positives) if positives else math.nan,
            "false_positive_rate": float((p & ~t).sum() / negatives) if negatives else math.nan,
        }
    return out


def _spread(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(max(finite) - min(finite)) if len(finite) >= 2 else math.nan


def demographic_parity_difference(
    y_pred: np.ndarray, groups: np.ndarray, min_group_rows: int = 1
) -> float:
    """max − min over groups of P(ŷ = positive | group) (0 = parity; fairlearn's
    definition). Groups with fewer than `min_group_rows` rows are left out; NaN when fewer
    than two groups remain."""
    rates = group_rates(np.zeros(len(y_pred), dtype=bool), y_pred, groups)
    return _spread([r["selection_rate"] for r in rates.values() if r["rows"] >= min_group_rows])


def equalized_odds_difference(
    y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, min_group_rows: int = 1
) -> float:
    """The larger of the true-positive-rate gap and the false-positive-rate gap (max − min
    over groups), as fairlearn defines it; a group where a rate is undefined is left out of
    that rate's gap. NaN when neither gap has two groups to compare."""
    rates = [r for r in group_rates(y_true, y_pred, groups).values() if r["rows"] >= min_group_rows]
    gaps = [
        _spread([r["true_positive_rate"] for r in rates]),
        _spread([r["false_positive_rate"] for r in rates]),
    ]
    finite = [g for g in gaps if not math.isnan(g)]
    return max(finite) if finite else math.nan


# --------------------------------------------------------------------------- evaluation


def _predict_outputs(predictor: Predictor, frame: pd.DataFrame) -> np.ndarray:
    prep = predictor.preprocessor
    return predictor.predict_matrix(prep.transform(frame))


def _bound_check(
    kind: str, name: str, value: float, low: float | None, high: float | None
) -> CheckResult:
    parts = []
    if low is not None:
        parts.append(f"≥ {_fmt(low)}")
    if high is not None:
        parts.append(f"≤ {_fmt(high)}")
    limit = " and ".join(parts)
    if math.isnan(value):
        return CheckResult(kind, name, "failed", value, limit, "undefined on these rows")
    ok = (low is None or value >= low - _EPS) and (high is None or value <= high + _EPS)
    return CheckResult(kind, name, "passed" if ok else "failed", value, limit)


def _slice_labels(values: pd.Series, bins: int) -> np.ndarray:
    """One label per row: the value as a string, or a quantile bin '[lo, hi)' for numeric
    columns with more distinct values than bins; missing values get '<missing>'."""
    numeric = pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(
        values.dtype
    )
    if numeric:
        floats = values.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = floats[np.isfinite(floats)]
        if len(np.unique(finite)) > max(bins, 10):
            edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)))
            index = np.clip(np.searchsorted(edges, floats, side="right") - 1, 0, len(edges) - 2)
            names = [
                f"[{edges[i]:.4g}, {edges[i + 1]:.4g}{']' if i == len(edges) - 2 else ')'}"
                for i in range(len(edges) - 1)
            ]
            labels: np.ndarray = np.asarray(names, dtype=object)[index]
        else:
            labels = np.asarray(
                [f"{v:g}" if float(v).is_integer() else repr(float(v)) for v in floats],
                dtype=object,
            )
        labels[~np.isfinite(floats)] = _MISSING
        return labels
    strings = values.astype("string")
    return np.asarray(strings.fillna(_MISSING).to_numpy(dtype=object))


def _slice_key(label: str) -> tuple[int, float, str]:
    """Slices in numeric order (bins by their lower edge), then text; missing last."""
    text = label[1:].split(",")[0] if label.startswith("[") else label
    try:
        return (0, float(text), label)
    except ValueError:
        return (1 if label != _MISSING else 2, 0.0, label)


def _slice_table(predictor: Predictor, scored: Scored, labels: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for value in sorted(set(labels.tolist()), key=_slice_key):
        mask = labels == value
        metrics = task_metrics(predictor, scored.y[mask], scored.outputs[mask])
        rows.append({"slice": str(value), "rows": int(mask.sum()), "metrics": metrics})
    return rows


def _perturb(frame: pd.DataFrame, test: InvarianceTest, rng: np.random.Generator) -> pd.DataFrame:
    if test.column not in frame.columns:
        raise ConfigError(f"gate.invariance: column '{test.column}' is not in the held-out rows")
    out = frame.copy()
    col = out[test.column]
    kind = test.perturbation
    if kind == "set":
        out[test.column] = pd.Series([test.value] * len(out), index=out.index)
    elif kind == "shuffle":
        out[test.column] = col.to_numpy()[rng.permutation(len(out))]
    elif kind == "map":
        mapping = {str(k): v for k, v in dict(test.value).items()}
        out[test.column] = [mapping.get(str(v), v) for v in col.tolist()]
    else:
        if not pd.api.types.is_numeric_dtype(col.dtype):
            raise ConfigError(
                f"gate.invariance: perturbation '{kind}' needs a numeric column, "
                f"'{test.column}' is {col.dtype}"
            )
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        amount = float(test.value)
        if kind == "add":
            values = values + amount
        elif kind == "scale":
            values = values * amount
        else:  # noise
            std = float(np.nanstd(values)) or 1.0
            values = values + rng.normal(0.0, amount * std, size=len(values))
        out[test.column] = values
    return out


def _changed(predictor: Predictor, before: np.ndarray, after: np.ndarray, tol: float) -> np.ndarray:
    if predictor.preprocessor.classes is not None:
        return np.asarray(before.argmax(axis=1) != after.argmax(axis=1))
    return np.asarray(np.abs(after - before) > tol)


def _positive_index(predictor: Predictor, name: str | None, where: str) -> int:
    classes = predictor.preprocessor.classes or []
    if name is None:
        return len(classes) - 1
    if name not in classes:
        raise ConfigError(f"{where}: class '{name}' is not one of {classes}")
    return classes.index(name)


def _directional(
    predictor: Predictor, frame: pd.DataFrame, base: np.ndarray, test: DirectionalTest
) -> CheckResult:
    name = test.name or f"{test.column} {test.add:+g} → {test.expect}"
    if test.column not in frame.columns:
        raise ConfigError(f"gate.directional: column '{test.column}' is not in the held-out rows")
    if not pd.api.types.is_numeric_dtype(frame[test.column].dtype):
        raise ConfigError(f"gate.directional: column '{test.column}' is not numeric")
    moved = frame.copy()
    moved[test.column] = frame[test.column].to_numpy(dtype=np.float64, na_value=np.nan) + test.add
    after = _predict_outputs(predictor, moved)
    if predictor.preprocessor.classes is not None:
        j = _positive_index(predictor, test.target_class, "gate.directional")
        delta = after[:, j] - base[:, j]
        name += f" (P[{predictor.preprocessor.classes[j]}])"
    else:
        delta = after - base
    sign = 1.0 if test.expect == "increase" else -1.0
    right = float(np.mean(sign * delta > test.tolerance))
    wrong = float(np.mean(sign * delta < -test.tolerance))
    status: CheckStatus = "passed" if right >= test.min_fraction - _EPS else "failed"
    return CheckResult(
        "directional",
        name,
        status,
        right,
        f"≥ {_fmt(test.min_fraction)} of rows",
        f"{wrong:.1%} of rows moved the other way",
    )


def _measure_latency(
    predictor: Predictor, frame: pd.DataFrame, requests: int, warmup: int
) -> dict[str, float]:
    records = frame[predictor.feature_names].to_dict(orient="records")
    if not records:
        raise DataError("no rows to time single-row predictions with")
    for i in range(warmup):
        predictor.predict([records[i % len(records)]])
    timings = np.empty(requests)
    for i in range(requests):
        row = [records[i % len(records)]]
        start = time.perf_counter()
        predictor.predict(row)
        timings[i] = (time.perf_counter() - start) * 1000.0
    return {
        "requests": float(requests),
        "p50_ms": float(np.percentile(timings, 50)),
        "p95_ms": float(np.percentile(timings, 95)),
        "p99_ms": float(np.percentile(timings, 99)),
        "mean_ms": float(timings.mean()),
    }


def evaluate_gate(
    gate: GateConfig,
    candidate: Predictor,
    rows: pd.DataFrame | pa.Table,
    label: str,
    *,
    champion: Predictor | None = None,
    champion_skip_reason: str = "no champion to compare with",
    model: str | None = None,
    version: int | None = None,
    data: dict[str, Any] | None = None,
    latency_fn: Callable[[Predictor, pd.DataFrame, int, int], dict[str, float]] | None = None,
    fresh: pd.DataFrame | pa.Table | None = None,
    fresh_note: str = "",
) -> GateResult:
    """Run every configured check of `gate` on `rows` (which must hold `label`).

    Pure evaluation: nothing is logged. `champion` is compared with the candidate on
    `fresh` labelled rows neither trained on (a paired test) when given, else on `rows`;
    `fresh_note` says where the fresh rows came from, or why there are none. Raises
    ConfigError when the gate names a column, class or metric that does not fit the model
    or the rows.
    """
    frame = rows if isinstance(rows, pd.DataFrame) else rows.to_pandas()
    if label not in frame.columns:
        raise DataError(f"the held-out rows have no label column '{label}'")
    frame = frame[frame[label].notna()].reset_index(drop=True)
    if frame.empty:
        raise DataError("no held-out rows with a label to gate on")
    scored = score(candidate, frame, label)
    metrics = task_metrics(candidate, scored.y, scored.outputs)
    ev = _Evaluation(
        gate, candidate, frame, label, scored, metrics, np.random.default_rng(gate.seed)
    )
    checks: list[CheckResult] = []
    for metric, bound in gate.thresholds.items():
        check_metric_for_task(metric, metrics, "gate.thresholds")
        checks.append(_bound_check("threshold", metric, metrics[metric], bound.min, bound.max))
    if fresh is not None and not isinstance(fresh, pd.DataFrame):
        fresh = fresh.to_pandas()
    if fresh is not None and label not in fresh.columns:
        raise DataError(f"the fresh rows have no label column '{label}'")
    champion_checks, champion_info, compared = champion_check(
        ev, champion, champion_skip_reason, fresh, fresh_note
    )
    checks += champion_checks
    for column in gate.slices:
        ev.labels_of(column, "gate.slices")
    checks += _slice_checks(ev)
    checks += _invariance_checks(ev)
    checks += [_directional(candidate, frame, scored.outputs, test) for test in gate.directional]
    fairness_checks, fairness = _fairness_checks(ev)
    checks += fairness_checks
    latency_checks, latency = _latency_check(ev, latency_fn)
    checks += latency_checks
    task = candidate.preprocessor.task
    slice_report = ev.slice_report
    return GateResult(
        model=model if model is not None else str(candidate.metadata.get("name", "")),
        version=version if version is not None else int(candidate.metadata.get("version", 0)),
        status="failed" if any(c.status == "failed" for c in checks) else "passed",
        task=task,
        checks=checks,
        metrics=metrics,
        slices=slice_report,
        fairness=fairness,
        champion=champion_info,
        comparison=compared,
        latency=latency,
        data={"rows": len(frame), **(data or {})},
        gate_config=gate.model_dump(mode="json"),
    )


@dataclass
class _Evaluation:
    """What every check of one gate run reads: the rows, the candidate's scores and
    metrics, the seeded generator, and the slices cut so far (each column cut once)."""

    gate: GateConfig
    candidate: Predictor
    frame: pd.DataFrame
    label: str
    scored: Scored
    metrics: dict[str, float]
    rng: np.random.Generator
    slice_labels: dict[str, np.ndarray] = field(default_factory=dict)
    slice_report: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def labels_of(self, column: str, where: str) -> np.ndarray:
        """Each row's slice of `column` (its slice table joins the report)."""
        if column not in self.frame.columns:
            raise ConfigError(f"{where}: column '{column}' is not in the held-out rows")
        if column not in self.slice_labels:
            self.slice_labels[column] = _slice_labels(self.frame[column], self.gate.slice_bins)
            self.slice_report[column] = _slice_table(
                self.candidate, self.scored, self.slice_labels[column]
            )
        return self.slice_labels[column]


def _slice_checks(ev: _Evaluation) -> list[CheckResult]:
    """Minimum functionality on slices (gate.slice_minimums)."""
    gate, metrics, labels_of = ev.gate, ev.metrics, ev.labels_of
    slice_report = ev.slice_report
    checks: list[CheckResult] = []
    for rule_ in gate.slice_minimums:
        check_metric_for_task(rule_.metric, metrics, "gate.slice_minimums")
        labels_of(rule_.column, "gate.slice_minimums")
        wanted = None if rule_.values is None else {str(v) for v in rule_.values}
        name = f"{rule_.column}: {rule_.metric}" + (
            f" in {', '.join(sorted(wanted))}" if wanted else " in every slice"
        )
        limit = " and ".join(
            p
            for p in (
                f"≥ {_fmt(rule_.min)}" if rule_.min is not None else "",
                f"≤ {_fmt(rule_.max)}" if rule_.max is not None else "",
            )
            if p
        )
        checked, failing, small = [], [], []
        present = {row["slice"]: row for row in slice_report[rule_.column]}
        for value in sorted(wanted) if wanted is not None else sorted(present):
            row = present.get(value)
            if row is None or row["rows"] < gate.min_slice_rows:
                small.append(f"{value} ({row['rows'] if row else 0} rows)")
                continue
            v = float(row["metrics"][rule_.metric])
            checked.append(v)
            bad = (
                math.isnan(v)
                or (rule_.min is not None and v < rule_.min - _EPS)
                or (rule_.max is not None and v > rule_.max + _EPS)
            )
            if bad:
                failing.append(f"{value}={_fmt(v)}")
        if not checked:
            checks.append(
                CheckResult(
                    "slice",
                    name,
                    "skipped",
                    None,
                    limit,
                    "no slice with enough rows: " + ", ".join(small),
                )
            )
            continue
        higher = GATE_METRICS[rule_.metric]
        finite = [v for v in checked if not math.isnan(v)]
        worst = (min(finite) if higher else max(finite)) if finite else math.nan
        detail = ("failing: " + ", ".join(failing)) if failing else ""
        if small:
            detail = (detail + "; " if detail else "") + "too few rows: " + ", ".join(small)
        checks.append(
            CheckResult("slice", name, "failed" if failing else "passed", worst, limit, detail)
        )

    return checks


def _invariance_checks(ev: _Evaluation) -> list[CheckResult]:
    """Predictions that must not move under a perturbation (gate.invariance)."""
    gate, frame, candidate, scored, rng = ev.gate, ev.frame, ev.candidate, ev.scored, ev.rng
    checks: list[CheckResult] = []
    for inv in gate.invariance:
        perturbed = _perturb(frame, inv, rng)
        after = _predict_outputs(candidate, perturbed)
        changed = float(np.mean(_changed(candidate, scored.outputs, after, inv.tolerance)))
        name = inv.name or f"{inv.column} {inv.perturbation}" + (
            f" {inv.value}" if inv.value is not None and inv.perturbation != "map" else ""
        )
        checks.append(
            CheckResult(
                "invariance",
                name,
                "passed" if changed <= inv.max_changed + _EPS else "failed",
                changed,
                f"≤ {_fmt(inv.max_changed)} changed",
            )
        )

    return checks


def _fairness_checks(ev: _Evaluation) -> tuple[list[CheckResult], dict[str, Any] | None]:
    """Parity of outcomes across a sensitive column (gate.fairness)."""
    gate, candidate, scored, labels_of = ev.gate, ev.candidate, ev.scored, ev.labels_of
    prep = candidate.preprocessor
    if gate.fairness is None:
        return [], None
    checks: list[CheckResult] = []
    fc = gate.fairness
    if prep.classes is None:
        raise ConfigError("gate.fairness applies to classification models only")
    positive = _positive_index(candidate, fc.positive_class, "gate.fairness.positive_class")
    groups = labels_of(fc.sensitive_column, "gate.fairness.sensitive_column")
    truth = scored.y == positive
    pred = scored.predicted == positive
    per_group = group_rates(truth, pred, groups)
    dpd = demographic_parity_difference(pred, groups, fc.min_group_rows)
    eod = equalized_odds_difference(truth, pred, groups, fc.min_group_rows)
    fairness: dict[str, Any] = {
        "sensitive_column": fc.sensitive_column,
        "positive_class": prep.classes[positive],
        "groups": per_group,
        "demographic_parity_difference": dpd,
        "equalized_odds_difference": eod,
        "min_group_rows": fc.min_group_rows,
    }
    compared = sum(1 for g in per_group.values() if g["rows"] >= fc.min_group_rows)
    for key, limit_value in (
        ("demographic_parity_difference", fc.max_demographic_parity_difference),
        ("equalized_odds_difference", fc.max_equalized_odds_difference),
    ):
        if limit_value is None:
            continue
        value = fairness[key]
        if math.isnan(value):
            checks.append(
                CheckResult(
                    "fairness",
                    f"{fc.sensitive_column}: {key}",
                    "skipped",
                    None,
                    f"≤ {_fmt(limit_value)}",
                    f"{compared} group(s) with ≥ {fc.min_group_rows} rows",
                )
            )
            continue
        checks.append(
            CheckResult(
                "fairness",
                f"{fc.sensitive_column}: {key}",
                "passed" if value <= limit_value + _EPS else "failed",
                value,
                f"≤ {_fmt(limit_value)}",
            )
        )

    return checks, fairness


def _latency_check(
    ev: _Evaluation,
    latency_fn: Callable[[Predictor, pd.DataFrame, int, int], dict[str, float]] | None,
) -> tuple[list[CheckResult], dict[str, float] | None]:
    """The p95 of single-row predictions against the budget (gate.latency)."""
    gate, candidate, frame = ev.gate, ev.candidate, ev.frame
    if gate.latency is None:
        return [], None
    checks: list[CheckResult] = []
    measure = latency_fn or _measure_latency
    latency = measure(candidate, frame, gate.latency.requests, gate.latency.warmup)
    checks.append(
        CheckResult(
            "latency",
            "p95 single-row predict (ms)",
            "passed" if latency["p95_ms"] <= gate.latency.p95_ms else "failed",
            latency["p95_ms"],
            f"≤ {_fmt(gate.latency.p95_ms)} ms",
        )
    )

    return checks, latency


# --------------------------------------------------------------------------- registry


def recorded_config(registry: Registry, name: str, version: int | str) -> PipelineConfig:
    """The config a version was trained with (its verified `config.json` artifact)."""
    folder, info = registry.download(name, version)
    path = folder / "config.json"
    if not path.is_file():
        raise DataError(f"{name} v{info.version} records no config.json")
    try:
        return PipelineConfig.model_validate(json.loads(path.read_text()))
    except Exception as exc:
        raise ConfigError(
            f"{name} v{info.version}: its recorded config no longer validates ({exc}); "
            "pass one with -c"
        ) from None


def _changed_data(name: str, info: ModelVersionInfo, path: str, digest: str, recorded: str) -> str:
    return (
        f"the data at {path} changed since {name} v{info.version} was trained "
        f"(sha256 {digest[:12]}… ≠ recorded {recorded[:12]}…); pass the held-out rows with "
        "--data PATH"
    )


def _held_out_sample(
    name: str, info: ModelVersionInfo, trained: PipelineConfig, recorded: str | None, rows: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Streaming data: a bounded uniform sample of the test split, never the whole data."""
    from raymlops.train.streaming import held_out_sample

    try:
        table, digest, total = held_out_sample(trained.data, rows)
    except DataError as exc:
        raise DataError(
            f"cannot re-create the test split of {name} v{info.version}: {exc}; "
            "pass the held-out rows with --data PATH"
        ) from None
    if recorded and digest != recorded:
        raise DataError(_changed_data(name, info, trained.data.path, digest, recorded))
    return table.to_pandas(), {
        "source": trained.data.path,
        "digest": digest,
        "split": "test",
        "seed": trained.data.split.seed,
        "test_rows": total,
        "sampled_rows": table.num_rows,
    }


def _held_out_rows(
    registry: Registry,
    name: str,
    info: ModelVersionInfo,
    trained: PipelineConfig,
    data: str | None,
    max_rows: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    from raymlops.data.dataset import load_dataset, load_with_digest

    if data is not None:
        table, digest = load_with_digest(data, "auto")
        frame = table.to_pandas()
        return frame, {"source": data, "digest": digest, "split": "file"}
    recorded = info.tags.get("raymlops.dataset_digest")
    if trained.data.streaming:
        return _held_out_sample(name, info, trained, recorded, max_rows)
    try:
        dataset, splits, _ = load_dataset(trained.data, trained.features)
    except DataError as exc:
        raise DataError(
            f"cannot re-create the test split of {name} v{info.version}: {exc}; "
            "pass the held-out rows with --data PATH"
        ) from None
    if recorded and dataset.digest != recorded:
        raise DataError(_changed_data(name, info, trained.data.path, dataset.digest, recorded))
    return splits.test.to_pandas(), {
        "source": trained.data.path,
        "digest": dataset.digest,
        "split": "test",
        "seed": trained.data.split.seed,
    }


def _log_result(registry: Registry, info: ModelVersionInfo, result: GateResult) -> str:
    """An MLflow run (in the version's experiment) with the gate's metrics and gate.json."""
    source = registry.get_run(info.run_id) if info.run_id else None
    tags = {
        f"{_GATE_TAG}model": result.model,
        f"{_GATE_TAG}version": str(result.version),
        f"{_GATE_TAG}status": result.status,
        f"{_GATE_TAG}source_run": info.run_id or "",
        "raymlops.dataset_digest": str(result.data.get("digest", "")),
    }
    with registry.run(
        f"gate-{result.model}-v{result.version}",
        tags,
        experiment="raymlops-gate",
        experiment_id=source.info.experiment_id if source is not None else None,
    ) as run_id:
        _log_gate_run(registry, run_id, result)
    return run_id


def _log_gate_run(registry: Registry, run_id: str, result: GateResult) -> None:
    """The gate's metrics (champion, slices, fairness, latency, counts) and gate.json."""
    metrics: list[tuple[str, float, int]] = [
        (k, v, 0) for k, v in result.metrics.items() if not math.isnan(v)
    ]
    if result.champion:
        # Like with like: on fresh rows both models' figures go under fresh/ (the top-level
        # metrics are the candidate's on its held-out rows); champion/* is the champion on
        # those same held-out rows.
        fresh = (result.comparison or {}).get("basis") == "fresh"
        sides = (
            [("fresh/candidate", result.champion.get("fresh_metrics", {}))] if fresh else []
        ) + [("fresh/champion" if fresh else "champion", result.champion["metrics"])]
        metrics += [
            (metric_key(*prefix.split("/"), k, sep="/"), v, 0)
            for prefix, figures in sides
            for k, v in figures.items()
            if not math.isnan(v)
        ]
    for name in ("paired", "guard"):  # the comparison's paired test, and its guard's
        paired = (result.comparison or {}).get(name)
        prefix = ("comparison",) if name == "paired" else ("comparison", "guard")
        if paired:
            metrics += [
                (metric_key(*prefix, key, sep="/"), float(paired[key]), 0)
                for key in ("rows", "candidate", "champion", "difference", "low", "high")
                if paired.get(key) is not None and math.isfinite(float(paired[key]))
            ]
    for column, rows in result.slices.items():
        for row in rows:
            metrics += [
                (metric_key("slice", column, row["slice"], k, sep="/"), v, 0)
                for k, v in row["metrics"].items()
                if not math.isnan(v)
            ]
    if result.fairness:
        for key in ("demographic_parity_difference", "equalized_odds_difference"):
            value = result.fairness[key]
            if not math.isnan(value):
                metrics.append((metric_key("fairness", key, sep="/"), value, 0))
    if result.latency:
        metrics += [(metric_key("latency", k, sep="/"), v, 0) for k, v in result.latency.items()]
    metrics += [
        ("checks_failed", float(len(result.failed_checks)), 0),
        ("checks_total", float(len(result.checks)), 0),
    ]
    registry.log(run_id, metrics=metrics)
    result.run_id = run_id
    registry.log_text(run_id, json.dumps(result.to_dict(), indent=2, default=str), "gate.json")


def run_gate(
    registry: Registry,
    config: PipelineConfig | None,
    name: str,
    version: int | str,
    data: str | None = None,
    *,
    record: bool = True,
    by: str | None = None,
    echo: Callable[[str], None] | None = None,
    fresh: str | None = None,
    fresh_note: str = "",
) -> GateResult:
    """Gate one registered version and (with `record`) log and attach the result.

    `config` supplies the `gate` section (None: the config the version was trained with).
    The rows are the held-out test split of the version's own dataset, re-split with its
    recorded config and seed and checked against the recorded digest — or the file `data`.
    The champion is the version behind `gate.champion.alias` now, compared with a paired
    test on `fresh` (a file of labelled rows neither model trained on) when given, else on
    the same held-out rows.

    A version that holds the champion alias only because it was the model's first
    registered version is gated on everything but the comparison ("first version:
    thresholds only"); if it fails, recording clears the alias — no version is champion
    until one passes — and says so.

    Recording logs an MLflow run (metrics, gate.json), tags the version
    (`raymlops.gate.status` = passed/failed, `.run_id`, `.time`, `.champion`, `.summary`),
    appends a `gate` event to the alias history and regenerates the model card.
    """
    say = echo or (lambda _message: None)
    info = registry.version_info(name, version)
    trained = recorded_config(registry, name, info.version)
    policy = config if config is not None else trained
    gate = policy.gate
    say(f"▸ loading the held-out rows of {name} v{info.version}")
    frame, data_info = _held_out_rows(registry, name, info, trained, data, gate.max_rows)
    candidate = registry.load_predictor(name, info.version)
    alias = gate.champion.alias if gate.champion is not None else "champion"
    target = registry.alias_target(name, alias)
    first = target == info.version and _champion_by_registration(registry, name, alias, info)
    champion, champion_version, skip_reason = _champion_to_compare(
        registry, gate, info, target, first
    )
    sampled = (
        f" (a uniform sample of the {data_info['test_rows']} test rows)"
        if "sampled_rows" in data_info and data_info["sampled_rows"] < data_info["test_rows"]
        else ""
    )
    say(f"▸ running {_count_checks(gate)} checks on {len(frame)} rows{sampled}")
    result = evaluate_gate(
        gate,
        candidate,
        frame,
        trained.data.label,
        champion=champion,
        champion_skip_reason=skip_reason,
        model=name,
        version=info.version,
        data=data_info,
        fresh=_fresh_rows(fresh),
        fresh_note=fresh_note,
    )
    if fresh is not None and result.comparison is not None:
        result.comparison["source"] = fresh
    if not record:
        return result
    clear = first and not result.passed
    if clear:
        result.comparison = {**(result.comparison or {}), "basis": "first version"}
        result.comparison["cleared"] = _no_champion_reason(alias, info.version)
    compared_with = champion_version if champion is not None else None
    _record(registry, info, result, gate, data_info, compared_with, by)
    if clear:
        _clear_first_champion(registry, name, alias, info.version, by, say)
    from raymlops.loop.cards import refresh_card

    refresh_card(registry, name, info.version, echo=say)
    return result


def _champion_to_compare(
    registry: Registry,
    gate: GateConfig,
    info: ModelVersionInfo,
    champion_version: int | None,
    first: bool,
) -> tuple[Predictor | None, int | None, str]:
    """The champion to compare the candidate `info` with (its Predictor and version), or
    None and why not: comparison off, a first version, the candidate is the champion, none.
    `champion_version`: where `gate.champion.alias` points now (run_gate read it once)."""
    if gate.champion is None:
        return None, None, "no champion to compare with"
    if first:
        return None, champion_version, FIRST_VERSION
    if champion_version == info.version:
        return None, champion_version, f"v{info.version} is the {gate.champion.alias}"
    if champion_version is None:
        return None, None, f"no '{gate.champion.alias}' to compare with"
    return registry.load_predictor(info.name, champion_version), champion_version, ""


def _record(
    registry: Registry,
    info: ModelVersionInfo,
    result: GateResult,
    gate: GateConfig,
    data_info: dict[str, Any],
    compared_with: int | None,
    by: str | None,
) -> None:
    """Log the result's MLflow run, tag the version with its status and summary and
    append the `gate` event to the alias history (`compared_with`: the champion version
    the candidate was compared with, None when it was not)."""
    name = info.name
    run_id = _log_result(registry, info, result)
    compared = (
        "off" if gate.champion is None else (f"v{compared_with}" if compared_with else "none")
    )
    summary: dict[str, Any] = {
        "failed": [f"{c.kind} {c.name}" for c in result.failed_checks][:20],
        "checks": len(result.checks),
        "skipped": sum(1 for c in result.checks if c.status == "skipped"),
    }
    tags = {
        f"{_GATE_TAG}status": result.status,
        f"{_GATE_TAG}run_id": run_id,
        f"{_GATE_TAG}time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(result.timestamp)),
        f"{_GATE_TAG}champion": compared,
        f"{_GATE_TAG}champion_alias": gate.champion.alias if gate.champion else "",
        f"{_GATE_TAG}data_digest": str(data_info.get("digest", "")),
        f"{_GATE_TAG}comparison": _comparison_tag(result)[:4000],
        f"{_GATE_TAG}summary": json.dumps(summary)[:4000],
    }
    for key, value in tags.items():
        registry.set_version_tag(name, info.version, key, value)
    registry.record_event(
        name,
        gate.champion.alias if gate.champion else "champion",
        "gate",
        from_version=compared_with,
        to_version=info.version,
        reason=f"gate {result.status}"
        + (f": {', '.join(summary['failed'][:3])}" if result.failed_checks else ""),
        by=by,
        details={
            "status": result.status,
            "run_id": run_id,
            **summary,
            "comparison": _comparison_tag(result),
        },
    )


def _champion_by_registration(
    registry: Registry, name: str, alias: str, info: ModelVersionInfo
) -> bool:
    """Whether `info` holds `alias` only as the model's first registered version: the
    alias's latest move is that registration, and no gate of the version has passed."""
    if recorded_gate(info).get("status") == "passed":
        return False
    moves = [
        e
        for e in registry.alias_history(name)
        if e.alias == alias and (e.moved or e.action == "register")
    ]
    return bool(moves) and moves[-1].action == "register" and moves[-1].to_version == info.version


def _no_champion_reason(alias: str, version: int) -> str:
    return (
        f"v{version} was {alias} only as the first version and failed the gate: "
        f"no version is {alias} until one passes"
    )


def _clear_first_champion(
    registry: Registry,
    name: str,
    alias: str,
    version: int,
    by: str | None,
    say: Callable[[str], None],
) -> None:
    """Take `alias` from a first version that failed its gate (recorded as `clear`, after
    the gate event)."""
    from raymlops.core.errors import RegistryError

    reason = _no_champion_reason(alias, version)
    try:
        registry.set_alias(
            name, alias, None, action="clear", reason=reason, by=by, expected_from=version
        )
    except RegistryError as exc:  # someone moved the alias meanwhile: theirs stands
        say(f"▸ {alias} not cleared: {exc}")
        return
    say(f"▸ {reason}")


def _fresh_rows(path: str | None) -> pd.DataFrame | None:
    if path is None:
        return None
    from raymlops.data.dataset import load_table

    return load_table(path).to_pandas()


def _comparison_tag(result: GateResult) -> str:
    """The `raymlops.gate.comparison` tag: what the champion comparison was based on."""
    compared = result.comparison or {}
    text = compared.get("summary") or compared.get("note") or ""
    return f"{compared.get('basis', 'none')}: {text}" if text else str(compared.get("basis", ""))


def _count_checks(gate: GateConfig) -> int:
    fairness = gate.fairness
    return (
        len(gate.thresholds)
        + (1 if gate.champion is not None else 0)
        + len(gate.slice_minimums)
        + len(gate.invariance)
        + len(gate.directional)
        + (
            (fairness.max_demographic_parity_difference is not None)
            + (fairness.max_equalized_odds_difference is not None)
            if fairness is not None
            else 0
        )
        + (1 if gate.latency is not None else 0)
    )
