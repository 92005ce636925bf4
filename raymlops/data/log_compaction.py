"""Compaction of a prediction log: many small part files into one file per partition.

Serving writes one small Parquet file per flush and replica (a busy endpoint writes
thousands a day), and every reader pays per file. Compaction merges the files of one
`date=…/version=…` partition into one `compact-<id>.parquet` (rows sorted by timestamp,
row groups sized for parallel reads) and removes the files it merged.

Files serving publishes are never written again (a part file appears complete or not at
all), so any published file may be merged, also in today's partition; what is still being
written is a hidden `.….tmp` file or an unfinished object, which no listing returns.

Exactly once, through a crash at any point and on object stores without rename: under the
log's compaction lock each merge is

1. a journal `_compaction-<id>.json` in the partition naming the inputs and the output,
2. the output written as `_compact-<id>.staged` (hidden from readers),
3. the output published as `compact-<id>.parquet`,
4. the inputs deleted, then the staged copy and the journal.

Readers (`visible_files`) drop the inputs of every journal whose output is published, so a
reader sees each row once at every step; the next compaction finishes (output published)
or undoes (not published) what a killed one left. Only one compaction of a log may run at
a time: the caller passes the lock (a file lock for a local log; serving and the CLI use
the registry's lock for a log in object storage).
"""

from __future__ import annotations

import contextlib
import json
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

__all__ = [
    "CompactionResult",
    "compact_log",
    "local_compaction_lock",
    "visible_files",
]

_JOURNAL = "_compaction-"
_STAGED = "_compact-"
_OUTPUT = "compact-"
#: Rows per row group of a compacted file: big enough to read fast, small enough that a
#: day's file still splits into read units for parallel readers.
ROW_GROUP_ROWS = 131_072
#: At most this many files, or bytes of them, go into one merge: a merge holds its rows in
#: memory, and the lock only seconds.
MAX_FILES_PER_MERGE = 4_096
MAX_BYTES_PER_MERGE = 64 * 2**20


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "files_in": self.files_in,
            "files_out": self.files_out,
            "rows": self.rows,
            "recovered": self.recovered,
            "seconds": round(self.seconds, 3),
            "merged": self.merged,
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
    found: dict[str, dict[str, Any]] = {}
    for folder in sorted(folders):
        with contextlib.suppress(FileNotFoundError, OSError):
            for info in filesystem.get_file_info(pafs.FileSelector(folder)):
                if info.type == pafs.FileType.File and info.base_name.startswith(_JOURNAL):
                    with (
                        contextlib.suppress(OSError, ValueError),
                        filesystem.open_input_stream(info.path) as stream,
                    ):
                        found[info.path] = json.loads(stream.read())
    return found


def visible_files(filesystem: pafs.FileSystem, files: list[str]) -> list[str]:
    """`files` (a listing of a log) less the inputs of merges whose output is published:
    what a reader must read to see every row once, whatever a compaction is doing."""
    present = set(files)
    folders = {f.rsplit("/", 1)[0] for f in files}
    merged: set[str] = set()
    for path, journal in _journals(filesystem, folders).items():
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


def _recover(filesystem: pafs.FileSystem, infos: list[pafs.FileInfo]) -> int:
    """Finish (output published) or undo (not published) what killed compactions left;
    remove staged files no journal names."""
    folders = {i.path.rsplit("/", 1)[0] for i in infos}
    journals = _journals(filesystem, folders)
    named: set[str] = set()
    for path, journal in journals.items():
        folder = path.rsplit("/", 1)[0]
        staged = f"{folder}/{journal['staged']}"
        named.add(staged)
        if _exists(filesystem, f"{folder}/{journal['output']}"):
            _delete(filesystem, [f"{folder}/{n}" for n in journal["inputs"]])
        _delete(filesystem, [staged, path])
    orphans = [i.path for i in infos if i.base_name.startswith(_STAGED) and i.path not in named]
    _delete(filesystem, orphans)
    return len(journals)


def _write_text(filesystem: pafs.FileSystem, path: str, text: str) -> None:
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())


def _merge(filesystem: pafs.FileSystem, folder: str, inputs: list[str]) -> int:
    """One merge of `inputs` (paths in `folder`) by the journal protocol; the rows merged."""
    tables = [pq.read_table(path, filesystem=filesystem) for path in inputs]
    table = pa.concat_tables(tables, promote_options="default")
    if "timestamp" in table.column_names:
        table = table.sort_by([("timestamp", "ascending")])
    merge_id = uuid.uuid4().hex
    output, staged = f"{_OUTPUT}{merge_id}.parquet", f"{_STAGED}{merge_id}.staged"
    journal = f"{folder}/{_JOURNAL}{merge_id}.json"
    record = {"inputs": [_name(p) for p in inputs], "output": output, "staged": staged}
    _write_text(filesystem, journal, json.dumps(record))
    strings = [
        f.name
        for f in table.schema
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    pq.write_table(
        table,
        f"{folder}/{staged}",
        filesystem=filesystem,
        row_group_size=ROW_GROUP_ROWS,
        use_dictionary=strings,
    )
    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.move(f"{folder}/{staged}", f"{folder}/{output}")  # an atomic rename
    else:  # an object store's copy makes the object appear whole
        filesystem.copy_file(f"{folder}/{staged}", f"{folder}/{output}")
    _delete(filesystem, inputs)
    _delete(filesystem, [f"{folder}/{staged}", journal])
    return int(table.num_rows)


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
) -> CompactionResult:
    """Merge the part files of every partition of the log at `root` (a model's log folder or
    URI, or any folder above partitions) into one file per partition.

    Files younger than `settled_s` seconds stay as they are (automatic compaction merges
    what finished hours wrote); a partition with fewer than `min_files` mergeable files is
    left alone. `lock` keeps a second compaction of the same log out of each merge (default: a
    file lock in a local log; required for a log in object storage). `on_partition` is told each
    merged partition and its file count (progress)."""
    started = time.monotonic()
    if lock is None:
        lock = local_compaction_lock(root)
    filesystem, base = _open(root)
    result = CompactionResult()
    before = datetime.now(timezone.utc) - timedelta(seconds=settled_s) if settled_s > 0 else None
    infos = _listing(filesystem, base)
    if not dry_run:
        with lock():
            result.recovered = _recover(filesystem, infos)
        if result.recovered:
            infos = _listing(filesystem, base)
    for folder, group in sorted(_candidates(infos, before).items()):
        if len(group) < min_files:
            continue
        result.partitions += 1
        result.merged.append(folder[len(base) :].lstrip("/") or ".")
        for chunk in _chunks(sorted(group, key=lambda i: i.path)):
            if len(chunk) < 2:
                continue
            if dry_run:
                result.files_in, result.files_out = (
                    result.files_in + len(chunk),
                    result.files_out + 1,
                )
                continue
            # The lock is held per merge (seconds), so a lease-based lock never runs out
            # mid-merge; under it, what another compactor did meanwhile is settled first.
            with lock():
                _recover(filesystem, _listing(filesystem, folder))
                if not all(_exists(filesystem, path) for path in chunk):
                    continue  # merged by another compaction since the listing
                result.rows += _merge(filesystem, folder, chunk)
            result.files_in, result.files_out = result.files_in + len(chunk), result.files_out + 1
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
