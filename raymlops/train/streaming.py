"""Data that is never loaded whole (`data.streaming: true`).

One streaming pass over the files gives what `raymlops.data.dataset.load_dataset` gives for an
in-memory table — digest, checked column roles, split sizes, training profile and the fitted
preprocessing — while holding one Arrow batch plus a bounded uniform sample of training rows.
Each row's split is decided by a seeded hash of its content, so the driver's pass, the Ray
Data streams the trials read and the final test evaluation all agree on it without a shared
index (and duplicated rows always land in the same split).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.core.config import DataConfig, FeaturesConfig
from raymlops.core.errors import DataError
from raymlops.data.dataset import (
    MAX_CLASSES,
    ColumnRoles,
    DatasetVersion,
    Source,
    infer_roles,
    profile_table,
    resolve_source,
    scan_files,
)
from raymlops.model.features import Preprocessor

if TYPE_CHECKING:
    from raymlops.model.predictor import Predictor

__all__ = [
    "SPLIT_CODES",
    "StreamingData",
    "batch_to_arrays",
    "conform",
    "held_out_sample",
    "scan_dataset",
    "select_split",
    "split_codes",
    "transform_batch",
]

#: Code of each split in `split_codes`.
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
_SCAN_BATCH_ROWS = 65_536
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(values: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 finaliser of `values ^ salt`: uniform 64-bit words from row hashes."""
    with np.errstate(over="ignore"):
        z = values ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def _uniform(table: pa.Table | pa.RecordBatch, salt: int) -> np.ndarray:
    """One number in [0, 1) per row, a function of the row's content and `salt` only."""
    hashed = pd.util.hash_pandas_object(table.to_pandas(), index=False).to_numpy(np.uint64)
    return (_mix(hashed, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_codes(
    table: pa.Table | pa.RecordBatch, seed: int, validation: float, test: float
) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) for each row, from a seeded hash of its content."""
    u = _uniform(table, seed * 2 + 1)
    codes = np.zeros(len(u), dtype=np.int8)
    codes[u < test + validation] = 1
    codes[u < test] = 2
    return codes


def conform(table: pa.Table, schema: pa.Schema | None, source: str) -> pa.Table:
    """`table` cast to `schema` (the first file's), as every reader of streaming data sees
    it: files whose inferred types differ (a CSV column of ints in one file, floats in
    another) would otherwise hash their rows differently and put them in different splits."""
    if schema is None or table.schema == schema:
        return table
    try:
        return table.cast(schema)
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"files under {source} have incompatible schemas: {exc}") from None


def select_split(
    table: pa.Table,
    label: str,
    seed: int,
    validation: float,
    test: float,
    split: str,
    schema: pa.Schema | None = None,
    source: str = "the data",
) -> pa.Table:
    """The rows of `table` with a label that belong to `split` (see `split_codes`), read as
    `schema` when given (see `conform`; `source` names the data in its error)."""
    table = conform(table, schema, source)
    table = table.filter(pc.is_valid(table.column(label)))
    if table.num_rows == 0:
        return table
    keep = split_codes(table, seed, validation, test) == SPLIT_CODES[split]
    return table.filter(pa.array(keep))


@dataclass
class StreamingData:
    """What trials need to stream their data: the files, the split rule and the fitted
    preprocessing (JSON state). Small and picklable; it replaces `TrainingArrays` when
    `data.streaming` is on."""

    files: list[str]
    format: str
    filesystem: Any
    label: str
    seed: int
    validation: float
    test: float
    preprocessor: dict[str, Any]
    version: DatasetVersion = field(repr=False)
    #: The first file's schema: every batch is read as it (see `conform`).
    schema: pa.Schema | None = field(default=None, repr=False)

    def select(self, table: pa.Table, split: str) -> pa.Table:
        """The rows of `table` (labelled rows only) that belong to `split`."""
        return select_split(
            table,
            self.label,
            self.seed,
            self.validation,
            self.test,
            split,
            self.schema,
            self.version.source,
        )

    def batches(self, split: str) -> Iterator[pa.Table]:
        """The rows of one split, batch by batch, read in the driver (bounded memory)."""
        for batch in _scan(self.files, self.format, self.filesystem):
            rows = self.select(pa.Table.from_batches([batch]), split)
            if rows.num_rows:
                yield rows

    def evaluate(self, predictor: Predictor, split: str = "test") -> dict[str, float]:
        """Metrics of `predictor` on a whole split, streamed: only their sums are kept."""
        from raymlops.train.loop import metric_accumulator

        prep = predictor.preprocessor
        scores = metric_accumulator(prep)
        for rows in self.batches(split):
            scores.update(
                predictor.predict_matrix(prep.transform(rows)),
                prep.encode_target(rows.column(self.label)),
            )
        if not scores.rows:
            raise DataError(f"the {split} split of {self.version.source} is empty")
        return scores.result()

    def ray_dataset(self, split: str, ingest_cpus: float, concurrency: int) -> Any:
        """A lazy Ray Data stream of one split, preprocessed in the stream into the columns
        `x` (fixed-size float32 rows) and `y` (encoded targets).

        One task per file reads it batch by batch and yields each preprocessed batch as a
        block: every task of the stream (file listing included) reserves `ingest_cpus`, so
        a stream never waits for a CPU that the training workers hold."""
        import ray.data

        files = ray.data.from_items(
            [{"file": f} for f in self.files], override_num_blocks=len(self.files)
        )
        return files.map_batches(
            _read_transform,
            fn_kwargs={"data": self, "split": split},
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=ingest_cpus,
            concurrency=concurrency,
        )


def _read_transform(files: pa.Table, data: StreamingData, split: str) -> Iterator[pa.Table]:
    """Ray Data map: read files batch by batch, keep one split's rows, preprocess them."""
    prep = Preprocessor.from_dict(data.preprocessor)
    for file in files.column("file").to_pylist():
        for batch in _scan([file], data.format, data.filesystem):
            rows = data.select(pa.Table.from_batches([batch]), split)
            if rows.num_rows:
                yield transform_batch(prep, rows, data.label)


def transform_batch(prep: Preprocessor, rows: pa.Table, label: str) -> pa.Table:
    """Raw rows → a table of `x` (fixed_size_list<float32>) and `y` (encoded target)."""
    x = prep.transform(rows) if rows.num_rows else np.zeros((0, prep.n_outputs), np.float32)
    y = prep.encode_target(rows.column(label)) if rows.num_rows else np.zeros(0, np.float32)
    return arrays_to_table(x, y)


def arrays_to_table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    """A (rows, features) matrix and targets as one Arrow table with a fixed-size list column:
    the layout Ray Data moves without per-row Python objects."""
    width = x.shape[1]
    flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    return pa.table({"x": pa.FixedSizeListArray.from_arrays(flat, width), "y": pa.array(y)})


def batch_to_arrays(batch: pa.Table, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `arrays_to_table` for a batch: zero-copy where Arrow allows it."""
    column = batch.column("x")
    chunk = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    x = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    y = batch.column("y").to_numpy()
    return x, y


# --------------------------------------------------------------------------- the scan


def _scan(files: list[str], fmt: str, filesystem: Any) -> Iterator[pa.RecordBatch]:
    """Record batches of every file in order, one at a time."""
    yield from scan_files(files, fmt, filesystem, _SCAN_BATCH_ROWS)


def _files_digest(source: Source) -> str:
    """The same SHA-256 as `load_dataset` computes: relative names and bytes of each file."""
    import hashlib

    from raymlops.data.dataset import common_prefix, hash_file

    assert source.filesystem is not None
    digest = hashlib.sha256()
    prefix = common_prefix(source.files)
    for file in source.files:
        hash_file(digest, source.filesystem, file, prefix)
    return digest.hexdigest()


class _BottomK:
    """A uniform sample of at most `k` rows: the rows with the `k` smallest hash keys seen.
    Deterministic (keys come from row contents) and bounded whatever the input size."""

    def __init__(self, k: int, salt: int) -> None:
        self.k, self.salt = k, salt
        self.table: pa.Table | None = None
        self.keys = np.zeros(0)

    def add(self, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        keys = _uniform(rows, self.salt)
        table = rows if self.table is None else pa.concat_tables([self.table, rows])
        keys = np.concatenate([self.keys, keys])
        if len(keys) > self.k:
            keep = np.sort(np.argpartition(keys, self.k - 1)[: self.k])
            table, keys = table.take(pa.array(keep)), keys[keep]
        self.table, self.keys = table.combine_chunks(), keys


def held_out_sample(data: DataConfig, rows: int) -> tuple[pa.Table, str, int]:
    """A uniform sample of at most `rows` rows of the test split, the data's digest and the
    test split's size: what the gate scores for streaming data, read in one pass that holds
    one batch and the sample."""
    source = resolve_source(data.path, data.format)
    if source.format == "sklearn":
        raise DataError(f"data.streaming reads Parquet or CSV files, not {data.path}")
    digest = _files_digest(source)
    split = data.split
    sample = _BottomK(rows, split.seed * 2 + 11)
    total = 0
    schema: pa.Schema | None = None
    for batch in _scan(source.files, source.format, source.filesystem):
        table = pa.Table.from_batches([batch])
        if schema is None:
            if data.label not in table.column_names:
                raise DataError(f"{data.path} has no label column '{data.label}'")
            schema = table.schema
        test = select_split(
            table, data.label, split.seed, split.validation, split.test, "test", schema, data.path
        )
        total += test.num_rows
        sample.add(test)
    if sample.table is None:
        raise DataError(f"the test split of {data.path} is empty")
    return sample.table, digest, total


def scan_dataset(data: DataConfig, features: FeaturesConfig) -> StreamingData:
    """Digest, checks, split sizes, profile and preprocessing of the configured data in one
    pass that holds one batch and a bounded sample — never the whole data."""
    source = resolve_source(data.path, data.format)
    if source.format == "sklearn":
        raise DataError(f"data.streaming reads Parquet or CSV files, not {data.path}")
    fs = source.filesystem
    digest = _files_digest(source)
    split = data.split
    sample = _BottomK(data.stream_sample_rows, split.seed * 2 + 7)
    roles: ColumnRoles | None = None
    schema: pa.Schema | None = None
    counts = {"train": 0, "validation": 0, "test": 0}
    dropped = 0
    labels: set[str] = set()
    for batch in _scan(source.files, source.format, fs):
        table = pa.Table.from_batches([batch])
        if roles is None:
            schema = table.schema
            roles = infer_roles(table, data, features, source=data.path)
        table = conform(table, schema, data.path)
        valid = pc.is_valid(table.column(roles.label))
        dropped += table.num_rows - int(pc.sum(valid).as_py() or 0)
        table = table.filter(valid)
        if table.num_rows == 0:
            continue
        codes = split_codes(table, split.seed, split.validation, split.test)
        for name, code in SPLIT_CODES.items():
            counts[name] += int(np.count_nonzero(codes == code))
        if roles.task == "classification":
            labels.update(str(v) for v in pc.unique(table.column(roles.label)).to_pylist())
            if len(labels) > MAX_CLASSES and data.task == "auto":
                raise DataError(
                    f"label column '{roles.label}' in {data.path} has more than "
                    f"{MAX_CLASSES} classes; set data.task: regression if it is a number"
                )
        sample.add(table.filter(pa.array(codes == SPLIT_CODES["train"])))
    if roles is None or schema is None or sum(counts.values()) == 0:
        raise DataError(f"{data.path} has no rows")
    if min(counts.values()) == 0 or sample.table is None:
        raise DataError(
            f"{sum(counts.values())} rows are too few to split into train/validation/test "
            f"({counts['train']}/{counts['validation']}/{counts['test']})"
        )
    if roles.task == "classification":
        roles = ColumnRoles(
            roles.label, roles.task, roles.numeric, roles.categorical, roles.ids, sorted(labels)
        )
    prep = Preprocessor.fit(sample.table, roles, features)
    profile = profile_table(sample.table, roles)
    profile["num_rows"] = counts["train"]
    profile["sampled_rows"] = sample.table.num_rows
    version = DatasetVersion(
        source=data.path,
        digest=digest,
        num_rows=sum(counts.values()),
        schema={f.name: str(f.type) for f in schema},
        task=roles.task,
        label=roles.label,
        features=roles.features,
        id_columns=roles.ids,
        classes=roles.classes,
        split={**counts, "dropped_missing_label": dropped},
        profile=profile,
    )
    return StreamingData(
        files=source.files,
        format=source.format,
        filesystem=fs,
        label=roles.label,
        seed=split.seed,
        validation=split.validation,
        test=split.test,
        preprocessor=prep.to_dict(),
        version=version,
        schema=schema,
    )
