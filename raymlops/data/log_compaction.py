"""Compaction of a prediction log: many small part files into one file per partition.

Serving writes one small Parquet file per flush and replica (a busy endpoint writes
thousands a day), and every reader pays per file. Compaction merges the files of one
`date=…/version=…` partition into one `compact-<id>.parquet` (rows sorted by timestamp,
row groups sized for parallel reads) and removes the files it merged.

Files serving publishes are never written again (a part file appears complete or not at
all), so any published file may be merged, also in today's partition; what is still being
written is a hidden `.….tmp` file or an unfinished object, which no listing returns.

Exactly once, through a crash at any point and on object stores without rename, each merge:

1. claims its inputs: under the log's compaction lock (held for this step only), a journal
   `_compaction-<id>.json` in the partition names the inputs and the output; inputs another
   live journal names are left to it;
2. writes the output as `_compact-<id>.staged` (hidden from readers), streaming the inputs
   through one row group at a time (memory: about one input plus one row group);
3. checks that its journal is still there (nobody took the claim back), then publishes the
   output as `compact-<id>.parquet`;
4. deletes the inputs, then the staged copy and the journal.

Readers (`visible_files`) drop the inputs of every journal whose output is published, so a
reader sees each row once at every step. A later compaction finishes what a killed one left
once its output is published (deleting inputs twice is harmless), and takes the claim back
(deletes staged copy and journal) once the journal is older than `stale_s` (10 min) with
nothing published: the lock is never held across a merge, so a lease-based lock (the
registry's, for a log in object storage) cannot run out under one. An input that cannot be
read (or whose columns do not fit the others) is left where it is and reported; the rest of
the merge and of the log go on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from raymlops.core.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "CompactionResult",
    "compact_log",
    "is_journal",
    "local_compaction_lock",
    "visible_files",
]

_JOURNAL = "_compaction-"
_STAGED = "_compact-"
_OUTPUT = "compact-"
#: Rows per row group of a compacted file: big enough to read fast, small enough that a
#: day's file still splits into read units for parallel readers.
ROW_GROUP_ROWS = 131_072
#: At most this many files, or bytes of them, go into one merge (an output file).
MAX_FILES_PER_MERGE = 4_096
MAX_BYTES_PER_MERGE = 64 * 2**20
#: A journal this old whose output is not published was left by a dead compaction.
STALE_JOURNAL_S = 600.0


@dataclass
class CompactionResult:
    """What one compaction pass did."""

    partitions: int = 0
    files_in: int = 0
    files_out: int = 0
    rows: int = 0
    recovered: int = 0  # journals of killed compactions finished or undone
    seconds: float = 0.0
    merged: list[str] = field(default_factory=list)  # partition folders merged
    skipped: list[str] = field(default_factory=list)  # unreadable or unfitting inputs, left

    def to_dict(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "files_in": self.files_in,
            "files_out": self.files_out,
            "rows": self.rows,
            "recovered": self.recovered,
            "seconds": round(self.seconds, 3),
            "merged": self.merged,
            "skipped": self.skipped,
        }


def _open(root: str) -> tuple[pafs.FileSystem, str]:
    try:
        if "://" in root:
            filesystem, base = pafs.FileSystem.from_uri(root)
            return filesystem, str(base)
        from pathlib import Path

        return pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"cannot open {root}: {exc}") from None


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _listing(filesystem: pafs.FileSystem, base: str) -> list[pafs.FileInfo]:
    if filesystem.get_file_info(base).type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(base, recursive=True)
    return [f for f in filesystem.get_file_info(selector) if f.type == pafs.FileType.File]


def _journals(filesystem: pafs.FileSystem, folders: set[str]) -> dict[str, dict[str, Any]]:
    """The journals in `folders`, by path (one that cannot be read yet is skipped)."""
    paths: list[str] = []
    for folder in sorted(folders):
        with contextlib.suppress(FileNotFoundError, OSError):
            paths += [
                info.path
                for info in filesystem.get_file_info(pafs.FileSelector(folder))
                if info.type == pafs.FileType.File and info.base_name.startswith(_JOURNAL)
            ]
    return _read_journals(filesystem, paths)


def _read_journals(filesystem: pafs.FileSystem, paths: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        with (
            contextlib.suppress(OSError, ValueError),
            filesystem.open_input_stream(path) as stream,
        ):
            found[path] = json.loads(stream.read())
    return found


def is_journal(name: str) -> bool:
    """Whether a file name is a compaction journal (readers pass these to visible_files)."""
    return name.startswith(_JOURNAL) and name.endswith(".json")


def visible_files(
    filesystem: pafs.FileSystem, files: list[str], journals: list[str] | None = None
) -> list[str]:
    """`files` (a listing of a log) less the inputs of merges whose output is published:
    what a reader must read to see every row once, whatever a compaction is doing.
    `journals`: the `_compaction-*.json` paths of the same listing, when the caller has them
    (else each folder of `files` is listed for them)."""
    present = set(files)
    if journals is None:
        found = _journals(filesystem, {f.rsplit("/", 1)[0] for f in files})
    else:
        found = _read_journals(filesystem, journals)
    merged: set[str] = set()
    for path, journal in found.items():
        folder = path.rsplit("/", 1)[0]
        if f"{folder}/{journal['output']}" in present:
            merged.update(f"{folder}/{name}" for name in journal["inputs"])
    return [f for f in files if f not in merged]


def _exists(filesystem: pafs.FileSystem, path: str) -> bool:
    return bool(filesystem.get_file_info(path).type == pafs.FileType.File)


def _delete(filesystem: pafs.FileSystem, paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            if _exists(filesystem, path):
                filesystem.delete_file(path)


def _recover(filesystem: pafs.FileSystem, folders: set[str], stale_s: float) -> int:
    """Settle what other compactions left in `folders`: a journal whose output is published
    is finished (its inputs deleted, then staged copy and journal); one older than `stale_s`
    with nothing published is taken back (staged copy and journal deleted). The number
    settled; live claims are left to their owners."""
    settled = 0
    now = time.time()
    for path, journal in _journals(filesystem, folders).items():
        folder = path.rsplit("/", 1)[0]
        staged = f"{folder}/{journal['staged']}"
        if _exists(filesystem, f"{folder}/{journal['output']}"):
            _delete(filesystem, [f"{folder}/{n}" for n in journal["inputs"]])
        elif now - float(journal.get("created", 0.0)) <= stale_s:
            continue  # a merge in progress
        _delete(filesystem, [staged, path])
        settled += 1
    return settled


def _write_text(filesystem: pafs.FileSystem, path: str, text: str) -> None:
    """Write a small file whole: an object store's put is; a local file is renamed into place."""
    target = path
    if isinstance(filesystem, pafs.LocalFileSystem):
        folder, name = path.rsplit("/", 1)
        path = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())
    if path != target:
        filesystem.move(path, target)


def _claim(
    filesystem: pafs.FileSystem, folder: str, inputs: list[str], stale_s: float
) -> tuple[str, dict[str, Any]] | None:
    """Under the lock: settle the folder, then claim those of `inputs` that still exist and
    no live journal names with a journal of our own; None when fewer than two are left."""
    _recover(filesystem, {folder}, stale_s)
    claimed = {
        f"{folder}/{name}"
        for journal in _journals(filesystem, {folder}).values()
        for name in journal["inputs"]
    }
    free = [p for p in inputs if p not in claimed and _exists(filesystem, p)]
    if len(free) < 2:
        return None
    merge_id = uuid.uuid4().hex
    record = {
        "inputs": [_name(p) for p in free],
        "output": f"{_OUTPUT}{merge_id}.parquet",
        "staged": f"{_STAGED}{merge_id}.staged",
        "created": time.time(),
    }
    journal = f"{folder}/{_JOURNAL}{merge_id}.json"
    _write_text(filesystem, journal, json.dumps(record))
    return journal, record


class _Stream:
    """The staged output, written a row group at a time (rows by timestamp in each)."""

    def __init__(self, filesystem: pafs.FileSystem, path: str) -> None:
        self.filesystem, self.path = filesystem, path
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.pending: list[pa.Table] = []
        self.pending_rows = self.rows = 0

    def fits(self, table: pa.Table) -> pa.Table:
        """`table` in the output's columns (raises when it cannot be)."""
        if self.schema is None:
            self.schema = table.schema
            return table
        return table if table.schema.equals(self.schema) else table.cast(self.schema)

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        if self.pending_rows >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        if "timestamp" in table.column_names:
            table = table.sort_by([("timestamp", "ascending")])
        if self.writer is None:
            assert self.schema is not None
            strings = [
                f.name
                for f in self.schema
                if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            ]
            self.writer = pq.ParquetWriter(
                self.path, self.schema, filesystem=self.filesystem, use_dictionary=strings
            )
        self.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows
        self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()


def _merge(
    filesystem: pafs.FileSystem, journal: str, record: dict[str, Any], skipped: list[str]
) -> tuple[int, int]:
    """Steps 2–4 for a claimed merge: (rows, inputs merged). Inputs that cannot be read or
    do not fit go to `skipped` and stay; the claim is dropped if nothing is left to merge or
    someone took it back meanwhile."""
    folder = journal.rsplit("/", 1)[0]
    staged, output = f"{folder}/{record['staged']}", f"{folder}/{record['output']}"
    stream, merged = _Stream(filesystem, staged), []
    try:
        for name in record["inputs"]:
            try:
                table = stream.fits(pq.read_table(f"{folder}/{name}", filesystem=filesystem))
            except (pa.ArrowException, OSError, ValueError) as exc:
                logger.warning("prediction log compaction: leaving %s/%s: %s", folder, name, exc)
                skipped.append(f"{folder}/{name}")
                continue
            stream.add(table)
            merged.append(name)
        stream.close()
    except Exception:  # (a kill runs no handler: a later compaction takes the claim back)
        _delete(filesystem, [staged, journal])  # nothing published: take the claim back
        raise
    if len(merged) < 2 or not _exists(filesystem, journal):
        _delete(filesystem, [staged, journal])  # too little left, or the claim was taken back
        return 0, 0
    if len(merged) < len(record["inputs"]):  # readers must not hide what stays
        _write_text(filesystem, journal, json.dumps({**record, "inputs": merged}))
    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.move(staged, output)  # an atomic rename
    else:  # an object store's copy makes the object appear whole
        filesystem.copy_file(staged, output)
    _delete(filesystem, [f"{folder}/{name}" for name in merged])
    _delete(filesystem, [staged, journal])
    return stream.rows, len(merged)


def _candidates(
    infos: list[pafs.FileInfo], before: datetime | None
) -> dict[str, list[pafs.FileInfo]]:
    """The published data files per partition folder that a merge may take."""
    groups: dict[str, list[pafs.FileInfo]] = {}
    for info in infos:
        name = info.base_name
        if name.startswith(("_", ".")) or not name.endswith(".parquet"):
            continue
        if before is not None and info.mtime is not None and info.mtime >= before:
            continue
        if (info.size or 0) > MAX_BYTES_PER_MERGE // 2:
            continue  # big enough: rewriting it would cost more than it saves readers
        groups.setdefault(info.path.rsplit("/", 1)[0], []).append(info)
    return groups


def _chunks(infos: list[pafs.FileInfo]) -> Iterator[list[str]]:
    """`infos`' paths in merges of at most MAX_FILES_PER_MERGE files / MAX_BYTES_PER_MERGE."""
    chunk: list[str] = []
    size = 0
    for info in infos:
        if chunk and (
            len(chunk) >= MAX_FILES_PER_MERGE or size + (info.size or 0) > MAX_BYTES_PER_MERGE
        ):
            yield chunk
            chunk, size = [], 0
        chunk.append(info.path)
        size += info.size or 0
    if chunk:
        yield chunk


def compact_log(
    root: str,
    *,
    lock: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    settled_s: float = 0.0,
    min_files: int = 2,
    dry_run: bool = False,
    on_partition: Callable[[str, int], None] | None = None,
    stale_s: float = STALE_JOURNAL_S,
) -> CompactionResult:
    """Merge the part files of every partition of the log at `root` (a model's log folder or
    URI, or any folder above partitions) into one file per partition.

    Files younger than `settled_s` seconds stay as they are (automatic compaction merges
    what finished hours wrote); a partition with fewer than `min_files` mergeable files is
    left alone. `lock` serialises the claims of every compaction of the log (default: a file
    lock in a local log, `local_compaction_lock`, which serving and `raymlops log compact` take
    for a local log too; a log in object storage needs one that holds across machines).
    `on_partition` is told each merged partition and its file count (progress). A journal
    older than `stale_s` with nothing published is taken as left by a dead compaction."""
    started = time.monotonic()
    if lock is None:
        lock = local_compaction_lock(root)
    filesystem, base = _open(root)
    result = CompactionResult()
    before = datetime.now(timezone.utc) - timedelta(seconds=settled_s) if settled_s > 0 else None
    infos = _listing(filesystem, base)
    if not dry_run:
        with lock():
            folders = {i.path.rsplit("/", 1)[0] for i in infos if is_journal(i.base_name)}
            result.recovered = _recover(filesystem, folders, stale_s)
        if result.recovered:
            infos = _listing(filesystem, base)
    for folder, group in sorted(_candidates(infos, before).items()):
        if len(group) < min_files:
            continue
        result.partitions += 1
        result.merged.append(folder[len(base) :].lstrip("/") or ".")
        ordered = sorted(
            group, key=lambda i: (i.mtime or datetime.min.replace(tzinfo=timezone.utc), i.path)
        )
        for chunk in _chunks(ordered):
            if len(chunk) < 2:
                continue
            if dry_run:
                result.files_in, result.files_out = (
                    result.files_in + len(chunk),
                    result.files_out + 1,
                )
                continue
            with lock():  # only while claiming: a merge runs unlocked (module docstring)
                claim = _claim(filesystem, folder, chunk, stale_s)
            if claim is None:
                continue  # merged or claimed by another compaction since the listing
            try:
                rows, files = _merge(filesystem, *claim, result.skipped)
            except (pa.ArrowException, OSError) as exc:  # this merge only: the rest goes on
                logger.warning("prediction log compaction of %s failed: %s", folder, exc)
                continue
            if files:
                result.rows += rows
                result.files_in, result.files_out = result.files_in + files, result.files_out + 1
        if on_partition is not None:
            on_partition(folder, len(group))
    result.seconds = time.monotonic() - started
    return result


def local_compaction_lock(root: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A file lock next to a local log (`<root>/_compaction.lock`); an object-store log
    needs a lock that holds across machines, so it is refused here."""
    if "://" in root and not root.startswith("file://"):
        raise DataError(
            f"compacting {root} needs a lock that holds across machines: "
            "run `raymlops log compact` with the config (it uses the registry's lock)"
        )

    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        from pathlib import Path

        from filelock import FileLock

        _, base = _open(root)
        Path(base).mkdir(parents=True, exist_ok=True)
        with FileLock(f"{base}/_compaction.lock", timeout=600):
            yield

    return hold
