"""Reading tabular data, checking it, splitting it, and describing it as a DatasetVersion.

A DatasetVersion is what the registry records about the data a model was trained on: a
SHA-256 digest of the content, the schema, the row count and a training profile that
monitoring later compares production traffic against.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymlops.core.config import DataConfig, FeaturesConfig
from raymlops.core.errors import DataError
from raymlops.core.storage import open_location, reaching

__all__ = [
    "MAX_CLASSES",
    "ColumnRoles",
    "DatasetSplits",
    "DatasetVersion",
    "Source",
    "check_source",
    "common_prefix",
    "csv_parse_options",
    "describe_path",
    "hash_file",
    "infer_roles",
    "iter_tables",
    "load_dataset",
    "load_table",
    "load_with_digest",
    "profile_table",
    "read_file",
    "resolve_source",
    "sample_table",
    "scan_files",
    "split_table",
    "synth_dataset",
]

Task = Literal["classification", "regression"]

_SKLEARN_DATASETS = ("breast_cancer", "diabetes", "iris", "wine", "digits")
#: Most distinct values an integer label may take to be read as classes (more: regression).
MAX_CLASSES = 50
_PROFILE_QUANTILES = 20
#: Equal-mass bins of the numeric "sketch": the fine reference CDF that drift statistics
#: (Wasserstein distance, KS test, PSI) compare production data against.
_PROFILE_SKETCH_BINS = 100
_PROFILE_TOP_CATEGORIES = 100


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Source:
    """Resolved input: the files to read (empty for bundled datasets) and their format."""

    uri: str
    filesystem: pafs.FileSystem | None
    files: list[str]
    format: Literal["parquet", "csv", "sklearn"]


def _format_of(path: str, configured: str) -> Literal["parquet", "csv"] | None:
    if configured in ("parquet", "csv"):
        return configured  # type: ignore[return-value]
    lower = path.lower()
    if lower.endswith((".parquet", ".pq", ".parq")):
        return "parquet"
    if lower.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    return None


def resolve_source(path: str, fmt: str = "auto") -> Source:
    if path.startswith("sklearn:"):
        name = path.split(":", 1)[1]
        if name not in _SKLEARN_DATASETS:
            raise DataError(
                f"unknown bundled dataset '{path}' (available: "
                + ", ".join(f"sklearn:{n}" for n in _SKLEARN_DATASETS)
                + ")"
            )
        return Source(path, None, [], "sklearn")
    try:
        if "://" in path:
            fs, root = pafs.FileSystem.from_uri(path)
        else:
            fs, root = pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
        info = fs.get_file_info(root)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"cannot open {path}: {exc}") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data not found: {path}")
    if info.type == pafs.FileType.File:
        candidates = [root]
    else:
        selector = pafs.FileSelector(root, recursive=True)
        candidates = sorted(
            f.path
            for f in fs.get_file_info(selector)
            if f.type == pafs.FileType.File and not Path(f.path).name.startswith(("_", "."))
        )
    formats = {f: _format_of(f, fmt) for f in candidates}
    files = [f for f in candidates if formats[f] is not None]
    if not files:
        raise DataError(
            f"no Parquet or CSV files in {path}"
            + (" (set data.format for files without an extension)" if candidates else "")
        )
    kinds = {formats[f] for f in files}
    if len(kinds) > 1:
        raise DataError(f"{path} mixes Parquet and CSV files; point at one kind")
    return Source(path, fs, files, kinds.pop())  # type: ignore[arg-type]


def csv_parse_options(file: str) -> pacsv.ParseOptions:
    """How a delimited text file is split: tabs for `.tsv`, commas otherwise."""
    return pacsv.ParseOptions(delimiter="\t" if file.lower().endswith(".tsv") else ",")


def read_file(fs: pafs.FileSystem, file: str, fmt: str) -> pa.Table:
    """One Parquet or CSV/TSV file as a table; a file that cannot be read is named in the
    DataError. Every reader of user data in raymlops reads files through this module."""
    try:
        if fmt == "parquet":
            return pq.read_table(file, filesystem=fs)
        with fs.open_input_stream(file) as stream:
            return pacsv.read_csv(stream, parse_options=csv_parse_options(file))
    except (pa.ArrowException, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {file}: {message}") from None


def _load_sklearn(name: str) -> pa.Table:
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}")
    bunch = loader(as_frame=True)
    frame: pd.DataFrame = bunch.frame.copy()
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    if "target" in frame.columns and hasattr(bunch, "target_names") and name != "diabetes":
        names = list(bunch.target_names)
        frame["target"] = [str(names[int(i)]) for i in frame["target"]]
    return pa.Table.from_pandas(frame, preserve_index=False)


def load_table(path: str, fmt: str = "auto") -> pa.Table:
    """Read a Parquet/CSV file, folder or URI (or a bundled dataset) into one Arrow table."""
    table, _ = load_with_digest(path, fmt)
    return table


_STREAM_BATCH_ROWS = 65_536


def scan_files(
    files: list[str], fmt: str, filesystem: pafs.FileSystem, batch_rows: int = _STREAM_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Record batches of every Parquet/CSV file in order, one at a time: memory is bounded by
    a batch, not by the data. A file that cannot be read is named in the DataError."""
    for file in files:
        try:
            if fmt == "parquet":
                with pq.ParquetFile(file, filesystem=filesystem, pre_buffer=False) as reader:
                    yield from reader.iter_batches(batch_size=batch_rows, use_threads=False)
            else:
                with filesystem.open_input_stream(file) as stream:
                    yield from pacsv.open_csv(stream, parse_options=csv_parse_options(file))
        except (pa.ArrowException, OSError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"cannot read {file}: {message}") from None


def iter_tables(path: str, fmt: str = "auto", *, per_file: int | None = None) -> Iterator[pa.Table]:
    """The rows of a Parquet/CSV file, folder or URI (or a bundled dataset) as a stream of
    Arrow tables, every one cast to the first one's schema: for data that may not fit in
    memory. `per_file` stops reading each file after that many rows (a spread sample)."""
    source = resolve_source(path, fmt)
    if source.format == "sklearn":  # bundled datasets are small
        table = _load_sklearn(source.uri.split(":", 1)[1])
        yield table if per_file is None else table.slice(0, per_file)
        return
    assert source.filesystem is not None
    schema: pa.Schema | None = None
    for file in source.files:
        left = per_file
        batch_rows = min(per_file or _STREAM_BATCH_ROWS, _STREAM_BATCH_ROWS)
        for batch in scan_files([file], source.format, source.filesystem, batch_rows):
            table = pa.Table.from_batches([batch])
            if left is not None:
                table = table.slice(0, left)
                left -= table.num_rows
            if schema is None:
                schema = table.schema
            elif table.schema != schema:
                try:
                    table = table.select(schema.names).cast(schema)
                except (pa.ArrowException, ValueError, KeyError) as exc:
                    raise DataError(
                        f"files under {path} have incompatible schemas: {exc}"
                    ) from None
            yield table
            if left is not None and left <= 0:
                break


def sample_table(path: str, fmt: str = "auto", rows: int = 20_000) -> pa.Table:
    """At most `rows` rows of the data, taken from the start of every file in turn (each file
    contributes its share): a bounded stand-in for the whole table where a few thousand
    representative rows are enough, read without loading the data whole."""
    source = resolve_source(path, fmt)
    share = max(1, math.ceil(rows / max(1, len(source.files))))
    tables = list(iter_tables(path, fmt, per_file=share))
    if not tables:
        raise DataError(f"{path} has no rows")
    return pa.concat_tables(tables).slice(0, rows).combine_chunks()


def check_source(data: DataConfig, features: FeaturesConfig) -> ColumnRoles:
    """The checks a streaming run can make before any compute starts: the data resolves,
    its first rows read, and their columns have the roles the config asks for (one line on
    failure). The full pass comes later, in training."""
    for table in iter_tables(data.path, data.format):
        if table.num_rows:
            return infer_roles(table, data, features, source=data.path)
    raise DataError(f"{data.path} has no rows")


def load_with_digest(path: str, fmt: str) -> tuple[pa.Table, str]:
    source = resolve_source(path, fmt)
    if source.format == "sklearn":
        table = _load_sklearn(source.uri.split(":", 1)[1])
        return table, _table_digest(table)
    assert source.filesystem is not None
    digest = hashlib.sha256()
    tables = []
    prefix = common_prefix(source.files)
    for file in source.files:
        hash_file(digest, source.filesystem, file, prefix)
        tables.append(read_file(source.filesystem, file, source.format))
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        raise DataError(f"files under {path} have incompatible schemas: {exc}") from None
    return table, digest.hexdigest()


def hash_file(digest: Any, filesystem: pafs.FileSystem, file: str, prefix: str) -> None:
    """Add one file to a dataset digest: its path below the common prefix, then its bytes
    (read in 4 MiB chunks), so a renamed or edited file changes the digest."""
    digest.update(file[len(prefix) :].encode() + b"\0")
    try:
        with filesystem.open_input_stream(file) as stream:
            for chunk in iter(lambda: stream.read(1 << 22), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc}") from None


def common_prefix(files: list[str]) -> str:
    if len(files) == 1:
        return str(Path(files[0]).parent) + "/"
    prefix = str(Path(files[0]).parent)
    while not all(f.startswith(prefix + "/") for f in files):
        prefix = str(Path(prefix).parent)
    return prefix + "/"


def _table_digest(table: pa.Table) -> str:
    digest = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- roles and checks


@dataclass(frozen=True)
class ColumnRoles:
    """Which column plays which part: label, ids, numeric and categorical features."""

    label: str
    task: Task
    numeric: list[str]
    categorical: list[str]
    ids: list[str]
    classes: list[str] | None = None

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def _is_numeric_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


def _is_string_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t))


def _non_numeric_example(column: pa.ChunkedArray) -> tuple[str, int] | None:
    """First value of a string column that is not a number, with its row index."""
    values = column.to_pandas()
    parsed = pd.to_numeric(values, errors="coerce")
    bad = parsed.isna() & values.notna() & (values.astype("string").str.strip() != "")
    if not bad.any():
        return None
    row = int(np.flatnonzero(bad.to_numpy())[0])
    return str(values.iloc[row]), row


def _looks_numeric(column: pa.ChunkedArray) -> bool:
    values = column.drop_null().to_pandas()
    if len(values) == 0:
        return False
    parsed = pd.to_numeric(values, errors="coerce")
    return bool(parsed.notna().mean() >= 0.9)


def infer_roles(
    table: pa.Table, data: DataConfig, features: FeaturesConfig, *, source: str = ""
) -> ColumnRoles:
    """Decide the task and each column's role; reject data that cannot be trained on.

    The checks run in the order of the helpers below and stop at the first problem: the
    configured columns exist, then each feature column has a usable role, then the label
    gives a task (and its classes)."""
    where = f" in {source}" if source else ""
    names = table.column_names
    explicit_num = set(features.numeric or [])
    explicit_cat = set(features.categorical or [])
    _check_named_columns(names, data, [*explicit_num, *explicit_cat], where)
    excluded = {data.label, *data.id_columns, *data.drop_columns}
    candidates = [c for c in names if c not in excluded]
    if features.numeric is not None and features.categorical is not None:
        # Both lists given: they are the whole feature set.
        candidates = [c for c in candidates if c in explicit_num or c in explicit_cat]
    numeric, categorical = _feature_roles(table, candidates, explicit_num, explicit_cat, where)
    label_col = table.column(data.label)
    task = _label_task(label_col, data, where)
    classes = _label_classes(label_col, task, data.label, where)
    return ColumnRoles(data.label, task, numeric, categorical, list(data.id_columns), classes)


def _check_named_columns(
    names: list[str], data: DataConfig, feature_columns: list[str], where: str
) -> None:
    """Every column the config names — the label, ids, drops, listed features — is in the
    table; a typo fails here with the column's name."""
    if data.label not in names:
        raise DataError(
            f"label column '{data.label}' not found{where} (columns: {', '.join(names[:20])}"
            + (", …" if len(names) > 20 else "")
            + ")"
        )
    for group, label in ((data.id_columns, "id"), (data.drop_columns, "drop")):
        for col in group:
            if col not in names:
                raise DataError(f"{label} column '{col}' not found{where}")
    for col in feature_columns:
        if col not in names:
            raise DataError(f"feature column '{col}' not found{where}")


def _feature_roles(
    table: pa.Table,
    candidates: list[str],
    explicit_num: set[str],
    explicit_cat: set[str],
    where: str,
) -> tuple[list[str], list[str]]:
    """The numeric and the categorical features among `candidates`, each in table order;
    at least one of them, or there is nothing to train on."""
    numeric: list[str] = []
    categorical: list[str] = []
    for col in candidates:
        role = _column_role(table, col, explicit_num, explicit_cat, where)
        if role == "numeric":
            numeric.append(col)
        elif role == "categorical":
            categorical.append(col)
    if not numeric and not categorical:
        raise DataError(f"no feature columns left{where} after label, ids and drops")
    return numeric, categorical


def _column_role(
    table: pa.Table, col: str, explicit_num: set[str], explicit_cat: set[str], where: str
) -> Literal["numeric", "categorical"] | None:
    """One column's role, by the first rule that applies: listed under features.categorical
    → categorical; listed under features.numeric or of a numeric type → numeric (its values
    checked); a string column → numeric if it reads as numbers, else categorical; all
    missing → None (left out); any other type is rejected."""
    t = table.schema.field(col).type
    if col in explicit_cat:
        return "categorical"
    if col in explicit_num or _is_numeric_type(t):
        _check_numeric_column(table, col, t, where)
        return "numeric"
    if _is_string_type(t):
        return _string_role(table, col, where)
    if pa.types.is_null(t):
        return None  # an all-missing column carries no information
    raise DataError(f"column '{col}'{where} has unsupported type {t}; add it to data.drop_columns")


def _check_numeric_column(table: pa.Table, col: str, t: pa.DataType, where: str) -> None:
    """A column to be read as numeric can be: a numeric type, or strings that all parse as
    numbers (the first that does not is named, with its row)."""
    if _is_string_type(t):
        bad = _non_numeric_example(table.column(col))
        if bad is not None:
            raise DataError(
                f"numeric column '{col}'{where} has a non-numeric value {bad[0]!r} (row {bad[1]})"
            )
    elif not _is_numeric_type(t):
        raise DataError(f"numeric column '{col}'{where} has type {t}")


def _string_role(table: pa.Table, col: str, where: str) -> Literal["numeric", "categorical"]:
    """A string column nobody listed: numeric when most of its values parse as numbers (a
    CSV column of numbers with a stray word), and then every value must; else categorical."""
    if not _looks_numeric(table.column(col)):
        return "categorical"
    bad = _non_numeric_example(table.column(col))
    if bad is not None:
        raise DataError(
            f"numeric column '{col}'{where} has a non-numeric value "
            f"{bad[0]!r} (row {bad[1]}); list it under features.categorical "
            "if it really is categorical"
        )
    return "numeric"


def _label_task(label_col: pa.ChunkedArray, data: DataConfig, where: str) -> Task:
    """The configured task, or with `task: auto` the one the label's type implies: strings
    and booleans are classes; integers are classes up to MAX_CLASSES distinct values;
    floats are classes only when all integral with few distinct values. An all-missing
    label or one of another type is rejected."""
    if label_col.null_count == len(label_col):
        raise DataError(f"label column '{data.label}'{where} is empty (all values missing)")
    label_type = label_col.type
    if data.task != "auto":
        return data.task
    if _is_string_type(label_type) or pa.types.is_boolean(label_type):
        return "classification"
    if pa.types.is_integer(label_type):
        distinct = pc.count_distinct(label_col).as_py()
        return "classification" if distinct <= MAX_CLASSES else "regression"
    if pa.types.is_floating(label_type):
        values = label_col.drop_null().to_numpy()
        integral = bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
        few = len(np.unique(values)) <= min(MAX_CLASSES, 10)
        return "classification" if integral and few else "regression"
    raise DataError(f"label column '{data.label}'{where} has unsupported type {label_type}")


def _label_classes(
    label_col: pa.ChunkedArray, task: Task, label: str, where: str
) -> list[str] | None:
    """A classification label's classes as sorted strings (at least two); None for
    regression, whose label must then be numbers (a string label all of whose values parse)."""
    if task == "classification":
        uniques = pc.unique(label_col.drop_null()).to_pylist()
        classes = sorted(str(v) for v in uniques)
        if len(classes) < 2:
            raise DataError(
                f"label column '{label}'{where} has a single class "
                f"({classes[0] if classes else 'none'}); classification needs at least two"
            )
        return classes
    if not _is_numeric_type(label_col.type):
        bad = _non_numeric_example(label_col)
        if bad is not None:
            raise DataError(
                f"regression label '{label}'{where} has a non-numeric value "
                f"{bad[0]!r} (row {bad[1]})"
            )
    return None


# --------------------------------------------------------------------------- profile


def _numeric_profile(values: np.ndarray) -> dict[str, Any]:
    total = len(values)
    finite = values[np.isfinite(values)]
    missing = int(total - len(finite))
    if len(finite) == 0:
        return {"kind": "numeric", "count": total, "missing": missing}
    qs = np.linspace(0, 1, _PROFILE_QUANTILES + 1)
    edges = np.unique(np.quantile(finite, qs))
    if len(edges) > 1:
        counts, _ = np.histogram(finite, bins=edges)
    else:
        counts = np.array([len(finite)])
    return {
        "kind": "numeric",
        "count": total,
        "missing": missing,
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "quantiles": {
            f"{q:.2f}": float(v) for q, v in zip(qs, np.quantile(finite, qs), strict=True)
        },
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        "sketch": _sketch(finite),
    }


def _sketch(finite: np.ndarray) -> dict[str, Any]:
    """Count and sum of the values in each of `_PROFILE_SKETCH_BINS` equal-mass bins (edges
    at unique quantiles; the last bin is closed), and the values that alone hold at least one
    bin's share of the rows (`atoms`: the levels of a discrete feature, the zero of a
    zero-inflated one): a bounded reference CDF exact enough for Wasserstein and KS against
    a sample, and mergeable, since production data binned on the same edges is just counts
    and sums (raymlops.monitor.drift)."""
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, _PROFILE_SKETCH_BINS + 1)))
    if len(edges) > 1:
        counts, _ = np.histogram(finite, bins=edges)
        sums, _ = np.histogram(finite, bins=edges, weights=finite)
    else:
        counts, sums = np.array([len(finite)]), np.array([finite.sum()])
    values, repeats = np.unique(finite, return_counts=True)
    heavy = repeats * _PROFILE_SKETCH_BINS >= len(finite)
    return {
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "sums": [float(v) for v in sums],
        "atoms": {
            "values": [float(v) for v in values[heavy]],
            "counts": [int(c) for c in repeats[heavy]],
        },
    }


def _categorical_profile(column: pa.ChunkedArray) -> dict[str, Any]:
    total = len(column)
    missing = int(column.null_count)
    counts = pc.value_counts(column.drop_null().cast(pa.string()))
    pairs = sorted(
        (
            (str(v), int(c))
            for v, c in zip(counts.field(0).to_pylist(), counts.field(1).to_pylist(), strict=True)
        ),
        key=lambda p: (-p[1], p[0]),
    )
    top = dict(pairs[:_PROFILE_TOP_CATEGORIES])
    other = sum(c for _, c in pairs[_PROFILE_TOP_CATEGORIES:])
    return {
        "kind": "categorical",
        "count": total,
        "missing": missing,
        "distinct": len(pairs),
        "frequencies": top,
        "other": other,
    }


def _as_float(column: pa.ChunkedArray) -> np.ndarray:
    if _is_string_type(column.type):
        values = pd.to_numeric(column.to_pandas(), errors="coerce")
    else:
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)


def profile_table(table: pa.Table, roles: ColumnRoles) -> dict[str, Any]:
    """Per-feature statistics of a table: quantile histograms for numerics, frequencies for
    categoricals, and the label's distribution. Monitoring compares traffic against this."""
    columns: dict[str, Any] = {}
    for col in roles.numeric:
        columns[col] = _numeric_profile(_as_float(table.column(col)))
    for col in roles.categorical:
        columns[col] = _categorical_profile(table.column(col))
    label = table.column(roles.label)
    label_profile = (
        _categorical_profile(label)
        if roles.task == "classification"
        else _numeric_profile(_as_float(label))
    )
    return {"num_rows": table.num_rows, "columns": columns, "label": label_profile}


# --------------------------------------------------------------------------- splits


@dataclass
class DatasetSplits:
    """Train/validation/test tables of one dataset version."""

    train: pa.Table
    validation: pa.Table
    test: pa.Table


def split_table(
    table: pa.Table, roles: ColumnRoles, validation: float, test: float, seed: int, stratify: bool
) -> DatasetSplits:
    """Deterministic seeded split; stratified by class for classification when possible."""
    n = table.num_rows
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    if roles.task == "classification" and stratify:
        labels = table.column(roles.label).cast(pa.string()).to_numpy(zero_copy_only=False)
        groups = [np.flatnonzero(labels == c) for c in sorted(set(labels.tolist()))]
    else:
        groups = [np.arange(n)]
    for idx in groups:
        idx = rng.permutation(idx)
        n_test = round(len(idx) * test)
        n_val = round(len(idx) * validation)
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    train_idx, val_idx, test_idx = (np.sort(np.concatenate(p)) for p in parts)
    if len(train_idx) == 0 or len(val_idx) == 0 or len(test_idx) == 0:
        raise DataError(
            f"{n} rows are too few to split into train/validation/test "
            f"({len(train_idx)}/{len(val_idx)}/{len(test_idx)})"
        )
    return DatasetSplits(table.take(train_idx), table.take(val_idx), table.take(test_idx))


# --------------------------------------------------------------------------- versions


@dataclass
class DatasetVersion:
    """What is recorded about the data behind a model: source, digest, schema, profile."""

    source: str
    digest: str
    num_rows: int
    schema: dict[str, str]
    task: Task
    label: str
    features: list[str]
    id_columns: list[str]
    classes: list[str] | None
    split: dict[str, int] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetVersion:
        return cls(**data)

    def summary(self) -> str:
        """A few lines for a terminal: digest, rows, schema and per-column statistics."""
        lines = [
            f"source:  {self.source}",
            f"digest:  sha256:{self.digest}",
            f"rows:    {self.num_rows}",
            f"task:    {self.task} (label '{self.label}'"
            + (f", classes {', '.join(self.classes)})" if self.classes else ")"),
        ]
        if self.split:
            lines.append("split:   " + ", ".join(f"{k} {v}" for k, v in self.split.items()))
        lines.append("columns:")
        cols = self.profile.get("columns", {})
        for name, dtype in self.schema.items():
            stats = cols.get(name)
            role = (
                "label"
                if name == self.label
                else "id"
                if name in self.id_columns
                else "feature"
                if name in self.features
                else "ignored"
            )
            detail = ""
            if stats and stats["kind"] == "numeric" and "mean" in stats:
                detail = (
                    f"mean {stats['mean']:.4g}  std {stats['std']:.4g}  "
                    f"min {stats['min']:.4g}  max {stats['max']:.4g}"
                )
            elif stats and stats["kind"] == "categorical":
                top = list(stats["frequencies"].items())[:3]
                detail = f"{stats['distinct']} distinct, top " + ", ".join(
                    f"{k} ({v})" for k, v in top
                )
            missing = f"  missing {stats['missing']}" if stats and stats["missing"] else ""
            lines.append(f"  {name:<28} {dtype:<10} {role:<8} {detail}{missing}")
        return "\n".join(lines)


def load_dataset(
    data: DataConfig, features: FeaturesConfig
) -> tuple[DatasetVersion, DatasetSplits, ColumnRoles]:
    """Load, check, split and profile the configured data (profile from the training split)."""
    table, digest = load_with_digest(data.path, data.format)
    if table.num_rows == 0:
        raise DataError(f"{data.path} has no rows")
    roles = infer_roles(table, data, features, source=data.path)
    null_labels = table.column(roles.label).null_count
    if null_labels:
        table = table.filter(pc.is_valid(table.column(roles.label)))
    splits = split_table(
        table,
        roles,
        data.split.validation,
        data.split.test,
        data.split.seed,
        data.split.stratify,
    )
    version = DatasetVersion(
        source=data.path,
        digest=digest,
        num_rows=table.num_rows,
        schema={f.name: str(f.type) for f in table.schema},
        task=roles.task,
        label=roles.label,
        features=roles.features,
        id_columns=roles.ids,
        classes=roles.classes,
        split={
            "train": splits.train.num_rows,
            "validation": splits.validation.num_rows,
            "test": splits.test.num_rows,
            "dropped_missing_label": int(null_labels),
        },
        profile=profile_table(splits.train, roles),
    )
    return version, splits, roles


def describe_path(path: str, label: str | None = None, fmt: str = "auto") -> DatasetVersion:
    """Digest, schema, row count and profile of any dataset (all rows, no split)."""
    table, digest = load_with_digest(path, fmt)
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows")
    label_name = label if label is not None else table.column_names[-1]
    roles = infer_roles(
        table, DataConfig(path=path, label=label_name), FeaturesConfig(), source=path
    )
    return DatasetVersion(
        source=path,
        digest=digest,
        num_rows=table.num_rows,
        schema={f.name: str(f.type) for f in table.schema},
        task=roles.task,
        label=roles.label,
        features=roles.features,
        id_columns=[],
        classes=roles.classes,
        profile=profile_table(table, roles),
    )


# --------------------------------------------------------------------------- synthetic data


def _synth_chunks(
    rows: int,
    features: int,
    categorical: int,
    task: Task,
    drift: float,
    seed: int,
    chunk_rows: int,
) -> Iterator[pa.Table]:
    # The relation between features and label is fixed by `seed` alone, so a drifted
    # dataset (drift > 0) keeps the same concept with shifted inputs (covariate shift).
    concept = np.random.default_rng(seed)
    weights = concept.normal(0, 1, size=features) / math.sqrt(max(features, 1))
    n_levels = 8
    cat_effects = concept.normal(0, 0.5, size=(categorical, n_levels))
    base_probs = np.linspace(2.0, 1.0, n_levels)
    base_probs /= base_probs.sum()
    drift_probs = (1 - min(drift, 1.0)) * base_probs + min(drift, 1.0) * base_probs[::-1]
    drift_probs /= drift_probs.sum()
    levels = np.array([f"v{i}" for i in range(n_levels)])
    data_rng = np.random.default_rng([seed, 1 if drift else 0, int(drift * 1000)])
    start = 0
    while start < rows:
        n = min(chunk_rows, rows - start)
        x = data_rng.normal(drift, 1.0, size=(n, features)).astype(np.float32)
        score = x.astype(np.float64) @ weights
        if features:
            score += 0.5 * np.sin(2 * x[:, 0])
        cols: dict[str, Any] = {"id": np.arange(start, start + n, dtype=np.int64)}
        for j in range(features):
            cols[f"f{j}"] = x[:, j]
        for j in range(categorical):
            codes = data_rng.choice(n_levels, size=n, p=drift_probs)
            score += cat_effects[j, codes]
            cols[f"c{j}"] = pa.DictionaryArray.from_arrays(
                pa.array(codes.astype(np.int32)), pa.array(levels)
            ).cast(pa.string())
        noise = data_rng.normal(0, 0.3, size=n)
        if task == "classification":
            cols["label"] = (score + noise > 0).astype(np.int64)
        else:
            cols["label"] = (score + noise).astype(np.float64)
        yield pa.table(cols)
        start += n


def _write_chunks(
    fs: pafs.FileSystem, target: str, lower: str, chunks: Iterator[pa.Table], progress: Any
) -> None:
    """Write tables as one CSV file, one Parquet file or a folder of Parquet parts (by the
    name's ending), counting rows into `progress`."""
    single = lower.endswith((".csv", ".parquet", ".pq"))
    fs.create_dir(target.rsplit("/", 1)[0] if single else target, recursive=True)
    if lower.endswith(".csv"):
        with fs.open_output_stream(target) as sink:
            for i, chunk in enumerate(chunks):
                options = pacsv.WriteOptions(include_header=i == 0)
                pacsv.write_csv(chunk, sink, write_options=options)
                if progress is not None:
                    progress(chunk.num_rows)
    elif single:
        writer: pq.ParquetWriter | None = None
        try:
            for chunk in chunks:
                if writer is None:
                    writer = pq.ParquetWriter(target, chunk.schema, filesystem=fs)
                writer.write_table(chunk)
                if progress is not None:
                    progress(chunk.num_rows)
        finally:
            if writer is not None:
                writer.close()
    else:
        for i, chunk in enumerate(chunks):
            pq.write_table(chunk, f"{target}/part-{i:05d}.parquet", filesystem=fs)
            if progress is not None:
                progress(chunk.num_rows)


def synth_dataset(
    out: str,
    rows: int,
    features: int = 16,
    categorical: int = 0,
    task: Task = "classification",
    drift: float = 0.0,
    seed: int = 0,
    chunk_rows: int = 250_000,
    progress: Any = None,
) -> str:
    """Write a seeded synthetic dataset with a known feature→label relation.

    Columns: `id`, numeric `f0..f{F-1}` (float32, N(drift, 1)), categorical `c0..c{C-1}`
    (8 levels `v0..v7`), and `label` — for classification `1[x·w + 0.5·sin(2·f0) + Σ cat
    effects + noise > 0]`, for regression that score itself. The relation depends only on
    `seed`; `drift` shifts every numeric mean by `drift` standard deviations and moves a
    `drift` share of categorical mass from frequent to rare levels, so a dataset made with
    `--drift 0.5` is the same concept under covariate shift.

    `out` (a path or a URI such as s3://bucket/synth) ending in .csv writes one CSV file,
    in .parquet one Parquet file, anything else a folder of Parquet parts (one per chunk),
    which Ray Data reads in parallel.
    """
    if rows < 1:
        raise DataError("--rows must be at least 1")
    if features < 0 or categorical < 0 or features + categorical == 0:
        raise DataError("need at least one feature (--features or --categorical)")
    if drift < 0:
        raise DataError("--drift must be >= 0")
    fs, target = open_location(out)
    chunks = _synth_chunks(rows, features, categorical, task, drift, seed, chunk_rows)
    with reaching(out):  # an object store that does not answer: named, exit 1
        _write_chunks(fs, target, out.lower(), chunks, progress)
    return out
