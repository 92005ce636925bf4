"""The prediction log writer: the fixed layout and schema monitoring reads, batching off the
request path, the memory bound and the flush window."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymlops.serve.api import read_prediction_log
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
