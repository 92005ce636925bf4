"""Monitoring: the prediction log (or any dataset) against a version's training profile.

`run_monitor(config)` reads the log with Ray Data in one streaming pass. Each block is reduced
to small mergeable summaries — per-feature bin counts and category counts
(`raymlops.monitor.drift`), per-(time window, version, role) request counts, error counts and
log-spaced latency histograms, and, when labels are given, the labelled rows it holds —
and the driver adds the summaries up. Nothing row-sized ever reaches the driver except
labelled rows, and no per-row Python runs anywhere.

Which rows: those at or after `since`, and for drift those the monitored version served
(the `model_version` column; a dataset without it counts as the version's). KPIs cover every
version in the log. The result is a `MonitorResult` with a dataset-level boolean verdict, written
as JSON and as a self-contained HTML report, and recorded as an MLflow run in the registry's
experiment (drift metrics, KPIs, the report as an artifact).

The prediction log layout (written by serving): Parquet under
`<home>/predictions/<model>/date=YYYY-MM-DD/version=N/part-*.parquet` with `request_id`,
`timestamp` (UTC), `model_name`, `model_version`, `role`, `latency_ms`, the raw input
features, `prediction` and `proba_<class>`; an `error` column is used when present.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from raymlops.core.durations import parse_duration
from raymlops.core.errors import DataError
from raymlops.core.report import say
from raymlops.monitor.drift import (
    CategoricalReference,
    CategoricalSketch,
    DriftSettings,
    FeatureDrift,
    FeatureRule,
    Kind,
    NumericReference,
    NumericSketch,
    categorical_drift,
    check_feature_rules,
    dataset_drift,
    numeric_drift,
)
from raymlops.monitor.result import (
    KpiRow,
    MonitorResult,
    WindowMetrics,
    _from_us,
    _to_us,
    parse_since,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from raymlops.core.config import MonitorConfig, PipelineConfig
    from raymlops.registry.store import Registry

from raymlops.data.prediction_log import configured_log
from raymlops.monitor.kpis import _kpis, _load_reference, _performance, _read_labels, _Reference
from raymlops.monitor.record import (
    _log_to_mlflow,
    _write_outputs,
    report_location,
    staged_report,
)
from raymlops.monitor.scan import (
    FileGone,
    _Files,
    _list_source,
    _schema_names,
    _settings,
    default_prediction_log,
    run_pass,
)
from raymlops.monitor.summary import PREDICTION_LOG, _Partial, _Plan

__all__ = [
    "KpiRow",
    "MonitorResult",
    "WindowMetrics",
    "default_prediction_log",
    "monitor",
    "parse_duration",
    "parse_since",
    "run_monitor",
]

# --------------------------------------------------------------------------- monitor()


def _source_root(config: PipelineConfig, source: str, home: Path) -> str:
    """The folder or URI to read: the model's prediction log (which must exist), or the
    dataset `source` names."""
    if source != PREDICTION_LOG:
        return source
    root = config.monitor.prediction_log or configured_log(config, home)
    if "://" not in root and not Path(root).exists():
        raise DataError(
            f"no prediction log for '{config.registry.model_name}' at {root} (serve the model "
            "first, or pass --source PATH with a Parquet/CSV dataset)"
        )
    return root


def _since(files: _Files, since_at: datetime | None) -> _Files:
    """The files left after pruning whole date partitions before `since` (one day of slack
    for dates that are not UTC)."""
    keep = [
        since_at is None or d is None or d >= since_at.date() - timedelta(days=1)
        for d in files.dates
    ]
    return _Files(
        files.root,
        files.filesystem,
        [f for f, k in zip(files.files, keep, strict=True) if k],
        files.format,
        [d for d, k in zip(files.dates, keep, strict=True) if k],
        [v for v, k in zip(files.versions, keep, strict=True) if k],
    )


def _check_columns(
    root: str, names: set[str], ref: _Reference, model: str, since: bool, labels: bool
) -> None:
    """DataError naming what the source lacks for the version's features, `--since` (a
    timestamp) or `--labels` (the prediction and the request id to join on)."""
    missing = [c for c in [*ref.numeric, *ref.categorical] if c not in names]
    if missing:
        raise DataError(
            f"{root} lacks feature column(s) of {model} v{ref.version}: {', '.join(missing)}"
        )
    if since and "timestamp" not in names:
        raise DataError(f"--since needs a 'timestamp' column, which {root} does not have")
    if labels and "prediction" not in names:
        raise DataError(f"--labels needs the log's 'prediction' column, which {root} lacks")
    if labels and "request_id" not in names:
        raise DataError(f"--labels joins on 'request_id', which {root} does not have")


def run_monitor(
    config: PipelineConfig,
    *,
    since: str | datetime | None = None,
    source: str | None = None,
    version: int | str | None = None,
    labels: str | None = None,
    report: str | Path | None = None,
    home: str | Path | None = None,
    address: str | None = None,
    log_to_mlflow: bool | None = None,
    write_files: bool = True,
    echo: bool = True,
) -> MonitorResult:
    """Compare recent traffic with a version's training profile and report drift and KPIs.

    `source` is 'prediction-log' (the model's log: `monitor.prediction_log`, else serving's
    `serve.prediction_log.uri`/<model>, else <home>/predictions/<model>) or a Parquet/CSV
    file, folder or URI; `since` a duration back
    from now ('2h', '1d') or an ISO date/time; `version` a number or alias (default
    `monitor.version`, 'champion'); `labels` a file with `request_id` and the label column.
    Arguments left None take the `monitor` config section's values. Writes the JSON result
    and the HTML report (unless `write_files` is False) and logs an MLflow run (unless
    `log_to_mlflow` is False). Raises UserInputError (DataError, RegistryError) on bad input.
    """
    from raymlops.core.ray_session import ray_session
    from raymlops.registry.store import Registry

    started = time.monotonic()
    cfg = config.monitor
    settings = _drift_settings(cfg)
    model_name = config.registry.model_name
    registry = Registry.from_config(config, home)
    since_at = parse_since(since if since is not None else cfg.since)
    window = parse_duration(cfg.window)
    window_us = int(window.total_seconds() * 1_000_000)
    is_log = (source or cfg.source) == PREDICTION_LOG
    root = _source_root(config, source or cfg.source, registry.home)
    ref = _load_reference(registry, model_name, version if version is not None else cfg.version)
    check_feature_rules(settings.features, _column_kinds(ref), f"{model_name} v{ref.version}")
    say(f"▸ monitoring {model_name} v{ref.version}: {root} against its training profile", when=echo)
    files = _list_source(root)
    names = set(_schema_names(files))
    labels_path = labels if labels is not None else cfg.labels
    _check_columns(root, names, ref, model_name, since_at is not None, labels_path is not None)
    label_column = cfg.label_column or config.data.label
    task = ref.dataset.get("task", "classification")
    classes = ref.dataset.get("classes")
    proba_columns = [f"proba_{c}" for c in classes or []]
    predict_sample, include_pred = _prediction_plan(cfg, ref, names, is_log)
    pred_ref = ref.prediction if include_pred else None
    importance = _stored_importance(registry, model_name, ref.version)
    files = _since(files, since_at)
    timings: dict[str, float] = {"prepare": time.monotonic() - started}
    with ray_session(address):
        import ray

        labels_obj: Any = None
        if labels_path is not None:
            labels_obj = ray.put(_read_labels(labels_path, label_column))
        plan = _Plan(
            numeric={k: v.edges for k, v in ref.numeric.items()},
            categorical=list(ref.categorical),
            prediction_edges=pred_ref.edges if isinstance(pred_ref, NumericReference) else None,
            prediction_categorical=isinstance(pred_ref, CategoricalReference),
            version=ref.version,
            since_us=_to_us(since_at) if since_at is not None else None,
            window_us=window_us,
            sample_cap=settings.large_sample,
            labels=labels_obj,
            proba_columns=[c for c in proba_columns if c in names],
            row_sample=PREDICTION_SAMPLE_ROWS if predict_sample else 0,
        )
        t0 = time.monotonic()
        partial = _scan(root, files, plan, since_at, echo)
        timings["scan"] = time.monotonic() - t0
    predicted_rows = (
        _predict_sample(registry, model_name, ref, partial, settings, timings)
        if predict_sample
        else None
    )
    if not is_log:  # a dataset has no requests, times or latencies: no KPIs
        partial.kpi, partial.errors = [], []
    result = _assemble(
        partial,
        ref,
        settings,
        model_name,
        root,
        since_at,
        cfg.window,
        window_us,
        plan,
        task,
        classes,
        importance,
    )
    result.source_kind = PREDICTION_LOG if is_log else "dataset"
    result.predicted_rows = predicted_rows
    result.timings = timings
    location = report if report is not None else cfg.report
    to_mlflow = log_to_mlflow if log_to_mlflow is not None else cfg.log_to_mlflow
    _publish(result, config, registry, location, write_files, to_mlflow, started)
    return result


def _publish(
    result: MonitorResult,
    config: PipelineConfig,
    registry: Registry,
    location: str | Path | None,
    write_files: bool,
    to_mlflow: bool,
    started: float,
) -> None:
    """Write the JSON result and the HTML report (at `location`, None: the default place;
    a remote one is staged locally and uploaded whole) unless `write_files` is False, and
    log the MLflow run; the JSON written last carries the final timings and the run id."""
    timings = result.timings
    destination = report_location(result, location, registry.home, config.storage)
    with staged_report(result, destination if write_files else None) as local:
        if local is not None:
            t0 = time.monotonic()
            _write_outputs(result, local)
            timings["report"] = time.monotonic() - t0
        if to_mlflow:
            t0 = time.monotonic()
            result.run_id = _log_to_mlflow(registry, config, result)
            timings["mlflow"] = time.monotonic() - t0
        timings["total"] = time.monotonic() - started
        if isinstance(result.json_path, Path):  # final timings and run id
            result.json_path.write_text(json.dumps(result.to_dict(), indent=2))


#: Passes over the source a monitoring run makes at most when files vanish under it.
SCAN_ATTEMPTS = 3


def _scan(
    root: str,
    files: _Files,
    plan: _Plan,
    since_at: datetime | None,
    echo: bool,
    run: Callable[..., _Partial] = run_pass,
) -> _Partial:
    """The pass over `files` (`run`: the Ray Data pass); when a listed file is gone by the
    time it is read — a log compaction (serving's hourly one, or `raymlops log compact`)
    deletes the files it merged once their merged file is published — the source is listed
    again, which finds the merged file instead, and read anew from the start (a partial
    pass's sums would count some rows twice), up to `SCAN_ATTEMPTS` passes in all."""
    attempt = 1
    while True:
        mask = [v is None or v == plan.version for v in files.versions]
        say(f"  reading {len(files.files)} file(s) with Ray Data", when=echo)
        try:
            return run(files, plan, mask, show_progress=echo) if files.files else _Partial()
        except FileGone as exc:
            if attempt == SCAN_ATTEMPTS:
                raise DataError(
                    f"{exc} — files kept vanishing during {SCAN_ATTEMPTS} passes over {root} "
                    "(compactions running back to back?); run the monitor again"
                ) from None
            say(
                f"  {exc.file} vanished while it was read (a log compaction merged it): "
                "listing the source again and reading it anew",
                when=echo,
            )
            files = _since(_list_source(root), since_at)
            attempt += 1


#: Rows of a dataset source (one without a `prediction` column) that the version's
#: Predictor runs over, for the prediction's drift: a uniform sample (`summary.position_keys`).
PREDICTION_SAMPLE_ROWS = 5000


def _prediction_plan(
    cfg: MonitorConfig, ref: _Reference, names: set[str], is_log: bool
) -> tuple[bool, bool]:
    """Whether the version's Predictor must predict over a sample of the rows (a dataset
    without a `prediction` column), and whether the prediction is compared at all."""
    compare = cfg.include_prediction and ref.prediction is not None
    predict_sample = compare and not is_log and "prediction" not in names
    return predict_sample, compare and ("prediction" in names or predict_sample)


def _column_kinds(ref: _Reference) -> dict[str, Kind]:
    """The kind of every column the version's monitoring compares: its features, and the
    prediction when its profile has one (`monitor.features` may name any of them)."""
    kinds: dict[str, Kind] = {name: "numeric" for name in ref.numeric}
    kinds.update({name: "categorical" for name in ref.categorical})
    if isinstance(ref.prediction, NumericReference):
        kinds["prediction"] = "numeric"
    elif isinstance(ref.prediction, CategoricalReference):
        kinds["prediction"] = "categorical"
    return kinds


def _drift_settings(cfg: MonitorConfig) -> DriftSettings:
    """The `monitor` section as drift settings, the verdict and per-feature rules included."""
    rules = {k: FeatureRule(v.method, v.threshold) for k, v in cfg.features.items()}
    return replace(_settings(cfg), verdict=cfg.verdict, features=rules)


def _stored_importance(registry: Registry, name: str, version: int) -> dict[str, float]:
    """The version's normalised permutation importance (feature → weight), empty for a
    version registered before importance was stored."""
    from raymlops.model.importance import IMPORTANCE_FILE, FeatureImportance

    folder, _ = registry.download(name, version)  # cached and verified by _load_reference
    path = folder / IMPORTANCE_FILE
    if not path.exists():
        return {}
    stored = FeatureImportance.from_dict(json.loads(path.read_text()))
    return stored.weights if stored.importance else {}


def _predict_sample(
    registry: Registry,
    name: str,
    ref: _Reference,
    partial: _Partial,
    settings: DriftSettings,
    timings: dict[str, float],
) -> int | None:
    """The version's predictions over the pass's sample of the monitored rows, summarised
    into `partial.prediction` like a log's `prediction` column; the rows predicted."""
    from raymlops.monitor.summary import _KEY

    sample = partial.sample
    if sample is None or sample.num_rows == 0:
        return None
    started = time.monotonic()
    predictor = registry.load_predictor(name, ref.version)
    predictions = predictor.predict(sample.drop_columns([_KEY])).predictions
    if isinstance(ref.prediction, NumericReference):
        sketch = ref.prediction.new_sketch(settings.large_sample)
        sketch.update(np.asarray(predictions, dtype=np.float64))
        partial.prediction = sketch
    else:
        counts = CategoricalSketch()
        counts.update(pa.array(np.asarray(predictions).astype(str)))
        partial.prediction = counts
    timings["predict"] = time.monotonic() - started
    return int(sample.num_rows)


#: The same function under the name of its command (`from raymlops.monitor.run import monitor`).
monitor = run_monitor


def _assemble(
    partial: _Partial,
    ref: _Reference,
    settings: DriftSettings,
    model_name: str,
    source: str,
    since_at: datetime | None,
    window: str,
    window_us: int,
    plan: _Plan,
    task: str,
    classes: list[str] | None,
    importance: dict[str, float] | None = None,
) -> MonitorResult:
    """Statistics from the merged summary: per-feature drift, the verdict, KPIs, metrics."""
    features: list[FeatureDrift] = []
    for name, num_ref in ref.numeric.items():
        sketch = partial.numeric.get(name) or num_ref.new_sketch(settings.large_sample)
        features.append(numeric_drift(name, num_ref, sketch, settings))
    for name, cat_ref in ref.categorical.items():
        cat = partial.categorical.get(name) or CategoricalSketch()
        features.append(categorical_drift(name, cat_ref, cat, settings))
    if isinstance(ref.prediction, NumericReference) and plan.prediction_edges is not None:
        pred = partial.prediction
        if not isinstance(pred, NumericSketch):
            pred = ref.prediction.new_sketch(settings.large_sample)
        features.append(numeric_drift("prediction", ref.prediction, pred, settings, "prediction"))
    elif isinstance(ref.prediction, CategoricalReference) and plan.prediction_categorical:
        pred_cat = partial.prediction
        if not isinstance(pred_cat, CategoricalSketch):
            pred_cat = CategoricalSketch()
        features.append(
            categorical_drift("prediction", ref.prediction, pred_cat, settings, "prediction")
        )
    if partial.rows_compared < settings.min_samples:
        for f in features:
            if f.drifted is not None:
                f.drifted = None
                f.reason = f"{partial.rows_compared} rows < min_samples {settings.min_samples}"
    verdict = dataset_drift(
        features,
        settings,
        importance,
        prediction_decides=ref.prediction_source == "prediction profile",
    )
    kpis, kpi_windows = _kpis(partial, window_us)
    labelled = partial.labelled
    perf, perf_windows = _performance(
        _with_version(labelled, ref.version), task, classes, window_us
    )
    period = (
        (_from_us(partial.ts_min), _from_us(partial.ts_max))
        if partial.ts_min is not None and partial.ts_max is not None
        else None
    )
    return MonitorResult(
        model_name=model_name,
        version=ref.version,
        source=source,
        since=since_at,
        generated_at=datetime.now(timezone.utc),
        rows_read=partial.rows_read,
        rows_compared=partial.rows_compared,
        period=period,
        features=features,
        dataset=verdict,
        kpis=kpis,
        kpi_windows=kpi_windows,
        performance=perf,
        performance_windows=perf_windows,
        settings=settings,
        window=window,
        reference_rows=int(ref.profile.get("num_rows", 0)),
        prediction_reference=ref.prediction_source
        if any(f.role == "prediction" for f in features)
        else "",
    )


def _with_version(table: pa.Table | None, version: int) -> pa.Table | None:
    if table is None:
        return None
    return table.append_column("__version__", pa.array(np.full(table.num_rows, version)))
