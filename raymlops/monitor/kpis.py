"""The reference a version is compared with (its training profile), performance on
labelled rows, and KPIs per window, version and role."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.core.errors import DataError
from raymlops.monitor.drift import (
    CategoricalReference,
    NumericReference,
)
from raymlops.monitor.result import (
    KpiRow,
    WindowMetrics,
    _from_us,
)

if TYPE_CHECKING:
    from raymlops.registry.store import Registry

from raymlops.monitor.summary import (
    _LAT_BINS,
    _LAT_BINS_PER_DECADE,
    _LAT_MIN_MS,
    _ROLE_NAMES,
    _concat_cells,
    _Partial,
)

# --------------------------------------------------------------------------- reference


@dataclass
class _Reference:
    version: int
    profile: dict[str, Any]
    dataset: dict[str, Any]
    numeric: dict[str, NumericReference]
    categorical: dict[str, CategoricalReference]
    prediction: NumericReference | CategoricalReference | None
    prediction_source: str


def _load_reference(registry: Registry, name: str, ref: str | int) -> _Reference:
    folder, info = registry.download(name, ref)
    try:
        profile = json.loads((folder / "profile.json").read_text())
        dataset = json.loads((folder / "dataset.json").read_text())
    except FileNotFoundError as exc:
        raise DataError(
            f"{name} v{info.version} has no training profile ({exc.filename})"
        ) from None
    numeric: dict[str, NumericReference] = {}
    categorical: dict[str, CategoricalReference] = {}
    for col, stats in profile.get("columns", {}).items():
        if stats.get("kind") == "numeric":
            num = NumericReference.from_profile(stats)
            if num is not None:
                numeric[col] = num
        elif stats.get("kind") == "categorical":
            categorical[col] = CategoricalReference.from_profile(stats)
    # The prediction's reference: a prediction profile when the version has one, else the
    # distribution of the training label (what a calibrated model's predictions follow).
    pred_stats = profile.get("prediction")
    source = "prediction profile"
    if pred_stats is None:
        pred_stats, source = profile.get("label"), "training labels"
    prediction: NumericReference | CategoricalReference | None = None
    if pred_stats:
        if pred_stats.get("kind") == "categorical":
            prediction = CategoricalReference.from_profile(pred_stats)
        else:
            prediction = NumericReference.from_profile(pred_stats)
    return _Reference(info.version, profile, dataset, numeric, categorical, prediction, source)


# --------------------------------------------------------------------------- labels


def _read_labels(path: str, label_column: str) -> pa.Table:
    from raymlops.data.dataset import load_table

    table = load_table(path)
    for col in ("request_id", label_column):
        if col not in table.column_names:
            raise DataError(
                f"labels file {path} has no column '{col}' (columns: "
                f"{', '.join(table.column_names[:20])}); it needs request_id and the label"
            )
    table = table.select(["request_id", label_column]).rename_columns(["request_id", "__label__"])
    table = table.set_column(0, "request_id", table.column("request_id").cast(pa.string()))
    table = table.filter(pc.is_valid(table.column("__label__")))
    # One label per request: the last one given wins.
    ids = table.column("request_id").to_numpy(zero_copy_only=False)
    _, last = np.unique(ids[::-1], return_index=True)
    return table.take(pa.array(np.sort(len(ids) - 1 - last)))


def _performance(
    labelled: pa.Table | None,
    task: str,
    classes: list[str] | None,
    window_us: int,
) -> tuple[list[WindowMetrics], list[WindowMetrics]]:
    """Metrics on the labelled rows: over the whole period and per time window."""
    from raymlops.model.metrics import classification_metrics, regression_metrics

    if labelled is None or labelled.num_rows == 0:
        return [], []
    frame = labelled.to_pandas()
    if "__version__" not in frame:
        frame["__version__"] = -1
    frame["__window__"] = frame["__ts__"] // window_us

    def score(part: Any) -> dict[str, float]:
        if task == "classification" and classes:
            truth = part["__label__"].astype(str).map({c: i for i, c in enumerate(classes)})
            known = truth.notna().to_numpy()
            part, y = part[known], truth[known].to_numpy(dtype=np.int64)
            if len(part) == 0:
                return {}
            probas = [f"proba_{c}" for c in classes]
            if all(c in part for c in probas):
                probs = part[probas].to_numpy(dtype=np.float64)
                return classification_metrics(y, probs, len(classes))
            pred = part["prediction"].astype(str).map({c: i for i, c in enumerate(classes)})
            return {"accuracy": float(np.mean(pred.to_numpy() == y))}
        y_true = part["__label__"].to_numpy(dtype=np.float64)
        return regression_metrics(y_true, part["prediction"].to_numpy(dtype=np.float64))

    overall = [
        WindowMetrics(int(v) if v >= 0 else None, None, len(g), score(g))
        for v, g in frame.groupby("__version__")
    ]
    per_window = [
        WindowMetrics(int(v) if v >= 0 else None, _from_us(int(w) * window_us), len(g), score(g))
        for (v, w), g in frame.groupby(["__version__", "__window__"])
    ]
    return overall, per_window


# --------------------------------------------------------------------------- KPIs


def _latency_quantile(counts: np.ndarray, q: float) -> float | None:
    total = counts.sum()
    if total == 0:
        return None
    cum = np.cumsum(counts)
    target = q * total
    b = int(np.searchsorted(cum, target, side="left"))
    before = cum[b - 1] if b > 0 else 0
    frac = (target - before) / counts[b] if counts[b] else 0.5
    # Bin b covers [LAT_MIN·10^((b−1)/60), LAT_MIN·10^(b/60)); geometric interpolation.
    low_exp = (b - 1 + float(np.clip(frac, 0, 1))) / _LAT_BINS_PER_DECADE
    return float(_LAT_MIN_MS * 10**low_exp)


def _kpis(partial: _Partial, window_us: int) -> tuple[list[KpiRow], list[KpiRow]]:
    import pandas as pd

    kpi_cells = _concat_cells(partial.kpi)
    if not kpi_cells:
        return [], []
    cells = pd.DataFrame(kpi_cells)
    has_version, has_latency = "model_version" in partial.seen, "latency_ms" in partial.seen
    errors = None
    if "error" in partial.seen:  # the log records errors (zero rows of them, maybe)
        error_cells = _concat_cells(partial.errors)
        errors = (
            pd.DataFrame(error_cells)
            if error_cells
            else pd.DataFrame(columns=["window", "version", "role", "extra", "count"])
        )

    def rows(keys: list[str]) -> list[KpiRow]:
        out = []
        err_by = errors.groupby(keys)["count"].sum().to_dict() if errors is not None else None
        for key, group in cells.groupby(keys, sort=True):
            parts = dict(zip(keys, key, strict=True))
            hist = np.bincount(
                group["extra"].to_numpy(), weights=group["count"].to_numpy(), minlength=_LAT_BINS
            )
            version = int(parts["version"])
            window = parts.get("window")
            out.append(
                KpiRow(
                    version=version if has_version and version >= 0 else None,
                    role=_ROLE_NAMES[int(parts["role"])],
                    window_start=_from_us(int(window) * window_us) if window is not None else None,
                    requests=int(group["count"].sum()),
                    errors=int(err_by.get(key, 0)) if err_by is not None else None,
                    latency_p50_ms=_latency_quantile(hist, 0.5) if has_latency else None,
                    latency_p95_ms=_latency_quantile(hist, 0.95) if has_latency else None,
                )
            )
        return out

    return rows(["version", "role"]), rows(["window", "version", "role"])
