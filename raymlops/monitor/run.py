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
import math
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.core.durations import parse_duration
from raymlops.core.errors import DataError, RaymlopsError, UserInputError
from raymlops.core.home import home_dir
from raymlops.core.report import say
from raymlops.data.dataset import csv_parse_options, read_file
from raymlops.data.prediction_log import log_root, model_log_root, parse_partition
from raymlops.monitor.drift import (
    CategoricalReference,
    CategoricalSketch,
    DriftSettings,
    FeatureDrift,
    NumericReference,
    NumericSketch,
    categorical_drift,
    dataset_drift,
    numeric_drift,
)
from raymlops.monitor.result import (
    KpiRow,
    MonitorResult,
    WindowMetrics,
    _from_us,
    _iso,
    _to_us,
    parse_since,
)
from raymlops.registry.store import metric_key

if TYPE_CHECKING:
    from raymlops.core.config import MonitorConfig, PipelineConfig
    from raymlops.registry.store import Registry

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

PREDICTION_LOG = "prediction-log"
ROLES = ("champion", "challenger", "shadow")
_ROLE_NAMES = (*ROLES, "other")
# Latency histogram: 60 log-spaced bins per decade from 1 µs to 100 s (≤ 2% quantile error).
_LAT_MIN_MS = 1e-3
_LAT_BINS_PER_DECADE = 60
_LAT_DECADES = 8
_LAT_BINS = _LAT_BINS_PER_DECADE * _LAT_DECADES + 2  # + under/overflow
_NO_TIME = np.iinfo(np.int64).min  # a missing timestamp
# Columns of the log read when present (a file without one still reads).
_META = ("timestamp", "model_version", "role", "latency_ms", "error")
_ERROR = "__raymlops_error__"
_PLAIN_STRINGS = ("request_id", "error")  # strings read as such: unique ids, free text
_BLOCK_ROWS = 200_000  # rows gathered from small files into one block before summarising


# --------------------------------------------------------------------------- the plan


@dataclass
class _Plan:
    """What each block computes (shipped to the Ray tasks; small and picklable)."""

    numeric: dict[str, np.ndarray]
    categorical: list[str]
    prediction_edges: np.ndarray | None  # numeric prediction (regression)
    prediction_categorical: bool
    version: int | None
    since_us: int | None
    window_us: int
    sample_cap: int
    labels: Any = None  # an ObjectRef (Ray) or a pa.Table: request_id + __label__
    proba_columns: list[str] = field(default_factory=list)

    def columns(self, drift: bool = True) -> list[str]:
        """The columns a block needs: the log's meta columns (each file gives those it has),
        and the features and predictions only for drift."""
        cols: list[str] = list(_META)
        if drift:
            cols += [*self.numeric, *self.categorical]
            if self.prediction_edges is not None or self.prediction_categorical:
                cols.append("prediction")
            if self.labels is not None:
                cols += ["request_id", *self.proba_columns]
                if "prediction" not in cols:
                    cols.append("prediction")
        return list(dict.fromkeys(cols))


@dataclass
class _Partial:
    """One block's (or the merged) mergeable summary."""

    rows_read: int = 0
    rows_compared: int = 0
    ts_min: int | None = None
    ts_max: int | None = None
    numeric: dict[str, NumericSketch] = field(default_factory=dict)
    categorical: dict[str, CategoricalSketch] = field(default_factory=dict)
    prediction: NumericSketch | CategoricalSketch | None = None
    # KPI cells (window index, version, role index, latency bin → count) and error counts
    # per cell, one dict of arrays per block; labelled rows, one table per block. Kept as
    # lists so that merging many blocks costs one concatenation at the end, not one each.
    kpi: list[dict[str, np.ndarray]] = field(default_factory=list)
    errors: list[dict[str, np.ndarray]] = field(default_factory=list)
    labelled_parts: list[pa.Table] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # the meta columns some block had

    def merge(self, other: _Partial) -> _Partial:
        self.seen |= other.seen
        self.rows_read += other.rows_read
        self.rows_compared += other.rows_compared
        if other.ts_min is not None:
            self.ts_min = other.ts_min if self.ts_min is None else min(self.ts_min, other.ts_min)
        if other.ts_max is not None:
            self.ts_max = other.ts_max if self.ts_max is None else max(self.ts_max, other.ts_max)
        for name, num in other.numeric.items():
            if name in self.numeric:
                self.numeric[name].merge(num)
            else:
                self.numeric[name] = num
        for name, cat in other.categorical.items():
            if name in self.categorical:
                self.categorical[name].merge(cat)
            else:
                self.categorical[name] = cat
        if other.prediction is not None:
            if self.prediction is None:
                self.prediction = other.prediction
            else:
                self.prediction.merge(other.prediction)  # type: ignore[arg-type]
        self.kpi += other.kpi
        self.errors += other.errors
        self.labelled_parts += other.labelled_parts
        return self

    @property
    def labelled(self) -> pa.Table | None:
        """The labelled rows of every block (None when there are none)."""
        parts = [t for t in self.labelled_parts if t.num_rows]
        return pa.concat_tables(parts, promote_options="permissive") if parts else None


def _concat_cells(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = [p for p in parts if p]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _timestamps_us(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Microseconds since the epoch (UTC); strings are parsed as ISO timestamps."""
    t = column.type
    if not pa.types.is_timestamp(t):
        try:
            column = pc.cast(column, pa.timestamp("us", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"column 'timestamp' of type {t} is not a timestamp") from None
        t = column.type
    if t.unit != "us":
        column = pc.cast(column, pa.timestamp("us", tz=t.tz))
    values = column.cast(pa.int64())
    if values.null_count:
        values = pc.fill_null(values, _NO_TIME)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric column as float64 with missing values as NaN."""
    t = column.type
    if pa.types.is_floating(t) and column.null_count == 0:
        return np.asarray(column.to_numpy(zero_copy_only=False))
    try:
        cast = pc.cast(column, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"column of type {t} is not numeric") from None
    return np.asarray(cast.to_numpy(zero_copy_only=False), dtype=np.float64)


def _cells(
    window: np.ndarray,
    version: np.ndarray,
    role: np.ndarray,
    extra: np.ndarray,
    size: int,
    weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Count rows per (window, version, role, extra) cell, vectorised: the keys are packed
    into one integer code, counted with bincount (or unique when the code space is large)."""
    if len(window) == 0:
        return {}
    w0, v_values = int(window.min()), np.unique(version)
    v_idx = np.searchsorted(v_values, version)
    code = ((window - w0) * len(v_values) + v_idx) * len(_ROLE_NAMES) + role
    code = code * size + extra
    span = int(code.max()) + 1
    if span <= 4 * len(code) + 65536:
        counts = np.bincount(code, weights=weights, minlength=span)
        keys = np.flatnonzero(counts)
        counts = counts[keys]
    else:
        keys, inverse = np.unique(code, return_inverse=True)
        counts = np.bincount(inverse, weights=weights)
        keep = counts > 0
        keys, counts = keys[keep], counts[keep]
    extra_out = keys % size
    rest = keys // size
    role_out = rest % len(_ROLE_NAMES)
    rest = rest // len(_ROLE_NAMES)
    return {
        "window": rest // len(v_values) + w0,
        "version": v_values[rest % len(v_values)],
        "role": role_out.astype(np.int64),
        "extra": extra_out.astype(np.int64),
        "count": counts.astype(np.int64),
    }


def _latency_bins(latency: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.log10(latency / _LAT_MIN_MS) * _LAT_BINS_PER_DECADE
    bins = np.floor(np.nan_to_num(scaled, nan=-1.0, neginf=-1.0, posinf=1e9)) + 1
    return np.asarray(np.clip(bins, 0, _LAT_BINS - 1), dtype=np.int64)


def _codes(column: pa.ChunkedArray, values: tuple[str, ...]) -> np.ndarray:
    """Position of each row's value in `values` (len(values) for others and nulls); for a
    dictionary-encoded column the lookup runs on the dictionary, then by index."""
    other = len(values)
    value_set = pa.array(values)
    parts = []
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            lookup = pc.fill_null(pc.index_in(chunk.dictionary.cast(pa.string()), value_set), other)
            table = np.append(np.asarray(lookup.to_numpy(zero_copy_only=False), np.int64), other)
            indices = pc.fill_null(chunk.indices, len(chunk.dictionary))  # null → `other`
            parts.append(table[np.asarray(indices.to_numpy(zero_copy_only=False), np.int64)])
        else:
            codes = pc.fill_null(pc.index_in(chunk.cast(pa.string()), value_set), other)
            parts.append(np.asarray(codes.to_numpy(zero_copy_only=False), np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _is_error(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    t = column.type
    if pa.types.is_boolean(t):
        flags = pc.fill_null(column, False)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        flags = pc.and_(pc.is_valid(column), pc.not_equal(pc.fill_null(column, ""), ""))
    else:
        flags = pc.is_valid(column)
    return np.asarray(flags.to_numpy(zero_copy_only=False), dtype=bool)


def summarise_block(table: pa.Table, plan: _Plan) -> _Partial:  # noqa: PLR0915 — the per-block summary of the hot path in one piece; to be split (#13)
    """Reduce one block of the log to its mergeable summary (the per-task work)."""
    out = _Partial()
    names = set(table.column_names)
    out.seen = names & set(_META)
    n = table.num_rows
    ts = _timestamps_us(table.column("timestamp")) if "timestamp" in names else None
    if ts is not None and plan.since_us is not None:
        keep = ts >= plan.since_us
        if not keep.all():
            table = table.filter(pa.array(keep))
            ts = ts[keep]
            n = table.num_rows
    out.rows_read = n
    if n == 0:
        return out
    if ts is not None:
        known = ts[ts != _NO_TIME]
        if len(known) < n:  # rows without a time count in the earliest window
            ts = np.where(ts == _NO_TIME, known.min() if len(known) else 0, ts)
        if len(known):
            out.ts_min, out.ts_max = int(known.min()), int(known.max())
    versions = (
        np.asarray(
            pc.fill_null(table.column("model_version").cast(pa.int64()), -1).to_numpy(),
            dtype=np.int64,
        )
        if "model_version" in names
        else np.full(n, -1 if plan.version is None else plan.version, np.int64)
    )
    # KPIs: requests, errors and latency per (window, version, role).
    window = ts // plan.window_us if ts is not None else np.zeros(n, np.int64)
    if "role" in names:
        role = _codes(table.column("role"), ROLES)
    else:
        role = np.full(n, len(ROLES), np.int64)  # "other": a dataset, not a serving log
    if "latency_ms" in names:
        lat_bin = _latency_bins(_floats(table.column("latency_ms")))
    else:
        lat_bin = np.zeros(n, np.int64)
    out.kpi = [_cells(window, versions, role, lat_bin, _LAT_BINS)]
    if "error" in names:
        flags = _is_error(table.column("error"))
        zeros = np.zeros(n, np.int64)
        out.errors = [_cells(window, versions, role, zeros, 1, flags.astype(float))]
    # Drift: only the rows the monitored version served.
    rows = table
    if plan.version is not None and "model_version" in names:
        mine = versions == plan.version
        if not mine.all():
            rows = table.filter(pa.array(mine))
            ts = ts[mine] if ts is not None else None
    out.rows_compared = rows.num_rows
    if rows.num_rows == 0:  # another version's rows: KPIs only
        return out
    for name, edges in plan.numeric.items():
        if name not in names:  # a file of another version, read for its KPIs only
            continue
        sketch = NumericSketch(edges, sample_cap=plan.sample_cap)
        try:
            sketch.update(_floats(rows.column(name)))
        except DataError:
            raise DataError(f"feature column '{name}' is not numeric") from None
        out.numeric[name] = sketch
    for name in plan.categorical:
        if name not in names:
            continue
        cat = CategoricalSketch()
        cat.update(rows.column(name))
        out.categorical[name] = cat
    if "prediction" in names:
        if plan.prediction_edges is not None:
            pred = NumericSketch(plan.prediction_edges, sample_cap=plan.sample_cap)
            pred.update(_floats(rows.column("prediction")))
            out.prediction = pred
        elif plan.prediction_categorical:
            pred_cat = CategoricalSketch()
            pred_cat.update(rows.column("prediction"))
            out.prediction = pred_cat
    if plan.labels is not None and "request_id" in names:
        out.labelled_parts = [_join_labels(rows, ts, plan)]
    return out


def _join_labels(rows: pa.Table, ts: np.ndarray | None, plan: _Plan) -> pa.Table:
    labels = plan.labels
    if not isinstance(labels, pa.Table):
        import ray

        labels = ray.get(labels)
    keep = ["request_id", "prediction", *[c for c in plan.proba_columns if c in rows.column_names]]
    subset = rows.select([c for c in keep if c in rows.column_names])
    subset = subset.append_column(
        "__ts__", pa.array(ts if ts is not None else np.zeros(rows.num_rows, np.int64))
    )
    subset = subset.set_column(0, "request_id", subset.column("request_id").cast(pa.string()))
    joined = subset.join(labels, "request_id", join_type="inner")
    return joined.drop_columns(["request_id"])


def _summarise_batch(batch: pa.Table, plan: _Plan) -> pa.Table:
    """Ray Data map_batches function: one block in, one row holding its summary out. A
    raymlops error (a column of the wrong type, say) travels back as data, to be raised on
    the driver as itself: raised here, Ray would only report a failed task."""
    if _ERROR in batch.column_names:  # the read failed
        return pa.table({"partial": batch.column(_ERROR)})
    try:
        summary: _Partial | RaymlopsError = summarise_block(batch, plan)
    except RaymlopsError as exc:
        summary = exc
    return pa.table({"partial": [pickle.dumps(summary, protocol=5)]})


# --------------------------------------------------------------------------- sources


@dataclass
class _Files:
    root: str
    filesystem: Any
    files: list[str]
    format: str
    dates: list[date | None]
    versions: list[int | None]


def default_prediction_log(model_name: str, home: str | Path | None = None) -> Path:
    """Where serving writes a model's prediction log by default: <home>/predictions/<model>."""
    return Path(model_log_root(log_root(None, home_dir(home)), model_name))


def _serving_log(config: PipelineConfig, home: Path) -> str:
    """The log serving writes for this model: `serve.prediction_log.uri`/<model>, else
    <home>/predictions/<model>."""
    return model_log_root(
        log_root(config.serve.prediction_log.uri, home), config.registry.model_name
    )


def _list_source(path: str) -> _Files:
    from raymlops.data.dataset import resolve_source

    source = resolve_source(path)
    if source.format == "sklearn":
        raise DataError(f"{path} is a bundled training dataset, not traffic to monitor")
    dates: list[date | None] = []
    versions: list[int | None] = []
    for file in source.files:
        day, version = parse_partition(file)
        dates.append(day)
        versions.append(version)
    return _Files(path, source.filesystem, source.files, source.format, dates, versions)


def _schema_names(files: _Files) -> list[str]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    first = files.files[0]
    try:
        if files.format == "parquet":
            return list(pq.read_schema(first, filesystem=files.filesystem).names)
        with files.filesystem.open_input_stream(first) as stream:
            reader = pacsv.open_csv(stream, parse_options=csv_parse_options(first))
            return list(reader.schema.names)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {first}: {str(exc).splitlines()[0]}") from None


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


# --------------------------------------------------------------------------- the pass


def _settings(cfg: MonitorConfig) -> DriftSettings:
    return DriftSettings(
        numeric_threshold=cfg.numeric_threshold,
        categorical_threshold=cfg.categorical_threshold,
        p_value=cfg.p_value,
        min_samples=cfg.min_samples,
        large_sample=cfg.large_sample,
        drift_share=cfg.drift_share,
    )


@contextmanager
def _quiet_data_context(show_progress: bool) -> Iterator[None]:
    """Ray Data's progress bars only on an interactive terminal, and none of its INFO logs
    (execution plans, log-style progress) — restored afterwards."""
    import logging
    import sys

    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    logger = logging.getLogger("ray.data")
    level = logger.level
    ctx.enable_progress_bars = show_progress and sys.stderr.isatty()
    ctx.print_on_execution_start = False
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        logger.setLevel(level)


@dataclass(frozen=True)
class _Unit:
    """A piece of the input one read task reads: a file, or some row groups of one."""

    file: str
    columns: tuple[str, ...]
    size: int
    row_groups: tuple[int, ...] | None = None


def _read_unit(unit: _Unit, filesystem: Any, fmt: str) -> pa.Table:
    """One unit of the input, only the columns the monitor needs (those it has)."""
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            # Strings stay dictionary-encoded (read_dictionary applies to string columns
            # only): categories, classes and roles are never materialised, and counting them
            # is counting indices. One open when the file has every column asked for; else
            # its footer says which it has.
            wanted = [c for c in unit.columns if c not in _PLAIN_STRINGS]
            try:
                parquet = pq.ParquetFile(unit.file, filesystem=filesystem, read_dictionary=wanted)
            except KeyError:
                footer = pq.ParquetFile(unit.file, filesystem=filesystem)
                names = set(footer.schema_arrow.names)
                parquet = pq.ParquetFile(
                    unit.file,
                    filesystem=filesystem,
                    read_dictionary=[c for c in wanted if c in names],
                    metadata=footer.metadata,
                )
            present = set(parquet.schema_arrow.names)
            columns = [c for c in unit.columns if c in present]
            if unit.row_groups is not None:
                return parquet.read_row_groups(unit.row_groups, columns, use_threads=False)
            return parquet.read(columns=columns, use_threads=False)
        table = read_file(filesystem, unit.file, fmt)
        return table.select([c for c in unit.columns if c in table.column_names])
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {unit.file}: {str(exc).splitlines()[0]}") from None


def _units(source: _Files, columns: dict[str, list[str]], wanted: int) -> list[_Unit]:
    """Files as read units; when there are fewer files than `wanted` tasks, Parquet files
    with several row groups are cut into row-group ranges so that every core has work."""
    import pyarrow.parquet as pq

    infos = source.filesystem.get_file_info(source.files)
    widest = max(len(c) for c in columns.values())
    # Work ≈ bytes read: a file read for its KPIs only counts its share of the columns.
    units = [
        _Unit(f, tuple(columns[f]), max(int((info.size or 0) * len(columns[f]) / widest), 1))
        for f, info in zip(source.files, infos, strict=True)
    ]
    if source.format != "parquet" or len(units) >= wanted:
        return units
    out: list[_Unit] = []
    pieces = max(1, -(-wanted // len(units)))
    for unit in units:
        try:
            meta = pq.ParquetFile(unit.file, filesystem=source.filesystem).metadata
        except (pa.ArrowException, OSError):
            out.append(unit)  # its reader will report the problem
            continue
        groups = meta.num_row_groups
        if groups < 2:
            out.append(unit)
            continue
        for part in np.array_split(np.arange(groups), min(pieces, groups)):
            size = sum(meta.row_group(int(g)).total_byte_size for g in part)
            out.append(_Unit(unit.file, unit.columns, max(size, 1), tuple(int(g) for g in part)))
    return out


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Files of one block; a column some files lack (another version's features, an error
    column) is null in their rows."""
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        raise DataError(f"log files with incompatible columns: {exc}") from None


def _log_datasource(units: list[_Unit], filesystem: Any, fmt: str) -> Any:
    """A Ray Data datasource over the log: one read task per group of units (files, or row
    groups of a large file; balanced by size), each yielding one block per unit with only
    the needed columns.

    Ray Data's own `read_parquet` was measured instead: on this Ray it plans the read with a
    separate file-listing task (about 1.8 s for 20 local files) and packed a 1M-row log into
    a single read task, so nothing ran in parallel.
    """
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    sizes = [u.size for u in units]

    class _PredictionLogDatasource(Datasource):  # type: ignore[misc]
        def estimate_inmemory_data_size(self) -> int:
            return int(sum(sizes) * 2)

        def get_name(self) -> str:
            return "PredictionLog"

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[Any]:
            groups: list[list[int]] = [[] for _ in range(max(1, min(parallelism, len(units))))]
            loads = [0] * len(groups)
            for i in sorted(range(len(units)), key=lambda i: -sizes[i]):
                target = loads.index(min(loads))
                groups[target].append(i)
                loads[target] += sizes[i]
            tasks = []
            for group in groups:
                chunk = [units[i] for i in sorted(group)]

                def read(chunk: list[_Unit] = chunk) -> Iterator[pa.Table]:
                    # Small files (serving flushes every second) are gathered into blocks
                    # of at least _BLOCK_ROWS rows: each block costs one summary.
                    pending: list[pa.Table] = []
                    rows = 0
                    try:
                        for unit in chunk:
                            table = _read_unit(unit, filesystem, fmt)
                            pending.append(table)
                            rows += table.num_rows
                            if rows >= _BLOCK_ROWS:
                                yield _concat(pending)
                                pending, rows = [], 0
                        if pending:
                            yield _concat(pending)
                    except RaymlopsError as exc:  # reported by the driver, as itself
                        yield pa.table({_ERROR: [pickle.dumps(exc, protocol=5)]})

                meta = BlockMetadata(
                    num_rows=None,
                    size_bytes=sum(sizes[i] for i in group) * 2,
                    input_files=sorted({units[i].file for i in group}),
                    exec_stats=None,
                )
                tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
            return tasks

    return _PredictionLogDatasource()


def run_pass(
    source: _Files,
    plan: _Plan,
    drift_files: list[bool] | None = None,
    tasks: int | None = None,
    show_progress: bool = False,
) -> _Partial:
    """The Ray Data pass: read (column-pruned), summarise every block in parallel, merge.

    Files of other versions (the log's `version=N` partitions, `drift_files` False) are read
    without the feature columns: they only feed the KPIs. By default twice as many read tasks
    as the cluster has CPUs (a slow file does not leave a core idle), each reading a
    size-balanced group of files, or of row groups when the files are few and large.
    """
    import ray
    import ray.data

    if not source.files:
        return _Partial()
    cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    mask = drift_files or [True] * len(source.files)
    with_features, meta_only = plan.columns(True), plan.columns(False)
    columns = {
        f: with_features if m else meta_only for f, m in zip(source.files, mask, strict=True)
    }
    units = _units(source, columns, tasks or 2 * cpus)
    n_tasks = min(len(units), tasks or 2 * cpus)
    task_cpus = _task_cpus(show_progress)
    ds = ray.data.read_datasource(
        _log_datasource(units, source.filesystem, source.format),
        override_num_blocks=n_tasks,
        num_cpus=task_cpus,
    ).map_batches(
        _summarise_batch,
        batch_format="pyarrow",
        batch_size=None,
        zero_copy_batch=True,
        fn_kwargs={"plan": plan},
        num_cpus=task_cpus,
    )
    merged = _Partial()
    with _quiet_data_context(show_progress):
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for blob in batch.column("partial").to_pylist():
                summary = pickle.loads(blob)
                if isinstance(summary, RaymlopsError):
                    raise summary
                merged.merge(summary)
    return merged


def _task_cpus(echo: bool) -> float:
    """CPUs each Ray Data task reserves: one, unless the cluster has less than one free
    (Serve replicas beside us hold the rest); then none, so that monitoring shares the cores
    with mostly idle replicas instead of waiting for a CPU that is never released."""
    import ray

    free = float(ray.available_resources().get("CPU", 0.0))
    if free >= 1.0:
        return 1.0
    if echo:
        total = float(ray.cluster_resources().get("CPU", 0.0))
        say(
            f"▸ {free:g} of {total:g} CPUs free (the rest reserved, e.g. by Serve replicas): "
            "monitoring runs its tasks without a CPU reservation"
        )
    return 0.0


# --------------------------------------------------------------------------- monitor()


def _echo(enabled: bool, message: str) -> None:
    if enabled:
        say(message)


def _source_root(config: PipelineConfig, source: str, home: Path) -> str:
    """The folder or URI to read: the model's prediction log (which must exist), or the
    dataset `source` names."""
    if source != PREDICTION_LOG:
        return source
    root = config.monitor.prediction_log or _serving_log(config, home)
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
    settings = _settings(cfg)
    model_name = config.registry.model_name
    registry = Registry.from_config(config, home)
    since_at = parse_since(since if since is not None else cfg.since)
    window = parse_duration(cfg.window)
    window_us = int(window.total_seconds() * 1_000_000)
    root = _source_root(config, source or cfg.source, registry.home)
    ref = _load_reference(registry, model_name, version if version is not None else cfg.version)
    _echo(echo, f"▸ monitoring {model_name} v{ref.version}: {root} against its training profile")
    files = _list_source(root)
    names = set(_schema_names(files))
    missing = [c for c in [*ref.numeric, *ref.categorical] if c not in names]
    if missing:
        raise DataError(
            f"{root} lacks feature column(s) of {model_name} v{ref.version}: {', '.join(missing)}"
        )
    if since_at is not None and "timestamp" not in names:
        raise DataError(f"--since needs a 'timestamp' column, which {root} does not have")
    labels_path = labels if labels is not None else cfg.labels
    label_column = cfg.label_column or config.data.label
    task = ref.dataset.get("task", "classification")
    classes = ref.dataset.get("classes")
    proba_columns = [f"proba_{c}" for c in classes or []]
    if labels_path is not None and "prediction" not in names:
        raise DataError(f"--labels needs the log's 'prediction' column, which {root} lacks")
    if labels_path is not None and "request_id" not in names:
        raise DataError(f"--labels joins on 'request_id', which {root} does not have")
    include_pred = cfg.include_prediction and "prediction" in names and ref.prediction is not None
    pred_ref = ref.prediction if include_pred else None
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
        )
        mask = [v is None or v == ref.version for v in files.versions]
        t0 = time.monotonic()
        _echo(echo, f"  reading {len(files.files)} file(s) with Ray Data")
        partial = run_pass(files, plan, mask, show_progress=echo) if files.files else _Partial()
        timings["scan"] = time.monotonic() - t0
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
    )
    result.timings = timings
    if write_files:
        t0 = time.monotonic()
        _write_outputs(result, report if report is not None else cfg.report, registry.home)
        timings["report"] = time.monotonic() - t0
    if log_to_mlflow if log_to_mlflow is not None else cfg.log_to_mlflow:
        t0 = time.monotonic()
        result.run_id = _log_to_mlflow(registry, config, result)
        timings["mlflow"] = time.monotonic() - t0
    timings["total"] = time.monotonic() - started
    if write_files and result.json_path is not None:  # final timings and run id
        result.json_path.write_text(json.dumps(result.to_dict(), indent=2))
    return result


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
    verdict = dataset_drift(features, settings)
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


# --------------------------------------------------------------------------- outputs


def _write_outputs(result: MonitorResult, report: str | Path | None, home: Path) -> None:
    from raymlops.monitor.report import render_html

    if report is None:
        stamp = result.generated_at.strftime("%Y%m%d-%H%M%S")
        report = home / "reports" / result.model_name / f"monitor-v{result.version}-{stamp}.html"
    path = Path(report).expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create the report folder {path.parent}: {exc}") from None
    result.report_path = path
    result.json_path = path.with_suffix(".json")
    path.write_text(render_html(result), encoding="utf-8")
    result.json_path.write_text(json.dumps(result.to_dict(), indent=2))


def _log_to_mlflow(registry: Registry, config: PipelineConfig, result: MonitorResult) -> str:
    """One run in the registry's experiment: verdict and per-feature scores as metrics,
    KPIs per window as metric history, the JSON result and the HTML report as artifacts;
    the version gets tags pointing at its latest monitoring run."""
    run_name = f"monitor-{result.model_name}-v{result.version}-" + result.generated_at.strftime(
        "%Y%m%d-%H%M%S"
    )
    tags = {
        "raymlops.step": "monitor",
        "raymlops.model": result.model_name,
        "raymlops.model_version": str(result.version),
        "raymlops.monitor.verdict": result.verdict,
        "raymlops.monitor.source": result.source,
    }
    with registry.run(run_name, tags, experiment=config.registry.experiment) as run_id:
        metrics: list[tuple[str, float, int]] = [
            ("dataset_drift", float(result.drift_detected), 0),
            ("rows_read", float(result.rows_read), 0),
            ("rows_compared", float(result.rows_compared), 0),
            ("drifted_features", float(len(result.dataset.drifted_features)), 0),
        ]
        if result.dataset.share is not None:
            metrics.append(("drift_share", result.dataset.share, 0))
        for f in result.features:
            for key, value in (
                ("statistic", f.statistic),
                ("p_value", f.p_value),
                ("psi", f.psi),
                ("wasserstein", f.wasserstein),
                ("js_distance", f.js_distance),
            ):
                if value is not None and math.isfinite(value):
                    metrics.append((metric_key("drift", f.name, key), float(value), 0))
            if f.drifted is not None:
                metrics.append((metric_key("drift", f.name, "drifted"), float(f.drifted), 0))
        for k in result.kpis:
            tag = f"v{k.version}" if k.version is not None else "all"
            base = ("kpi", tag, k.role)
            metrics.append((metric_key(*base, "requests"), float(k.requests), 0))
            if k.error_rate is not None:
                metrics.append((metric_key(*base, "error_rate"), k.error_rate, 0))
            if k.latency_p95_ms is not None:
                metrics.append((metric_key(*base, "latency_p95_ms"), k.latency_p95_ms, 0))
            if k.latency_p50_ms is not None:
                metrics.append((metric_key(*base, "latency_p50_ms"), k.latency_p50_ms, 0))
        for p in result.performance:
            for key, value in p.metrics.items():
                if math.isfinite(value):
                    metrics.append((metric_key("performance", f"v{p.version}", key), value, 0))
        params = {
            "since": _iso(result.since) or "",
            "source": result.source,
            "window": result.window,
            "numeric_threshold": str(result.settings.numeric_threshold),
            "categorical_threshold": str(result.settings.categorical_threshold),
            "p_value": str(result.settings.p_value),
            "min_samples": str(result.settings.min_samples),
            "large_sample": str(result.settings.large_sample),
            "drift_share": str(result.settings.drift_share),
        }
        registry.log(run_id, metrics=metrics, params=params)
        _log_window_history(registry, run_id, result)
        if result.report_path is not None:
            registry.log_file(run_id, result.report_path, "monitor")
        if result.json_path is not None:
            result.run_id = run_id
            result.json_path.write_text(json.dumps(result.to_dict(), indent=2))
            registry.log_file(run_id, result.json_path, "monitor")
        latest: tuple[tuple[str, str], ...] = (
            ("raymlops.monitor.last_run_id", run_id),
            ("raymlops.monitor.last_verdict", result.verdict),
            ("raymlops.monitor.last_time", _iso(result.generated_at) or ""),
        )
        for key, tag in latest:
            registry.set_version_tag(result.model_name, result.version, key, tag)
    return run_id


def _log_window_history(registry: Registry, run_id: str, result: MonitorResult) -> None:
    """KPIs and labelled metrics per window as MLflow metric history (timestamp = window)."""
    history: list[tuple[str, float, int]] = []
    times: list[int] = []
    for i, k in enumerate(sorted(result.kpi_windows, key=lambda r: r.window_start or _EPOCH)):
        when = int((k.window_start or _EPOCH).timestamp() * 1000)
        tag = f"v{k.version}" if k.version is not None else "all"
        history.append((metric_key("window", tag, k.role, "requests"), k.requests, i))
        times.append(when)
        if k.latency_p95_ms is not None:
            history.append(
                (metric_key("window", tag, k.role, "latency_p95_ms"), k.latency_p95_ms, i)
            )
            times.append(when)
    for i, p in enumerate(result.performance_windows):
        when = int((p.window_start or _EPOCH).timestamp() * 1000)
        for key, value in p.metrics.items():
            if math.isfinite(value):
                history.append((metric_key("window", f"v{p.version}", key), value, i))
                times.append(when)
    registry.log(run_id, metrics=history, timestamps=times)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
