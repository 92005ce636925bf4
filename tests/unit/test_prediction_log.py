"""The prediction log writer: the fixed layout and schema monitoring reads, batching off the
request path, the memory bound and the flush window, and what a writer's end costs (SIGTERM
writes everything; SIGKILL's loss is counted by another writer from the ledger)."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymlops.serve.api import read_prediction_log
from raymlops.serve.log_ledger import Ledger, claim_dead_ledgers
from raymlops.serve.prediction_log import LogChunk, PredictionLogWriter, log_schema, read_log


def _chunk(request_id: str, version: int = 1, rows: int = 1, role: str = "champion") -> LogChunk:
    return LogChunk(
        request_id=request_id,
        timestamp=time.time(),
        version=version,
        role=role,
        latency_ms=1.5,
        columns={
            "a": np.arange(rows, dtype=np.float64),
            "colour": np.array(["red"] * (rows - 1) + [None], dtype=object),
        },
        predictions=np.array(["yes"] * rows, dtype=object),
        probabilities=np.full((rows, 2), 0.5),
    )


@pytest.fixture
def writer(tmp_path: Path) -> PredictionLogWriter:
    log = PredictionLogWriter(str(tmp_path / "predictions"), "m", flush_interval_s=60)
    log.register_version(1, ["a"], ["colour"], ["no", "yes"])
    log.register_version(2, ["a"], ["colour"], ["no", "yes"])
    return log


def test_layout_schema_and_round_trip(tmp_path: Path, writer: PredictionLogWriter) -> None:
    writer.append(_chunk("r1", rows=2))
    writer.append(_chunk("r2", version=2, role="challenger"))
    writer.append(_chunk("r3", version=2, role="shadow"))
    assert writer.flush() == 4
    files = sorted((tmp_path / "predictions" / "m").rglob("*.parquet"))
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert [f.parent.relative_to(tmp_path / "predictions" / "m").as_posix() for f in files] == [
        f"date={day}/version=1",
        f"date={day}/version=2",
    ]
    assert all(f.name.startswith("part-") for f in files)
    schema = pq.read_schema(files[0])
    assert schema.names == [
        "request_id", "timestamp", "model_name", "model_version", "role", "latency_ms",
        "error", "a", "colour", "prediction", "proba_no", "proba_yes",
    ]  # fmt: skip
    assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert schema.field("model_version").type == pa.int64()
    assert schema.field("latency_ms").type == pa.float64()
    assert schema.field("colour").type == pa.string()

    table = read_prediction_log(tmp_path / "predictions" / "m")
    assert table.num_rows == 4
    assert table.column("request_id").to_pylist() == ["r1", "r1", "r2", "r3"]
    assert table.column("role").to_pylist() == ["champion", "champion", "challenger", "shadow"]
    assert table.column("model_version").to_pylist() == [1, 1, 2, 2]
    assert table.column("a").to_pylist() == [0.0, 1.0, 0.0, 0.0]
    assert table.column("colour").to_pylist() == ["red", None, None, None]
    assert set(table.column("model_name").to_pylist()) == {"m"}
    assert read_log(str(tmp_path / "predictions" / "m"), since=time.time() + 60).num_rows == 0


def test_regression_schema_has_a_float_prediction() -> None:
    schema = log_schema(["x"], [], None)
    assert schema.field("prediction").type == pa.float64()
    assert not [n for n in schema.names if n.startswith("proba_")]


def test_background_flush_bounds_the_loss_window(tmp_path: Path) -> None:
    log = PredictionLogWriter(str(tmp_path), "m", flush_interval_s=0.2)
    log.register_version(1, ["a"], ["colour"], ["no", "yes"])
    log.append(_chunk("r1"))
    deadline = time.monotonic() + 5
    while log.written_rows < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.written_rows == 1  # written by the thread, nobody called flush()
    log.close()


def test_row_threshold_triggers_a_flush(tmp_path: Path) -> None:
    log = PredictionLogWriter(str(tmp_path), "m", flush_interval_s=60, max_rows_per_flush=10)
    log.register_version(1, ["a"], ["colour"], ["no", "yes"])
    log.append(_chunk("big", rows=10))
    deadline = time.monotonic() + 5
    while log.written_rows < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.written_rows == 10
    log.close()


def test_buffer_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = PredictionLogWriter(
        str(tmp_path), "m", flush_interval_s=60, max_rows_per_flush=5,
        max_buffered_rows=5, on_dropped=dropped.append,
    )  # fmt: skip
    log._stop.set()  # a writer that has fallen behind: nothing drains the buffer
    log._wake.set()
    log._thread.join(5)
    log.register_version(1, ["a"], ["colour"], ["no", "yes"])
    assert log.append(_chunk("a", rows=3))
    assert not log.append(_chunk("b", rows=3))
    assert log.append(_chunk("c", rows=2))
    assert (log.dropped_rows, dropped) == (3, [3])
    log.close()
    assert read_prediction_log(tmp_path / "m").column("request_id").to_pylist() == [
        "a", "a", "a", "c", "c",
    ]  # fmt: skip


def test_close_writes_what_is_left(tmp_path: Path) -> None:
    log = PredictionLogWriter(str(tmp_path), "m", flush_interval_s=60)
    log.register_version(1, ["a"], ["colour"], ["no", "yes"])
    for i in range(3):
        log.append(_chunk(f"r{i}"))
    log.close()
    assert read_prediction_log(tmp_path / "m").num_rows == 3


def test_missing_log_reads_as_an_empty_table(tmp_path: Path) -> None:
    assert read_prediction_log(tmp_path / "nothing").num_rows == 0


def test_files_being_written_are_hidden_from_readers(
    tmp_path: Path, writer: PredictionLogWriter
) -> None:
    writer.append(_chunk("r1"))
    writer.flush()
    [folder] = {f.parent for f in (tmp_path / "predictions" / "m").rglob("part-*.parquet")}
    assert not list(folder.glob(".*"))  # the writer's temporary name is gone
    (folder / ".part-unfinished.parquet").write_bytes(b"PAR1 half a file")
    (folder / "_part-other.parquet").write_bytes(b"")
    assert read_prediction_log(tmp_path / "predictions" / "m").num_rows == 1


def test_a_failed_request_is_logged_with_its_error(
    tmp_path: Path, writer: PredictionLogWriter
) -> None:
    """Rows the model failed on keep their inputs and the error, with no prediction: what
    the monitor's error-rate KPI counts."""
    writer.append(_chunk("ok", rows=2))
    failed = LogChunk(
        request_id="bad",
        timestamp=time.time(),
        version=1,
        role="champion",
        latency_ms=3.0,
        columns={"a": np.array([7.0]), "colour": np.array(["blue"], dtype=object)},
        predictions=np.array([None], dtype=object),
        probabilities=None,
        error="prediction failed (RuntimeError)",
    )
    writer.append(failed)
    writer.flush()
    table = read_prediction_log(tmp_path / "predictions" / "m")
    assert table.column("error").to_pylist() == [None, None, "prediction failed (RuntimeError)"]
    assert table.column("prediction").to_pylist() == ["yes", "yes", None]
    assert math.isnan(table.column("proba_yes").to_pylist()[2])
    assert table.column("a").to_pylist()[2] == 7.0


# --------------------------------------------------------------------------- a writer's end

# A writer in a process of its own: it logs `flushed` one-row requests and writes them, logs
# `held` more and keeps them buffered, says "ready", then waits to be signalled. With
# `ray_sigterm`, SIGTERM raises SystemExit as Ray's worker's handler does.
_CHILD = """
import signal, sys, time
import numpy as np
from raymlops.serve.prediction_log import LogChunk, PredictionLogWriter

root, ledgers, flushed, held, ray_sigterm = sys.argv[1:6]
if ray_sigterm == "1":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
log = PredictionLogWriter(root, "m", flush_interval_s=60, ledger_root=ledgers, owner="child")
log.register_version(1, ["a"], [], ["no", "yes"])

def chunk(i):
    return LogChunk(f"r{i}", time.time(), 1, "champion", 1.0, {"a": np.array([float(i)])},
                    np.array(["yes"], dtype=object), np.array([[0.5, 0.5]]))

for i in range(int(flushed)):
    log.append(chunk(i))
log.flush()
for i in range(int(flushed), int(flushed) + int(held)):
    log.append(chunk(i))
print("ready", flush=True)
time.sleep(60)
"""


def _child(tmp_path: Path, flushed: int, held: int, ray_sigterm: bool) -> subprocess.Popen[str]:
    args = [str(tmp_path / "log"), str(tmp_path / "ledgers"), str(flushed), str(held)]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args, "1" if ray_sigterm else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def _ledgers(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "ledgers").glob("*/*.ledger"))


def test_a_killed_writers_buffered_rows_are_counted_by_another_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL loses the buffered rows; the next writer of the log on this node counts
    exactly those from the dead writer's ledger, once, and removes the ledger."""
    # The survivor's thread scans once as it starts (nothing to find yet), then never: the
    # test's own calls are the only ones that can count.
    monkeypatch.setattr("raymlops.serve.prediction_log.DEAD_WRITER_SCAN_S", 3600.0)
    lost: list[int] = []
    survivor = PredictionLogWriter(
        str(tmp_path / "log"), "m", flush_interval_s=60, ledger_root=tmp_path / "ledgers",
        on_lost=lost.append,
    )  # fmt: skip
    child = _child(tmp_path, flushed=5, held=7, ray_sigterm=False)
    assert len(_ledgers(tmp_path)) == 2
    assert survivor.count_dead_writers() == 0  # alive: its ledger is left alone
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert read_prediction_log(tmp_path / "log" / "m").num_rows == 5
    assert survivor.count_dead_writers() == 7
    assert (lost, survivor.counted_lost_rows) == ([7], 7)
    assert survivor.count_dead_writers() == 0  # counted once
    assert len(_ledgers(tmp_path)) == 1  # the survivor's own
    survivor.close()
    assert _ledgers(tmp_path) == []  # a writer that closes removes its ledger


def test_sigterm_writes_what_the_writer_holds(tmp_path: Path) -> None:
    """SIGTERM as Ray's workers handle it (SystemExit): the atexit hook writes the buffer,
    and the ledger goes with it (nothing to count)."""
    child = _child(tmp_path, flushed=5, held=7, ray_sigterm=True)
    child.send_signal(signal.SIGTERM)
    assert child.wait(30) == 1
    assert read_prediction_log(tmp_path / "log" / "m").num_rows == 12
    assert _ledgers(tmp_path) == []


@pytest.mark.parametrize(("published", "lost"), [(True, 2), (False, 5)])
def test_a_file_being_published_at_the_kill_counts_as_lost_only_if_unpublished(
    tmp_path: Path, published: bool, lost: int
) -> None:
    folder = tmp_path / "ledgers"
    ledger = Ledger.create(folder, "dead")
    assert ledger is not None
    ledger.accepted(5)
    ledger.begin("date=2026-01-01/version=1/part-x.parquet", 3)
    ledger.close()  # 5 unsettled: left in place, and unlocked as by the owner's death
    asked: list[str] = []

    def is_published(path: str) -> bool:
        asked.append(path)
        return published

    [dead] = claim_dead_ledgers(folder, is_published)
    assert (dead.owner, dead.lost_rows) == ("dead", lost)
    assert asked == ["date=2026-01-01/version=1/part-x.parquet"]
    assert list(folder.iterdir()) == []


def test_rows_after_close_are_written_at_once(tmp_path: Path) -> None:
    """What a replica logs after its writer closed (a shadow answer finishing late) is
    written in the caller's thread, not lost."""
    log = PredictionLogWriter(
        str(tmp_path), "m", flush_interval_s=60, ledger_root=tmp_path / "ledgers"
    )
    log.register_version(1, ["a"], ["colour"], ["no", "yes"])
    log.append(_chunk("before", rows=2))
    log.close()
    assert read_prediction_log(tmp_path / "m").num_rows == 2
    assert log.append(_chunk("after"))
    assert read_prediction_log(tmp_path / "m").num_rows == 3
    assert list((tmp_path / "ledgers").glob("*/*.ledger")) == []
