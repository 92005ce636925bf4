"""The prediction log: every served prediction appended to Parquet, off the response path.

Layout: `raymlops.data.prediction_log` (monitoring reads it through the same module).

Columns, in order: request_id (string), timestamp (timestamp[us, tz=UTC]), model_name
(string), model_version (int64), role (string: champion|challenger|shadow), latency_ms
(float64), one column per raw input feature under its own name (numeric float64,
categorical string, null where the request sent null), prediction (string label or float64
value) and proba_<class> (float64) per class for classification. A request of n rows gives
n log rows with its request_id, in request order.

The request path only appends column arrays to an in-memory buffer (no per-row Python
work); a background thread writes whatever is buffered every `flush_interval_s`, or as soon
as `max_rows_per_flush` rows wait. Memory is bounded by `max_buffered_rows`: beyond it rows
are dropped and counted, never blocking a response.

What a replica's end costs:
- Shutting down (`close`: Serve stops the replica for a redeploy, a scale-down, `serve
  stop`; or SIGTERM, through an `atexit` hook, which Ray's worker runs when it exits on
  SIGTERM) writes everything buffered; a row appended after that is written at once, in
  the caller's thread. Nothing is lost.
- A kill (SIGKILL, the OOM killer) loses what was buffered: at most the rows appended in
  the last `flush_interval_s` plus the time one write takes (or `max_rows_per_flush`
  rows). The writer's ledger (raymlops.serve.log_ledger) survives the process, and another
  writer of the same log on the same node counts those rows (`on_lost`; the Serve replica
  exports them as the metric raymlops_prediction_log_lost_rows).

Every `compact_every_s` a writer also compacts the log (`raymlops.data.log_compaction`):
the files at least that old merge into one per partition, under `compaction_lock`, in a
thread of its own so that flushes never wait for it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import functools
import hashlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from raymlops.data.log_compaction import CompactionResult, is_journal, visible_files
from raymlops.data.prediction_log import model_log_root, partition
from raymlops.serve.log_ledger import Ledger, claim_dead_ledgers

if TYPE_CHECKING:
    from raymlops.core.config import PipelineConfig

__all__ = [
    "LogChunk",
    "PredictionLogWriter",
    "compact_prediction_log",
    "compaction_lock",
    "log_schema",
    "read_log",
]

logger = logging.getLogger(__name__)

#: How often a writer looks for dead writers' ledgers to count what they lost.
DEAD_WRITER_SCAN_S = 5.0
BASE_COLUMNS = ("request_id", "timestamp", "model_name", "model_version", "role", "latency_ms")


def log_schema(numeric: list[str], categorical: list[str], classes: list[str] | None) -> pa.Schema:
    """The Parquet schema of one model version's log files."""
    fields = [
        pa.field("request_id", pa.string()),
        pa.field("timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.int64()),
        pa.field("role", pa.string()),
        pa.field("latency_ms", pa.float64()),
        pa.field("error", pa.string()),  # null when answered; why not, when the model failed
    ]
    fields += [pa.field(name, pa.float64()) for name in numeric]
    fields += [pa.field(name, pa.string()) for name in categorical]
    if classes is not None:
        fields.append(pa.field("prediction", pa.string()))
        fields += [pa.field(f"proba_{c}", pa.float64()) for c in classes]
    else:
        fields.append(pa.field("prediction", pa.float64()))
    return pa.schema(fields)


@dataclass
class LogChunk:
    """The rows of one answered request (or one shadow answer) for one model version; a
    request the model failed on carries its `error` and no predictions (the error-rate KPI)."""

    request_id: str
    timestamp: float
    version: int
    role: str
    latency_ms: float
    columns: dict[str, np.ndarray]
    predictions: np.ndarray
    probabilities: np.ndarray | None
    error: str | None = None

    @property
    def rows(self) -> int:
        return len(self.predictions)


@dataclass
class _VersionLayout:
    numeric: list[str]
    categorical: list[str]
    classes: list[str] | None
    schema: pa.Schema


class PredictionLogWriter:
    """Buffers LogChunks and writes them as Parquet files from a background thread.

    With `ledger_root` (a folder on this node's disk) it keeps a ledger there and counts
    the rows that dead writers of the same log left unwritten (`on_lost`, see the module
    docstring); `owner` names this writer in that folder (the replica id)."""

    def __init__(
        self,
        root: str,
        model_name: str,
        *,
        flush_interval_s: float = 1.0,
        max_rows_per_flush: int = 10_000,
        max_buffered_rows: int = 200_000,
        on_dropped: Callable[[int], None] | None = None,
        on_flushed: Callable[[int], None] | None = None,
        ledger_root: str | Path | None = None,
        owner: str = "",
        on_lost: Callable[[int], None] | None = None,
        compact_every_s: float = 0.0,
        compaction_lock: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        from pyarrow import fs as pafs

        self.model_name = model_name
        self.root = model_log_root(root, model_name)
        self.filesystem, self._base = pafs.FileSystem.from_uri(self.root)
        self.flush_interval_s = flush_interval_s
        self.max_rows_per_flush = max_rows_per_flush
        self.max_buffered_rows = max_buffered_rows
        self._on_dropped = on_dropped
        self._on_flushed = on_flushed
        self._on_lost = on_lost
        self._layouts: dict[int, _VersionLayout] = {}
        self._buffer: list[LogChunk] = []
        self._buffered_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._closed = False
        self.dropped_rows = 0
        self.written_rows = 0
        self.failed_writes = 0
        self.counted_lost_rows = 0  # rows dead writers of this log left unwritten
        self.ledger_folder: Path | None = None
        self._ledger: Ledger | None = None
        if ledger_root is not None:
            digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]
            self.ledger_folder = Path(ledger_root) / digest
            self._ledger = Ledger.create(self.ledger_folder, owner or model_name)
        atexit.register(self._shutdown)  # SIGTERM: Ray's worker exits through sys.exit
        self._thread = threading.Thread(
            target=self._run, name="raymlops-prediction-log", daemon=True
        )
        self._thread.start()
        self.compactions = 0  # compaction passes that merged files
        if compact_every_s > 0:
            threading.Thread(
                target=self._compact_periodically,
                args=(compact_every_s, compaction_lock),
                name="raymlops-prediction-log-compaction",
                daemon=True,
            ).start()

    def register_version(
        self, version: int, numeric: list[str], categorical: list[str], classes: list[str] | None
    ) -> None:
        """Declare the columns of a version before its first append."""
        with self._lock:
            self._layouts[version] = _VersionLayout(
                list(numeric), list(categorical), classes, log_schema(numeric, categorical, classes)
            )

    def append(self, chunk: LogChunk) -> bool:
        """Queue a chunk for writing; False (and counted) if the buffer is full. After
        `close` the chunk is written at once, in the caller's thread."""
        rows = chunk.rows
        full = dropped = False
        with self._lock:
            closed = self._closed
            if closed:
                pass
            elif self._buffered_rows + rows > self.max_buffered_rows:
                self.dropped_rows += rows
                dropped = True
            else:
                self._buffer.append(chunk)
                self._buffered_rows += rows
                if self._ledger is not None:
                    self._ledger.accepted(rows)
                full = self._buffered_rows >= self.max_rows_per_flush
        if closed:  # no ledger: these rows are written before the caller answers
            with self._write_lock:
                return self._write([chunk], None) == rows
        if dropped:
            if self._on_dropped is not None:
                self._on_dropped(rows)
            return False
        if full:
            self._wake.set()
        return True

    def flush(self) -> int:
        """Write everything buffered now (in the caller's thread); returns rows written."""
        with self._lock:
            chunks, self._buffer, self._buffered_rows = self._buffer, [], 0
        if not chunks:
            return 0
        with self._write_lock:
            return self._write(chunks, self._ledger)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and write what is left (called on replica shutdown); rows
        appended later are written as they come."""
        atexit.unregister(self._shutdown)
        self._shutdown(timeout_s)

    def count_dead_writers(self) -> int:
        """Count (and forget) the ledgers of this log's dead writers on this node; returns
        the rows they lost. The background thread calls it every DEAD_WRITER_SCAN_S."""
        if self.ledger_folder is None:
            return 0
        own = self._ledger.path if self._ledger is not None else None
        lost = 0
        for dead in claim_dead_ledgers(self.ledger_folder, self._published, own):
            if dead.lost_rows:
                logger.warning(
                    "prediction log: writer %s (pid %d) died with %d rows unwritten",
                    dead.owner, dead.pid, dead.lost_rows,
                )  # fmt: skip
            lost += dead.lost_rows
        if lost:
            self.counted_lost_rows += lost
            if self._on_lost is not None:
                self._on_lost(lost)
        return lost

    # ------------------------------------------------------------------ internals
    def _shutdown(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        self.flush()
        with self._write_lock:
            ledger, self._ledger = self._ledger, None
            if ledger is not None:
                ledger.close()

    def _run(self) -> None:
        next_scan = 0.0
        due = time.monotonic() + self.flush_interval_s
        while not self._stop.is_set():
            if time.monotonic() >= next_scan:
                try:
                    self.count_dead_writers()
                except Exception:
                    logger.exception("prediction log: counting dead writers failed")
                next_scan = time.monotonic() + DEAD_WRITER_SCAN_S
            self._wake.wait(max(0.0, min(due, next_scan) - time.monotonic()))
            if time.monotonic() < due and not self._wake.is_set():
                continue  # woken for the scan only
            self._wake.clear()
            # The next flush is due an interval after this one starts, not after it ends.
            due = time.monotonic() + self.flush_interval_s
            try:
                self.flush()
            except Exception:  # never let the writer die; the rows are counted as lost
                logger.exception("prediction log: flush failed")

    def _compact_periodically(
        self,
        every_s: float,
        lock: Callable[[], contextlib.AbstractContextManager[Any]] | None,
    ) -> None:
        """Compact what is at least `every_s` old, every `every_s` (first after a random
        part of it, so that replicas started together do not all list the log at once)."""
        from raymlops.data.log_compaction import compact_log

        wait = every_s * (0.5 + random.random() / 2)
        while not self._stop.wait(wait):
            wait = every_s
            try:
                done = compact_log(self.root, lock=lock, settled_s=every_s)
            except Exception:  # the log stays readable uncompacted; try again next time
                logger.exception("prediction log: compaction failed")
                continue
            if done.files_in:
                self.compactions += 1
                logger.info(
                    "prediction log: compacted %d files into %d (%d rows) in %.1f s",
                    done.files_in, done.files_out, done.rows, done.seconds,
                )  # fmt: skip

    def _published(self, relative: str) -> bool:
        """Whether a dead writer's file reached the log; its hidden leftover is removed."""
        from pyarrow import fs as pafs

        folder, name = f"{self._base}/{relative}".rsplit("/", 1)
        if self.filesystem.get_file_info(f"{folder}/{name}").type == pafs.FileType.File:
            return True
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            with contextlib.suppress(OSError):
                self.filesystem.delete_file(f"{folder}/.{name}.tmp")
        return False

    def _write(self, chunks: list[LogChunk], ledger: Ledger | None) -> int:
        """Write `chunks` (under the write lock); `ledger` records them if it holds them."""
        groups: dict[tuple[str, int], list[LogChunk]] = {}
        for chunk in chunks:
            day = dt.datetime.fromtimestamp(chunk.timestamp, dt.timezone.utc).date().isoformat()
            groups.setdefault((day, chunk.version), []).append(chunk)
        written = 0
        for (day, version), group in groups.items():
            rows = sum(c.rows for c in group)
            try:
                name = f"part-{uuid.uuid4().hex}.parquet"
                if ledger is not None:
                    ledger.begin(f"{partition(day, version)}/{name}", rows)
                self._publish(version, group, f"{self._base}/{partition(day, version)}", name)
                written += rows
            except Exception:
                with self._lock:  # also counted by `append`, in another thread
                    self.failed_writes += 1
                    self.dropped_rows += rows
                logger.exception("prediction log: writing %d rows of v%d failed", rows, version)
                if self._on_dropped is not None:
                    self._on_dropped(rows)
            if ledger is not None:  # written, or counted as dropped
                ledger.settled(rows)
        self.written_rows += written
        if written and self._on_flushed is not None:
            self._on_flushed(written)
        return written

    def _publish(self, version: int, group: list[LogChunk], folder: str, name: str) -> None:
        """One file of `group`'s rows, visible to readers only once complete."""
        import pyarrow.parquet as pq
        from pyarrow import fs as pafs

        table = self._table(version, group)
        self.filesystem.create_dir(folder, recursive=True)
        # Dictionary encoding pays for the string columns only (floats rarely repeat).
        options = {"use_dictionary": self._string_columns(version)}
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            # Readers never see half a file: written under a hidden name, then renamed.
            hidden = f"{folder}/.{name}.tmp"
            pq.write_table(table, hidden, filesystem=self.filesystem, **options)
            self.filesystem.move(hidden, f"{folder}/{name}")
        else:  # object stores publish an object only once it is complete
            pq.write_table(table, f"{folder}/{name}", filesystem=self.filesystem, **options)

    def _string_columns(self, version: int) -> list[str]:
        layout = self._layouts[version]
        names = ["request_id", "model_name", "role", *layout.categorical]
        return names + (["prediction"] if layout.classes is not None else [])

    def _table(self, version: int, chunks: list[LogChunk]) -> pa.Table:
        """One version's chunks as one table. Per-request values are expanded to rows with
        Arrow's `take` (no Python objects per row); feature columns are concatenated."""
        layout = self._layouts[version]
        counts = np.array([c.rows for c in chunks])
        total = int(counts.sum())
        index = pa.array(np.repeat(np.arange(len(chunks)), counts))
        stamps = np.array([int(c.timestamp * 1_000_000) for c in chunks], dtype=np.int64)
        arrays: list[pa.Array] = [
            pa.array([c.request_id for c in chunks], type=pa.string()).take(index),
            pa.array(stamps, type=pa.timestamp("us", tz="UTC")).take(index),
            pa.array([self.model_name], type=pa.string()).take(pa.array(np.zeros(total, int))),
            pa.array(np.full(total, version, dtype=np.int64)),
            pa.array([c.role for c in chunks], type=pa.string()).take(index),
            pa.array(np.array([c.latency_ms for c in chunks], dtype=np.float64)).take(index),
            pa.array([c.error for c in chunks], type=pa.string()).take(index),
        ]
        if layout.numeric:
            numeric = np.concatenate([_numeric_block(c, layout.numeric) for c in chunks], axis=1)
            arrays += [pa.array(row, type=pa.float64(), from_pandas=True) for row in numeric]
        for name in layout.categorical:
            values = np.concatenate([c.columns[name] for c in chunks])
            arrays.append(pa.array(values, type=pa.string(), from_pandas=True))
        predictions = np.concatenate([c.predictions for c in chunks])
        if layout.classes is not None:
            arrays.append(pa.array(predictions, type=pa.string()))  # labels: str objects
            probabilities = np.concatenate(
                [
                    c.probabilities
                    if c.probabilities is not None
                    else np.full((c.rows, len(layout.classes)), np.nan)
                    for c in chunks
                ]
            )
            arrays += [
                pa.array(np.ascontiguousarray(probabilities[:, j], dtype=np.float64))
                for j in range(len(layout.classes))
            ]
        else:
            arrays.append(pa.array(predictions.astype(np.float64)))
        return pa.Table.from_arrays(arrays, schema=layout.schema)


def _numeric_block(chunk: LogChunk, names: list[str]) -> np.ndarray:
    """`chunk`'s numeric features as one (features, rows) float64 array.

    Why: a flush concatenated each feature over ~1,000 one-row chunks, 5.4% of a replica's
    samples at c32 (benchmarks/RESULTS.md); one concatenation of these blocks per flush costs
    ~3x less. A request parsed on RequestSchema's fast path already holds its numeric
    columns as the rows, in feature order, of one C-contiguous block: that block is used as
    it is; other columns are stacked here. Checked: the first and last features are the
    first and last rows of that block (the parser writes the rows between them in feature
    order; a pointer check of every row would cost what the concatenation did)."""
    columns = chunk.columns
    first, last = columns[names[0]], columns[names[-1]]
    base = first.base
    rows = len(first)
    if (
        base is not None
        and last.base is base
        and base.dtype == np.float64
        and base.size == len(names) * rows
        and base.flags.c_contiguous
        and first.flags.c_contiguous
        and last.flags.c_contiguous
    ):
        block = base.reshape(len(names), rows)
        if np.may_share_memory(first, block[0]) and np.may_share_memory(last, block[-1]):
            return block
    return np.stack([np.asarray(columns[name], dtype=np.float64) for name in names])


def read_log(
    root: str,
    since: dt.datetime | float | None = None,
    columns: Callable[[list[str]], list[str]] | None = None,
) -> pa.Table:
    """One model's prediction log (`<root>/<model_name>`) as one table, oldest first.

    Files of versions with other columns are combined (missing columns are null); the
    Hive partition keys stay in the path, the table has the columns above. `since` (a
    datetime, or a POSIX timestamp) keeps the rows logged at or after it. `columns` picks
    the columns to read from the log's column names (the rest are never decoded).
    """
    from pyarrow import fs as pafs

    filesystem, base = pafs.FileSystem.from_uri(root)
    info = filesystem.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        return pa.table({})
    for attempt in range(3):
        listing = [
            f
            for f in filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
            if f.type == pafs.FileType.File
        ]
        files = [
            f.path
            for f in listing
            if f.path.endswith(".parquet") and not f.base_name.startswith((".", "_"))
        ]
        if not files:
            return pa.table({})
        journals = [f.path for f in listing if is_journal(f.base_name)]
        try:  # a compaction may remove files between listing and reading: list again
            visible = visible_files(filesystem, files, journals)
            return _read_files(filesystem, visible, since, columns)
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _read_files(
    filesystem: Any,
    files: list[str],
    since: dt.datetime | float | None,
    columns: Callable[[list[str]], list[str]] | None = None,
) -> pa.Table:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    # One schema per version folder: every file of a version has the same columns.
    firsts: dict[str, str] = {}
    for path in files:
        firsts.setdefault(path.rsplit("/", 1)[0], path)
    schema = pa.unify_schemas(
        [
            ds.dataset(path, filesystem=filesystem, format="parquet").schema
            for path in firsts.values()
        ]
    )
    dataset = ds.dataset(files, schema=schema, filesystem=filesystem, format="parquet")
    expression = None
    if since is not None:
        moment = (
            since
            if isinstance(since, dt.datetime)
            else dt.datetime.fromtimestamp(float(since), dt.timezone.utc)
        )
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        expression = pc.field("timestamp") >= pa.scalar(moment, type=pa.timestamp("us", tz="UTC"))
    picked = None if columns is None else columns(list(schema.names))
    if picked is not None and "timestamp" in schema.names and "timestamp" not in picked:
        picked = [*picked, "timestamp"]  # the order is by it
    table = dataset.to_table(columns=picked, filter=expression)
    if table.num_rows:
        table = table.sort_by([("timestamp", "ascending")])
    return table


def compact_prediction_log(
    config: PipelineConfig,
    home: str | Path | None = None,
    *,
    dry_run: bool = False,
    on_partition: Callable[[str, int], None] | None = None,
) -> CompactionResult:
    """Compact the prediction log of `config`'s model now (`raymlops log compact`): every
    published file, one file per day and version after it; returns the
    `raymlops.data.log_compaction.CompactionResult`. Safe beside serving replicas that write
    and compact the same log (they take the same lock: the registry's)."""
    from raymlops.core.home import home_dir
    from raymlops.data.log_compaction import compact_log
    from raymlops.data.prediction_log import configured_log
    from raymlops.registry.store import Registry

    root = configured_log(config, home_dir(home))
    lock = compaction_lock(root, Registry.from_config(config, home), config.registry.model_name)
    return compact_log(root, lock=lock, dry_run=dry_run, on_partition=on_partition)


def compaction_lock(
    root: str, registry: Any, model_name: str
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """The lock every compaction of the log at `root` takes (replicas, `raymlops log
    compact`, `compact_log` called directly): the file lock in a local log, the registry's
    lock (`Registry.log_compaction_lock`) for a log in object storage."""
    from raymlops.data.log_compaction import local_compaction_lock

    if "://" not in root or root.startswith("file://"):
        return local_compaction_lock(root)
    return functools.partial(registry.log_compaction_lock, model_name)
