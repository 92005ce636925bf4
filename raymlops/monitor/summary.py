"""The per-block summaries of a monitoring pass: each block of rows (a file or some row
groups) reduced to small mergeable counts — feature bins, categories, per-(window, version,
role) requests, errors and latency histograms, labelled rows — that the driver adds up."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.core.errors import DataError, RaymlopsError
from raymlops.monitor.drift import (
    CategoricalSketch,
    NumericSketch,
)

if TYPE_CHECKING:
    pass


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
    #: Rows of the monitored features to sample (0: none): a source without predictions
    #: has the version's Predictor run over this sample on the driver.
    row_sample: int = 0

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
            if self.row_sample > 0:
                cols.append(POSITION)  # made by the reader, not read: see position_keys
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
    #: A uniform sample of the compared rows' features (`_Plan.row_sample` rows at most).
    sample: pa.Table | None = None
    sample_cap: int = 0

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
        if other.sample is not None:
            both = [t for t in (self.sample, other.sample) if t is not None]
            self.sample_cap = max(self.sample_cap, other.sample_cap)
            self.sample = _bottom_k(
                pa.concat_tables(both, promote_options="permissive"), self.sample_cap
            )
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


def summarise_block(table: pa.Table, plan: _Plan) -> _Partial:
    """Reduce one block of the log to its mergeable summary (the per-task work): the rows
    since `plan.since_us`, their KPI cells, then the drift sketches and labelled rows of
    those the monitored version served. Each part is a helper of its own; every one works
    on whole columns (Arrow compute or numpy), so a block costs a few calls, not a loop."""
    out = _Partial()
    names = set(table.column_names)
    out.seen = names & set(_META)
    table, ts = _since(table, names, plan)
    n = table.num_rows
    out.rows_read = n
    if n == 0:
        return out
    if ts is not None:
        ts, out.ts_min, out.ts_max = _block_times(ts)
    versions = _versions(table, names, plan)
    out.kpi, out.errors = _kpi_cells(table, names, ts, versions, plan)
    # Drift: only the rows the monitored version served.
    rows, ts = _served_rows(table, names, versions, ts, plan)
    out.rows_compared = rows.num_rows
    if rows.num_rows == 0:  # another version's rows: KPIs only
        return out
    out.numeric = _numeric_sketches(rows, names, plan)
    out.categorical = _categorical_sketches(rows, names, plan)
    out.prediction = _prediction_sketch(rows, names, plan)
    if plan.row_sample > 0:
        out.sample, out.sample_cap = _row_sample(rows, names, plan), plan.row_sample
    if plan.labels is not None and "request_id" in names:
        out.labelled_parts = [_join_labels(rows, ts, plan)]
    return out


def _since(table: pa.Table, names: set[str], plan: _Plan) -> tuple[pa.Table, np.ndarray | None]:
    """The block's rows at or after `plan.since_us`, with their timestamps in µs (None when
    the block has no `timestamp` column, which keeps every row). The timestamps are read
    even without a `since`: the KPI windows need them."""
    ts = _timestamps_us(table.column("timestamp")) if "timestamp" in names else None
    if ts is not None and plan.since_us is not None:
        keep = ts >= plan.since_us
        if not keep.all():
            table = table.filter(pa.array(keep))
            ts = ts[keep]
    return table, ts


def _block_times(ts: np.ndarray) -> tuple[np.ndarray, int | None, int | None]:
    """The timestamps with the missing ones filled in, and the earliest and latest known
    one (None, None when no row has a time)."""
    known = ts[ts != _NO_TIME]
    if len(known) < len(ts):  # rows without a time count in the earliest window
        ts = np.where(ts == _NO_TIME, known.min() if len(known) else 0, ts)
    if len(known):
        return ts, int(known.min()), int(known.max())
    return ts, None, None


def _versions(table: pa.Table, names: set[str], plan: _Plan) -> np.ndarray:
    """The model version of each row as int64: -1 where the log leaves it missing; a block
    without a `model_version` column counts as the plan's version (-1 without one)."""
    if "model_version" in names:
        return np.asarray(
            pc.fill_null(table.column("model_version").cast(pa.int64()), -1).to_numpy(),
            dtype=np.int64,
        )
    return np.full(table.num_rows, -1 if plan.version is None else plan.version, np.int64)


def _kpi_cells(
    table: pa.Table,
    names: set[str],
    ts: np.ndarray | None,
    versions: np.ndarray,
    plan: _Plan,
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """KPIs: requests, errors and latency per (window, version, role), for every row of the
    block whichever version served it. Returns the request cells (one per latency bin) and
    the error cells (empty when the log has no `error` column), each as a one-block list
    for `_Partial`."""
    n = table.num_rows
    window = ts // plan.window_us if ts is not None else np.zeros(n, np.int64)
    if "role" in names:
        role = _codes(table.column("role"), ROLES)
    else:
        role = np.full(n, len(ROLES), np.int64)  # "other": a dataset, not a serving log
    if "latency_ms" in names:
        lat_bin = _latency_bins(_floats(table.column("latency_ms")))
    else:
        lat_bin = np.zeros(n, np.int64)
    kpi = [_cells(window, versions, role, lat_bin, _LAT_BINS)]
    errors: list[dict[str, np.ndarray]] = []
    if "error" in names:
        flags = _is_error(table.column("error"))
        zeros = np.zeros(n, np.int64)
        errors = [_cells(window, versions, role, zeros, 1, flags.astype(float))]
    return kpi, errors


def _served_rows(
    table: pa.Table,
    names: set[str],
    versions: np.ndarray,
    ts: np.ndarray | None,
    plan: _Plan,
) -> tuple[pa.Table, np.ndarray | None]:
    """The rows the monitored version served (all of them when the plan names no version
    or the log has no `model_version`), with their timestamps."""
    if plan.version is not None and "model_version" in names:
        mine = versions == plan.version
        if not mine.all():
            table = table.filter(pa.array(mine))
            ts = ts[mine] if ts is not None else None
    return table, ts


def _numeric_sketches(rows: pa.Table, names: set[str], plan: _Plan) -> dict[str, NumericSketch]:
    """One sketch, on the training profile's bins, per numeric feature the block has."""
    sketches: dict[str, NumericSketch] = {}
    for name, edges in plan.numeric.items():
        if name not in names:  # a file of another version, read for its KPIs only
            continue
        sketch = NumericSketch(edges, sample_cap=plan.sample_cap)
        try:
            sketch.update(_floats(rows.column(name)))
        except DataError:
            raise DataError(f"feature column '{name}' is not numeric") from None
        sketches[name] = sketch
    return sketches


def _categorical_sketches(
    rows: pa.Table, names: set[str], plan: _Plan
) -> dict[str, CategoricalSketch]:
    """One category count per categorical feature the block has."""
    sketches: dict[str, CategoricalSketch] = {}
    for name in plan.categorical:
        if name not in names:
            continue
        cat = CategoricalSketch()
        cat.update(rows.column(name))
        sketches[name] = cat
    return sketches


def _prediction_sketch(
    rows: pa.Table, names: set[str], plan: _Plan
) -> NumericSketch | CategoricalSketch | None:
    """The predictions' sketch: binned for a numeric prediction (regression), counted for
    a class; None when the block has no `prediction` or the plan compares none."""
    if "prediction" not in names:
        return None
    if plan.prediction_edges is not None:
        pred = NumericSketch(plan.prediction_edges, sample_cap=plan.sample_cap)
        pred.update(_floats(rows.column("prediction")))
        return pred
    if plan.prediction_categorical:
        pred_cat = CategoricalSketch()
        pred_cat.update(rows.column("prediction"))
        return pred_cat
    return None


#: The column of a row sample holding each row's sampling key.
_KEY = "__sample_key__"
#: The column the reader adds to a block when the plan samples rows: each row's sampling
#: key, from its file and its row number in that file (`position_keys`).
POSITION = "__row_position__"


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: consecutive integers to well-spread 64-bit keys."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def position_keys(file: str, rows: np.ndarray) -> np.ndarray:
    """Sampling keys of the rows numbered `rows` (0-based, in the whole file) of `file`: a
    pseudo-random function of the row's place, not of its values, so that identical rows
    are sampled independently (a key hashed from the values gives every copy of a row the
    same key: all taken or all left out), and the same whichever read unit, block or run
    reads the row."""
    import hashlib

    seed = int.from_bytes(hashlib.blake2b(file.encode(), digest_size=8).digest(), "little")
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        return _mix64(np.uint64(seed) + rows.astype(np.uint64) * golden)


def _row_sample(rows: pa.Table, names: set[str], plan: _Plan) -> pa.Table:
    """The block's rows (feature columns, dictionaries decoded) with the smallest keys, a
    key being a pseudo-random function of the row's place in its file (the reader's
    `POSITION` column): merging blocks and keeping the smallest keys again gives the same
    uniform sample however the rows were split into blocks. A block without positions (not
    from the reader) keys its rows by their place in the block."""
    columns = [c for c in [*plan.numeric, *plan.categorical] if c in names]
    table = rows.select(columns)
    for i, column in enumerate(table.columns):
        if pa.types.is_dictionary(column.type):
            table = table.set_column(i, columns[i], column.cast(column.type.value_type))
    if POSITION in names and rows.column(POSITION).null_count == 0:
        keys = np.asarray(rows.column(POSITION).to_numpy(), dtype=np.uint64)
    else:
        keys = position_keys("", np.arange(rows.num_rows))
    return _bottom_k(table.append_column(_KEY, pa.array(keys)), plan.row_sample)


def _bottom_k(table: pa.Table, k: int) -> pa.Table:
    """The `k` rows with the smallest sampling keys (all of them when there are fewer)."""
    if table.num_rows <= k:
        return table
    keys = table.column(_KEY).to_numpy()
    return table.take(pa.array(np.sort(np.argpartition(keys, k - 1)[:k])))


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
    # A block of several log files holds string columns as dictionaries that differ per
    # file, which Arrow's join cannot unify: join on plain values.
    for i, column in enumerate(subset.columns):
        if pa.types.is_dictionary(column.type):
            name = subset.column_names[i]
            subset = subset.set_column(i, name, column.cast(column.type.value_type))
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
