"""`raymlops batch` on a small input without Ray (`batch.executor: auto` → in this process):
the same units, the same exactly-once output and MLflow record as on an actor pool, and no
Ray started. The actor-pool path is tested in test_batch.py (its module joins a Ray)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raymlops.batch.run import run_batch
from raymlops.core.config import PipelineConfig
from raymlops.core.errors import DataError, UserInputError
from raymlops.registry.store import Registry, load_predictor

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # batch_support is imported as tests.integration.batch_support
    sys.path.insert(0, str(REPO))

from tests.integration import batch_support  # noqa: E402
from tests.integration.batch_support import batch_config, read_output  # noqa: E402

ROWS, FILES = 6_000, 3
# Trains and registers a model (~10 s on a quiet machine): the long pass has room for it.
pytestmark = [pytest.mark.integration, pytest.mark.long]


# The shared fixtures of batch_support: a registry home, 6,000 rows in 3 Parquet files and
# version 1 (champion) of 'bl', an MLP trained on them (executor auto).
INPUT = {"rows": ROWS, "features": 4, "categorical": 2, "seed": 5}
MODEL = ("bl", {})
home, data, model = batch_support.home, batch_support.data, batch_support.model


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def test_a_small_input_runs_in_this_process_every_row_once(
    tmp_path: Path, home: Path, data: Path, model: PipelineConfig
) -> None:
    assert not _ray_started()
    out = tmp_path / "preds"
    result = run_batch(model, str(data), str(out), home=home, echo=False)

    assert not _ray_started()  # no local Ray was started for it
    assert result.plan is not None and result.plan.in_process
    cpus = len(os.sched_getaffinity(0))
    assert result.plan.actors == min(cpus, FILES) and result.ray_start_s == 0.0
    assert (result.rows_in, result.rows_out, result.units_run) == (ROWS, ROWS, FILES)
    rows = read_output(out).sort_values("id").reset_index(drop=True)
    assert rows["id"].is_unique and len(rows) == ROWS
    source = pq.read_table(data).to_pandas().sort_values("id").reset_index(drop=True)
    direct = load_predictor("bl", "champion", home=home).predict(source).to_frame()
    assert rows["prediction"].tolist() == direct["prediction"].tolist()
    np.testing.assert_allclose(rows["proba_1"], direct["proba_1"], rtol=1e-6, atol=1e-7)
    run = Registry(home=home).client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["in_process"] == "1"

    # A rerun after one unit's output was lost redoes that unit only.
    (out / "part-00001.parquet").unlink()
    again = run_batch(model, str(data), str(out), home=home, echo=False)
    assert (again.units_run, again.units_skipped, again.rows_out) == (1, FILES - 1, ROWS)
    assert read_output(out)["id"].is_unique and len(read_output(out)) == ROWS


def test_a_bad_row_fails_naming_file_and_row(
    tmp_path: Path, home: Path, data: Path, model: PipelineConfig
) -> None:
    frame = pq.read_table(data).to_pandas().head(50)
    frame["f1"] = frame["f1"].astype(str)
    frame.loc[7, "f1"] = "not a number"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"bad\.csv: row 7"):
        run_batch(model, str(bad), str(tmp_path / "out"), home=home, echo=False)
    assert not list((tmp_path / "out").glob("part-*.parquet"))


def test_a_small_input_with_a_cluster_named_runs_here_without_joining_it(
    tmp_path: Path,
    home: Path,
    data: Path,
    model: PipelineConfig,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--address, or a job driver's RAY_ADDRESS, to a Ray that is not there: a small input's
    units run here and the run succeeds, so the cluster was never joined; a line says so."""
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("RAY_ADDRESS", nowhere)
    for i, address in enumerate([nowhere, None]):
        out = tmp_path / f"preds-{i}"
        result = run_batch(model, str(data), str(out), home=home, address=address)
        assert not _ray_started()
        assert result.plan is not None and result.plan.in_process
        assert (result.rows_out, result.units_run) == (ROWS, FILES)
        assert read_output(out)["id"].is_unique
        shown = "".join(capsys.readouterr())
        assert f"not on the cluster at {nowhere}" in shown, shown


def test_executor_local_refuses_a_cluster_address(tmp_path: Path, home: Path, data: Path) -> None:
    config = batch_config("bl", data, executor="local")
    with pytest.raises(UserInputError, match="drop --address"):
        run_batch(config, str(data), str(tmp_path / "o"), home=home, address="auto", echo=False)


def test_auto_runs_a_small_input_here_even_when_a_cluster_is_named(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Joining a running Ray costs an actor pool's start (~8 s) that a small input never
    wins back: auto decides by size and GPUs alone; `executor: ray` keeps the cluster."""
    from types import SimpleNamespace

    from raymlops.batch.run import _in_process

    config = batch_config("bl", data)
    cpu, gpu = SimpleNamespace(gpus_per_actor=0.0), SimpleNamespace(gpus_per_actor=1.0)
    small = SimpleNamespace(files=[SimpleNamespace(size=1_000)])
    big = SimpleNamespace(files=[SimpleNamespace(size=600 * 2**20)])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _in_process(config, cpu, small, None)  # type: ignore[arg-type]
    assert _in_process(config, cpu, small, "auto")  # type: ignore[arg-type]
    assert not _in_process(config, cpu, big, None)  # type: ignore[arg-type]
    assert not _in_process(config, cpu, big, "auto")  # type: ignore[arg-type]
    assert not _in_process(config, gpu, small, "auto")  # type: ignore[arg-type]
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # what Ray sets for a job's driver
    assert _in_process(config, cpu, small, None)  # type: ignore[arg-type]
    assert not _in_process(config, cpu, big, None)  # type: ignore[arg-type]
    forced = batch_config("bl", data, executor="ray")
    assert not _in_process(forced, cpu, small, None)  # type: ignore[arg-type]
    assert not _in_process(forced, cpu, small, "auto")  # type: ignore[arg-type]
