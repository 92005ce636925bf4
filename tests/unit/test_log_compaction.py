"""Prediction-log compaction: one file per partition, every row exactly once — after a
compaction, while one runs beside a writer, and after one killed at any step."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raymlops.data import log_compaction
from raymlops.data.log_compaction import compact_log, visible_files
from raymlops.serve.prediction_log import LogChunk, PredictionLogWriter, read_log

MODEL = "m"


def _chunk(rows: int, version: int = 1, stamp: float | None = None) -> LogChunk:
    rng = np.random.default_rng(rows)
    return LogChunk(
        request_id=uuid.uuid4().hex,
        timestamp=time.time() if stamp is None else stamp,
        version=version,
        role="champion",
        latency_ms=1.0,
        columns={
            "x": rng.normal(size=rows),
            "c": np.array(["a", "b"] * (rows // 2) + ["a"] * (rows % 2), dtype=object),
        },
        predictions=rng.normal(size=rows),
        probabilities=None,
    )


def _writer(root: Path) -> PredictionLogWriter:
    writer = PredictionLogWriter(str(root), MODEL, flush_interval_s=60)
    writer.register_version(1, ["x"], ["c"], None)
    writer.register_version(2, ["x"], ["c"], None)
    return writer


def _log(tmp_path: Path, files: int, rows: int = 7) -> tuple[Path, list[str]]:
    """A log of `files` part files over two days and two versions; its request ids."""
    writer = _writer(tmp_path)
    ids = []
    yesterday = time.time() - 86_400
    for i in range(files):
        chunk = _chunk(rows, version=1 + i % 2, stamp=yesterday if i % 3 == 0 else None)
        ids += [chunk.request_id] * rows
        writer.append(chunk)
        writer.flush()
    writer.close()
    return tmp_path / MODEL, ids


def _parts(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith(("_", ".")))


def _ids(root: Path) -> list[str]:
    table = read_log(str(root))
    return sorted(table.column("request_id").to_pylist()) if table.num_columns else []


def test_compaction_leaves_one_file_per_partition_and_every_row_once(tmp_path: Path) -> None:
    root, ids = _log(tmp_path, files=24)
    partitions = {p.parent for p in _parts(root)}
    assert len(partitions) == 4 and len(_parts(root)) == 24
    before = read_log(str(root))

    result = compact_log(str(root))

    assert result.files_in == 24 and result.files_out == 4 and result.rows == len(ids)
    assert {p.parent for p in _parts(root)} == partitions
    assert len(_parts(root)) == 4 and all(p.name.startswith("compact-") for p in _parts(root))
    after = read_log(str(root))
    assert _ids(root) == sorted(ids)
    assert after.schema == before.schema
    for name in ("x", "prediction", "c"):
        assert sorted(after.column(name).to_pylist(), key=str) == sorted(
            before.column(name).to_pylist(), key=str
        )
    assert not list(root.rglob("_compaction-*")) and not list(root.rglob("_compact-*"))
    # A second pass finds one file per partition: nothing to do.
    assert compact_log(str(root)).files_in == 0


def test_young_files_hidden_files_and_small_partitions_stay(tmp_path: Path) -> None:
    root, ids = _log(tmp_path, files=12)
    hidden = next(iter(_parts(root))).parent / ".part-x.parquet.tmp"
    hidden.write_bytes(b"being written")
    assert compact_log(str(root), settled_s=3600).files_in == 0  # all written just now
    assert compact_log(str(root), min_files=100).files_in == 0
    assert compact_log(str(root), dry_run=True).files_out == 4
    assert len(_parts(root)) == 12
    compact_log(str(root))
    assert hidden.read_bytes() == b"being written"
    assert _ids(root) == sorted(ids)


def test_two_compactions_beside_a_writer_lose_and_repeat_nothing(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    root = tmp_path / MODEL
    ids: list[str] = []
    done = threading.Event()

    def write() -> None:
        for i in range(150):
            chunk = _chunk(3 + i % 5, version=1 + i % 2)
            ids.extend([chunk.request_id] * chunk.rows)
            writer.append(chunk)
            if i % 3 == 0:
                writer.flush()
        writer.close()
        done.set()

    def compact() -> None:  # a second compaction of the same log, all along
        while not done.is_set():
            compact_log(str(root))

    thread, other = threading.Thread(target=write), threading.Thread(target=compact)
    thread.start()
    other.start()
    passes = 0
    seen = 0
    while not done.is_set() or passes == 0:
        passes += compact_log(str(root)).files_in > 0
        read = Counter(_ids(root))
        written = Counter(ids)  # ids are recorded before their rows are appended
        assert not read - written, "a row read twice"
        assert read.total() >= seen  # and never a row vanishing
        seen = read.total()
    thread.join()
    other.join()
    compact_log(str(root))
    assert passes >= 1
    assert _ids(root) == sorted(ids)
    assert len(_parts(root)) == 2


class _Killed(BaseException):
    """A kill: no handler of the compaction runs (an Exception would be cleaned up)."""


@pytest.mark.parametrize("step", ["journal", "staged", "published", "inputs deleted"])
def test_a_compaction_killed_at_any_step_keeps_every_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    root, ids = _log(tmp_path, files=12)
    real_write_text, real_delete = log_compaction._write_text, log_compaction._delete
    real_close = log_compaction._Stream.close
    deletes = {"n": 0}

    def write_text(*args: Any) -> None:
        if step == "journal":
            raise _Killed
        real_write_text(*args)

    def close(stream: Any) -> None:
        real_close(stream)
        if step == "staged":
            raise _Killed

    def delete(filesystem: Any, paths: list[str]) -> None:
        if not paths or "/_" in paths[0]:  # recovery's or the staged file and journal
            real_delete(filesystem, paths)
            return
        deletes["n"] += 1  # a merge's inputs
        if step == "published" and deletes["n"] == 1:
            real_delete(filesystem, paths[:1])  # killed while removing the inputs
            raise _Killed
        real_delete(filesystem, paths)
        if step == "inputs deleted" and deletes["n"] == 1:
            raise _Killed

    monkeypatch.setattr(log_compaction, "_write_text", write_text)
    monkeypatch.setattr(log_compaction._Stream, "close", close)
    monkeypatch.setattr(log_compaction, "_delete", delete)
    with pytest.raises(_Killed):
        compact_log(str(root))
    monkeypatch.undo()

    assert _ids(root) == sorted(ids)  # readers, before any recovery
    if step == "staged":  # a claim younger than stale_s is a merge in progress: left alone
        assert compact_log(str(root)).recovered == 0
        assert len(list(root.rglob("_compaction-*"))) == 1
    result = compact_log(str(root), stale_s=0)  # later: the dead compaction's claim is stale
    assert result.recovered == (0 if step == "journal" else 1)
    assert _ids(root) == sorted(ids)
    assert not list(root.rglob("_compaction-*")) and not list(root.rglob("_compact-*"))
    compact_log(str(root))
    assert len(_parts(root)) == 4 and _ids(root) == sorted(ids)


def test_a_claimed_merge_is_left_to_its_owner_and_a_taken_back_one_never_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, ids = _log(tmp_path, files=12)
    claims: list[tuple[str, dict[str, Any]]] = []
    real_claim = log_compaction._claim

    def claim_and_stop(*args: Any) -> tuple[str, dict[str, Any]] | None:
        claimed = real_claim(*args)
        if claimed is not None:
            claims.append(claimed)
        return None  # as if this compaction were still merging them, elsewhere

    monkeypatch.setattr(log_compaction, "_claim", claim_and_stop)
    compact_log(str(root))
    monkeypatch.undo()
    assert len(claims) == 4
    # Another compaction meanwhile: every input is claimed by a live journal.
    assert compact_log(str(root)).files_in == 0 and len(_parts(root)) == 12
    # One claim is taken back (as a stale one would be): its owner must not publish it.
    journal, record = claims[0]
    Path(journal).unlink()
    assert log_compaction._merge(log_compaction._open(str(root))[0], journal, record, []) == (
        0,
        0,
    )
    assert not list(Path(journal).parent.glob("compact-*")) and _ids(root) == sorted(ids)
    # The others finish; the taken-back partition is merged by the next compaction.
    for journal, record in claims[1:]:
        assert log_compaction._merge(log_compaction._open(str(root))[0], journal, record, [])[1]
    compact_log(str(root))
    assert len(_parts(root)) == 4 and _ids(root) == sorted(ids)


def test_an_unreadable_file_is_left_and_the_rest_merged(tmp_path: Path) -> None:
    root, _ = _log(tmp_path, files=12)
    folder = _parts(root)[0].parent
    bad = folder / "part-corrupt.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    result = compact_log(str(root))
    assert result.skipped == [str(bad)] and bad.exists()
    assert result.files_out == 4 and result.files_in == 12
    assert bad in _parts(root) and len(_parts(root)) == 5


def test_visible_files_drops_only_the_inputs_of_published_merges(tmp_path: Path) -> None:
    from pyarrow import fs as pafs

    folder = tmp_path / "date=2026-01-01" / "version=1"
    folder.mkdir(parents=True)
    for name in ("a.parquet", "b.parquet", "compact-1.parquet", "c.parquet"):
        (folder / name).write_bytes(b"")
    (folder / "_compaction-1.json").write_text(
        '{"inputs": ["a.parquet", "b.parquet"], "output": "compact-1.parquet", "staged": "x"}'
    )
    (folder / "_compaction-2.json").write_text(
        '{"inputs": ["c.parquet"], "output": "compact-2.parquet", "staged": "y"}'
    )
    files = [str(folder / n) for n in ("a.parquet", "b.parquet", "c.parquet", "compact-1.parquet")]
    kept = visible_files(pafs.LocalFileSystem(), files)
    assert [Path(f).name for f in kept] == ["c.parquet", "compact-1.parquet"]


def test_a_log_in_object_storage_needs_a_lock_from_the_caller() -> None:
    from raymlops.core.errors import DataError

    with pytest.raises(DataError, match="lock that holds across machines"):
        compact_log("s3://bucket/predictions/m")


def test_a_writer_compacts_its_log_periodically(tmp_path: Path) -> None:
    writer = PredictionLogWriter(str(tmp_path), MODEL, flush_interval_s=60, compact_every_s=0.3)
    writer.register_version(1, ["x"], ["c"], None)
    root = tmp_path / MODEL
    ids: list[str] = []
    for _ in range(6):
        chunk = _chunk(5)
        ids += [chunk.request_id] * chunk.rows
        writer.append(chunk)
        writer.flush()
    assert len(_parts(root)) == 6
    deadline = time.monotonic() + 30
    while writer.compactions == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    writer.close()
    assert writer.compactions >= 1
    assert len(_parts(root)) == 1 and _ids(root) == sorted(ids)


def test_log_compact_command(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from raymlops.cli import cli

    home = tmp_path / "home"
    root, ids = _log(home / "predictions", files=12)
    args = ["log", "compact", "--home", str(home), "--set", f"registry.model_name={MODEL}"]
    dry = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would merge 12 files into 4 in 4 partitions" in dry.output
    assert len(_parts(root)) == 12
    done = CliRunner().invoke(cli, [*args, "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert (result["files_in"], result["files_out"], result["rows"]) == (12, 4, len(ids))
    assert len(_parts(root)) == 4 and _ids(root) == sorted(ids)
