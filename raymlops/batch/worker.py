"""One work unit from start to finish, as a Ray Data actor runs it: read the unit with
pyarrow (Parquet row groups, or a CSV file streamed block by block), run the `Predictor`
batch by batch, and write one Parquet file that appears atomically when the unit is done.

Reading and writing inside the actor keeps the rows out of Ray's object store (only a
unit's description goes in and a line of statistics comes out), so throughput is that of
pyarrow and torch, and a unit's output is either complete or absent: the basis of the
exactly-once guarantee. `process_unit` needs no Ray and is unit tested on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymlops.batch.plan import (
    REJECTS_DIR,
    TMP_DIR,
    WorkUnit,
    csv_read_options,
    open_location,
    output_schema,
    parse_csv_column_error,
)
from raymlops.core.architecture_params import params_schema
from raymlops.core.errors import DataError, UserInputError
from raymlops.core.storage import join, read_bytes, write_bytes

if TYPE_CHECKING:
    from raymlops.model.predictor import Prediction, Predictor

__all__ = [
    "STATS_KEY",
    "OutputFolder",
    "UnitActor",
    "WorkerSpec",
    "find_bad_rows",
    "process_unit",
    "read_unit_stats",
]

#: Key of the Parquet footer metadata that records a unit's statistics in its output file.
STATS_KEY = "raymlops.batch"
_CSV_BLOCK = 8 << 20


@dataclass(frozen=True)
class WorkerSpec:
    """What every unit of a run shares: where to read and write, which columns, how to
    treat bad rows, and which model version writes the predictions."""

    input: str
    output: str
    columns: list[str]
    numeric: list[str]
    pass_through: list[str]
    classes: list[str] | None
    on_bad_rows: str
    batch_size: int
    compression: str
    model_name: str
    model_version: int
    #: User architectures (`package.module:Name`) the driver's config registered: an actor
    #: imports them before loading, as a model's own files never make it import anything.
    architectures: list[str] = field(default_factory=list)
    #: The run's id: its temporary files live in `.tmp/<run>/` of the output.
    run: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


# --------------------------------------------------------------------------- output folder


#: A run's driver marks its temporary folder alive this often (`OutputFolder.alive`)...
HEARTBEAT_S = 15.0
#: ...and a folder with nothing written for this long is a dead run's: the next run removes it.
STALE_TEMP_S = 120.0


class OutputFolder:
    """An output folder (local path or URI) where files appear atomically.

    A file is written under `.tmp/<run>/` and moved into place once complete: a rename on a
    local or network file system (atomic), a server-side copy on an object store (s3://,
    gs://), where an object becomes visible whole or not at all. A failed attempt's
    temporary file is deleted, never moved, so a partial file can never take a final name.
    Each run writes into a temporary folder of its own (`run`), so two runs into one output
    never remove each other's files: both finish, and a unit they both did is one file."""

    def __init__(self, location: str, run: str = "") -> None:
        self.location = location
        self.run = run
        self.fs, self.root = open_location(location)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        return bool(self.fs.get_file_info(self.path(name)).type == pafs.FileType.File)

    def names(self, subdir: str = "") -> set[str]:
        """Names of the files directly in the folder (or in `subdir` of it)."""
        base = self.path(subdir) if subdir else self.root
        info = self.fs.get_file_info(base)
        if info.type != pafs.FileType.Directory:
            return set()
        selector = pafs.FileSelector(base, recursive=False)
        return {
            Path(f.path).name
            for f in self.fs.get_file_info(selector)
            if f.type == pafs.FileType.File
        }

    def is_empty(self) -> bool:
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            return True
        if info.type != pafs.FileType.Directory:
            raise UserInputError(f"output {self.location} is a file; give a folder")
        return not self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))

    def _temp_dir(self) -> str:
        return f"{TMP_DIR}/{self.run}" if self.run else TMP_DIR

    def temp_path(self, name: str) -> str:
        """Where a file is written before it is committed under `name` (in this run's own
        temporary folder)."""
        self.fs.create_dir(self.path(self._temp_dir()), recursive=True)
        flat = name.replace("/", "__")
        return self.path(f"{self._temp_dir()}/{flat}.{uuid.uuid4().hex[:12]}")

    def commit(self, temp: str, name: str) -> None:
        """Make the written file visible under `name` (a rename on local disks)."""
        parent = str(Path(self.path(name)).parent)
        if parent != self.root:
            self.fs.create_dir(parent, recursive=True)
        self.fs.move(temp, self.path(name))

    def discard(self, temp: str) -> None:
        """Delete a temporary file of a failed attempt (if it is there at all)."""
        with contextlib.suppress(OSError, pa.ArrowException):
            self.fs.delete_file(temp)

    def write_text(self, name: str, text: str) -> None:
        """Write a small file atomically."""
        write_bytes(join(self.location, name), text.encode())

    def read_text(self, name: str) -> str | None:
        data = read_bytes(join(self.location, name))
        return data.decode() if data is not None else None

    @contextlib.contextmanager
    def alive(self) -> Iterator[None]:
        """While the block runs, keep this run's temporary folder marked alive (a heartbeat
        file rewritten every HEARTBEAT_S), so that another run into the same output never
        takes it for a dead run's."""
        import threading

        stop = threading.Event()
        beat = self.path(f"{self._temp_dir()}/.heartbeat")

        def touch() -> None:
            while True:
                with contextlib.suppress(OSError, pa.ArrowException):
                    self.fs.create_dir(self.path(self._temp_dir()), recursive=True)
                    with self.fs.open_output_stream(beat) as sink:
                        sink.write(str(time.time()).encode())
                if stop.wait(HEARTBEAT_S):
                    return

        thread = threading.Thread(target=touch, name="raymlops-batch-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=30)

    def clean_temp(self, stale_s: float = STALE_TEMP_S) -> None:
        """Remove this run's temporary folder and what dead runs left in `.tmp/` (nothing
        written there for `stale_s`); never a committed file, never a live run's. A folder
        opened without a run (direct use) removes all of `.tmp/`."""
        base = self.path(TMP_DIR)
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return
        now = time.time()
        for entry in self.fs.get_file_info(pafs.FileSelector(base)):
            mine = not self.run or entry.base_name == self.run
            if mine or now - self._newest(entry) > stale_s:
                with contextlib.suppress(OSError, pa.ArrowException):
                    if entry.type == pafs.FileType.Directory:
                        self.fs.delete_dir(entry.path)
                    else:  # a loose file of the layout before per-run folders
                        self.fs.delete_file(entry.path)
        with contextlib.suppress(OSError, pa.ArrowException):
            if not self.fs.get_file_info(pafs.FileSelector(base)):
                self.fs.delete_dir(base)

    def _newest(self, entry: pafs.FileInfo) -> float:
        """When anything at or under `entry` was last written (POSIX seconds)."""
        found = [entry]
        if entry.type == pafs.FileType.Directory:
            found += self.fs.get_file_info(pafs.FileSelector(entry.path, recursive=True))
        times = [i.mtime.timestamp() for i in found if i.mtime is not None]
        return max(times, default=0.0)


def read_unit_stats(out: OutputFolder, unit: WorkUnit) -> dict[str, Any]:
    """The statistics a complete unit recorded in its output file's footer."""
    meta = pq.read_metadata(out.path(unit.output_name), filesystem=out.fs).metadata or {}
    raw = meta.get(STATS_KEY.encode())
    if raw is None:
        raise UserInputError(f"{out.path(unit.output_name)} was not written by raymlops batch")
    stats: dict[str, Any] = json.loads(raw)
    return stats


# --------------------------------------------------------------------------- bad rows


def find_bad_rows(
    batch: pa.RecordBatch, numeric: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows the Predictor cannot turn into a prediction, with the reason of each.

    A row is bad when a numeric feature holds text that is not a number ('abc'); the rule
    is the Predictor's own (a value that parses to nothing while it is not missing), applied
    row by row instead of failing the whole batch. Missing values are not bad: the model's
    preprocessing imputes them, as in training. Columns already typed as numbers are never
    checked, so clean Parquet input costs nothing here.
    """
    mask: np.ndarray | None = None
    reasons: np.ndarray | None = None
    for col in numeric:
        array = batch.column(col)
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            continue
        values = array.to_pandas()
        parsed = pd.to_numeric(values, errors="coerce")
        bad = np.asarray(parsed.isna() & values.notna(), dtype=bool)
        if not bad.any():
            continue
        if mask is None or reasons is None:
            mask = np.zeros(len(batch), dtype=bool)
            reasons = np.empty(len(batch), dtype=object)
        for i in np.flatnonzero(bad & ~mask):
            reasons[i] = f"column '{col}': {values.iloc[i]!r} is not a number"
        mask |= bad
    if mask is None or reasons is None:
        return None
    return mask, reasons


# --------------------------------------------------------------------------- one unit


class _RetypeColumn(Exception):
    """A CSV column typed as a number from the first block holds text further down."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


def _read_errors_as_data_errors(path: str, batches: Iterator[pa.RecordBatch]) -> Any:
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            if "CSV conversion error" in message:
                raise _RetypeColumn(message) from None
            raise DataError(f"cannot read {path}: {message}") from None
        yield batch


def _output_table(
    batch: pa.RecordBatch, prediction: Prediction, spec: WorkerSpec, schema: pa.Schema
) -> pa.Table:
    n = batch.num_rows
    arrays: list[Any] = [batch.column(c) for c in spec.pass_through]
    if prediction.probabilities is not None and prediction.classes is not None:
        arrays.append(pa.array(prediction.predictions, type=pa.string()))
        probabilities = np.asarray(prediction.probabilities, dtype=np.float32)
        arrays += [pa.array(probabilities[:, j]) for j in range(len(prediction.classes))]
    else:
        arrays.append(pa.array(np.asarray(prediction.predictions, dtype=np.float64)))
    arrays.append(pa.repeat(pa.scalar(spec.model_name, pa.string()), n))
    arrays.append(pa.array(np.full(n, spec.model_version, dtype=np.int32)))
    return pa.Table.from_arrays(arrays, schema=schema)


def _run_unit(
    unit: WorkUnit,
    batches: Iterator[pa.RecordBatch],
    input_schema: pa.Schema,
    predictor: Predictor,
    spec: WorkerSpec,
    out: OutputFolder,
    node_id: str,
) -> dict[str, Any]:
    started = time.monotonic()
    started_at = time.time()
    schema = output_schema(input_schema, spec.pass_through, spec.classes)
    rejects_name = f"{REJECTS_DIR}/{unit.output_name}"
    temp = out.temp_path(unit.output_name)
    writer = pq.ParquetWriter(temp, schema, filesystem=out.fs, compression=spec.compression)
    rejects_temp: str | None = None
    rejects_writer: pq.ParquetWriter | None = None
    rows_in = rows_out = rejected = 0
    try:
        for batch in _read_errors_as_data_errors(unit.path, batches):
            found = find_bad_rows(batch, spec.numeric)
            good = batch
            if found is not None:
                mask, reasons = found
                first = int(np.flatnonzero(mask)[0])
                if spec.on_bad_rows == "fail":
                    raise DataError(
                        f"{unit.path}: row {unit.first_row + rows_in + first}: {reasons[first]} "
                        "(--on-bad-rows skip writes such rows to "
                        f"{out.location.rstrip('/')}/{REJECTS_DIR}/ instead)"
                    )
                bad = batch.filter(pa.array(mask))
                rows = np.flatnonzero(mask) + unit.first_row + rows_in
                bad_table = pa.Table.from_batches([bad]).append_column(
                    "reason", pa.array(reasons[mask].tolist(), type=pa.string())
                )
                bad_table = bad_table.append_column(
                    "source_file", pa.repeat(pa.scalar(unit.path, pa.string()), len(rows))
                ).append_column("source_row", pa.array(rows.astype(np.int64)))
                if rejects_writer is None:
                    rejects_temp = out.temp_path(rejects_name)
                    rejects_writer = pq.ParquetWriter(
                        rejects_temp, bad_table.schema, filesystem=out.fs
                    )
                rejects_writer.write_table(bad_table)
                rejected += len(rows)
                good = batch.filter(pa.array(~mask))
            rows_in += batch.num_rows
            if good.num_rows:
                prediction = predictor.predict(good)
                writer.write_table(_output_table(good, prediction, spec, schema))
                rows_out += good.num_rows
        stats = {
            "unit": unit.index,
            "file": unit.path,
            "row_groups": list(unit.row_groups),
            "rows_in": rows_in,
            "rows_out": rows_out,
            "rows_rejected": rejected,
            "started_at": started_at,
            "seconds": round(time.monotonic() - started, 4),
            "node_id": node_id,
            "pid": os.getpid(),
            "model_name": spec.model_name,
            "model_version": spec.model_version,
        }
        writer.add_key_value_metadata({STATS_KEY: json.dumps(stats)})
        writer.close()
        if rejects_writer is not None and rejects_temp is not None:
            rejects_writer.close()
            # Rejects first: the unit counts as done only once its output file exists, so
            # a crash between the two renames redoes the unit and rewrites the same rejects.
            out.commit(rejects_temp, rejects_name)
        out.commit(temp, unit.output_name)
        return stats
    except BaseException:
        for w in (writer, rejects_writer):
            if w is not None:
                with contextlib.suppress(Exception):  # already failing; that error matters
                    w.close()
        out.discard(temp)
        if rejects_temp is not None:
            out.discard(rejects_temp)
        raise


def _csv_header(fs: pafs.FileSystem, path: str) -> list[str]:
    read, parse = csv_read_options(path)
    with fs.open_input_stream(path) as stream:
        names: list[str] = pacsv.open_csv(
            stream, read_options=read, parse_options=parse
        ).schema.names
        return names


def process_unit(
    unit: WorkUnit,
    predictor: Predictor,
    spec: WorkerSpec,
    in_fs: pafs.FileSystem,
    out: OutputFolder,
    node_id: str = "",
) -> dict[str, Any]:
    """Predict one unit and write `part-<index>.parquet` (and its rejects) atomically;
    returns the unit's statistics, which are also stored in the output file's footer.

    Raises DataError naming the file (and row and column) for unreadable data or, with
    `on_bad_rows: fail`, a bad row; nothing of the unit is then left behind."""
    if unit.format == "parquet":
        try:
            parquet = pq.ParquetFile(unit.path, filesystem=in_fs)
            batches = parquet.iter_batches(
                batch_size=spec.batch_size,
                row_groups=list(unit.row_groups) or None,
                columns=spec.columns,
            )
            schema = parquet.schema_arrow
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read {unit.path}: {str(exc).splitlines()[0]}") from None
        return _run_unit(unit, batches, schema, predictor, spec, out, node_id)

    as_text: dict[str, pa.DataType] = {}
    while True:
        read, parse = csv_read_options(unit.path)
        read.block_size = _CSV_BLOCK
        convert = pacsv.ConvertOptions(
            include_columns=spec.columns, strings_can_be_null=True, column_types=as_text
        )
        try:
            with in_fs.open_input_stream(unit.path) as stream:
                reader = pacsv.open_csv(
                    stream, read_options=read, parse_options=parse, convert_options=convert
                )
                return _run_unit(unit, iter(reader), reader.schema, predictor, spec, out, node_id)
        except _RetypeColumn as retype:
            # Arrow typed the column from the first block; read it as text from the start
            # so that the Predictor's own parsing (and the bad-row rule) decides per value.
            column = parse_csv_column_error(str(retype), _csv_header(in_fs, unit.path))
            if column is None or column in as_text:
                raise DataError(f"cannot read {unit.path}: {retype}") from None
            as_text[column] = pa.string()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read {unit.path}: {str(exc).splitlines()[0]}") from None


# --------------------------------------------------------------------------- the actor


class UnitActor:
    """The Ray Data actor of `raymlops batch`: loads the Predictor once (digests verified,
    torch threads set), then processes the units Ray Data hands it, one per call.

    Errors come back as a result line instead of an exception, so that the driver can name
    the file in one line; an actor that dies (crash, out of memory, lost node) is restarted
    by Ray and its unit retried, the partial output of the dead attempt never committed."""

    def __init__(
        self,
        model_files: dict[str, bytes],
        digests: dict[str, str],
        metadata: dict[str, Any],
        spec_json: str,
        device: str,
        torch_threads: int,
    ) -> None:
        self.created_at = time.time()
        import torch

        from raymlops.model.predictor import Predictor

        # The actor's CPU share for torch and for Arrow's decoding/encoding pool alike: with
        # Arrow's default (every core) two actors on two cores ran about 10% slower.
        torch.set_num_threads(torch_threads)
        pa.set_cpu_count(torch_threads)
        self.spec = WorkerSpec.from_json(spec_json)
        for architecture in self.spec.architectures:
            params_schema(architecture)  # imports and registers it, as the driver's config did
        with tempfile.TemporaryDirectory(prefix="raymlops-batch-model-") as tmp:
            for name, content in model_files.items():
                (Path(tmp) / name).write_bytes(content)
            self.predictor = Predictor.load(
                tmp, expected_digests=digests, metadata=metadata, device=device
            )
        self.in_fs = open_location(self.spec.input)[0]
        self.out = OutputFolder(self.spec.output, run=self.spec.run)
        # Asking Ray outside a Ray worker would start one (the in-process executor).
        ray = sys.modules.get("ray")
        self.node_id = ""
        if ray is not None and ray.is_initialized():
            self.node_id = str(ray.get_runtime_context().get_node_id())
        self.ready_at = time.time()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [json.dumps(self.run(WorkUnit.from_json(str(text)))) for text in batch["unit"]]
        return {"result": np.array(results, dtype=object)}

    def run(self, unit: WorkUnit) -> dict[str, Any]:
        """One unit's statistics, or its error as a result line (`error`, `user`)."""
        stats: dict[str, Any]
        try:
            stats = process_unit(
                unit, self.predictor, self.spec, self.in_fs, self.out, self.node_id
            )
            # When this actor started and was ready: where a run's start-up time goes.
            stats["actor"] = {"created_at": self.created_at, "ready_at": self.ready_at}
        except UserInputError as exc:
            stats = {"unit": unit.index, "file": unit.path, "error": str(exc), "user": True}
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            stats = {
                "unit": unit.index,
                "file": unit.path,
                "error": f"{type(exc).__name__}: {detail}",
                "user": False,
            }
        return stats
