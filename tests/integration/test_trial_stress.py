"""Proof by repetition that searches whose trials are Ray Train runs never hang on 2 CPUs.

The shape that hung (issue #19): more Ray Train trials than fit at once, streaming data,
ASHA stopping some, so each wave of trials must hand its CPUs to the next after Tune kills
the trial. Ray Train's own cleaner frees a killed trial's placement group only while the
dashboard's state API answers; this module's Ray (tests/integration/conftest.py) runs
without a dashboard, so every placement group freed here was freed by raymlops' keeper.
Each search must finish every trial and leave no placement group behind; then the next
search runs on the same Ray.

`RAYMLOPS_STRESS_REPEATS` sets the number of searches per shape (default 10 and 5).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from raymlops.core.config import PipelineConfig
from raymlops.data.dataset import synth_dataset
from raymlops.loop.training import train_and_register
from tests.integration.ray_support import wait_until_nothing_is_held

pytestmark = [pytest.mark.integration, pytest.mark.long]

REPEATS = int(os.environ.get("RAYMLOPS_STRESS_REPEATS", "10"))
CPUS = 2.0


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Parquet folder of 3,000 rows in three files (id, 6 numeric, 1 categorical, label)."""
    folder = tmp_path_factory.mktemp("stress") / "rows"
    synth_dataset(str(folder), rows=3_000, features=6, categorical=1, seed=11, chunk_rows=1_000)
    return folder


def _config(name: str, data: Path, *, streaming: bool, trials: int, **train: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": name,
            "data": {
                "path": str(data),
                "label": "label",
                "id_columns": ["id"],
                "streaming": streaming,
                "stream_sample_rows": 1_000,
            },
            "model": {"params": {"depth": 1, "width": 16, "dropout": 0.0}},
            "train": {"epochs": 3, "batch_size": 128, "early_stopping_patience": None, **train},
            "tune": {
                "num_samples": trials,
                "scheduler": "asha",
                "grace_period": 1,
                "reduction_factor": 2,
                # Learning rates far apart: ASHA stops the poor ones at its first rung.
                "search_space": {
                    "train.learning_rate": {"type": "loguniform", "low": 1e-5, "high": 3e-2}
                },
                "seed": 7,
                "stall_timeout_s": 120,
            },
            "registry": {"model_name": name, "experiment": name},
        }
    )


def _epochs(experiment_path: str) -> list[int]:
    """Epochs each trial reached."""
    return [
        int(pd.read_csv(p)["epoch"].max())
        for p in sorted(Path(experiment_path).glob("*/progress.csv"))
    ]


def _repeat(tmp_path: Path, config_of: Any, trials: int, repeats: int) -> list[list[int]]:
    """Run `repeats` searches one after another on the module's Ray; each must run all its
    trials and hand every CPU back."""
    reached = []
    for i in range(repeats):
        started = time.monotonic()
        result = train_and_register(config_of(i), home=tmp_path / str(i), echo=False)
        assert result.trials == trials and result.failed_trials == 0, (i, result.summary())
        epochs = _epochs(result.experiment_path)
        assert len(epochs) == trials, (i, epochs)
        reached.append(epochs)
        wait_until_nothing_is_held(CPUS)
        took = time.monotonic() - started
        print(f"search {i + 1}/{repeats}: epochs per trial {epochs}, {took:.0f} s")
    return reached


@pytest.mark.timeout(3600)
@pytest.mark.usefixtures("ray_cluster")
def test_waves_of_streamed_train_run_trials_never_hang(tmp_path: Path, rows: Path) -> None:
    """4 one-worker Ray Train trials (streaming) on 2 CPUs: two waves, ASHA stops some."""
    reached = _repeat(
        tmp_path,
        lambda i: _config(f"stream-{i}", rows, streaming=True, trials=4),
        trials=4,
        repeats=REPEATS,
    )
    # ASHA stopped trials before the last epoch: the shape that left groups behind.
    assert any(e < 3 for epochs in reached for e in epochs), reached


@pytest.mark.timeout(3600)
@pytest.mark.usefixtures("ray_cluster")
def test_two_worker_train_runs_one_after_another_never_hang(tmp_path: Path, rows: Path) -> None:
    """3 two-worker Ray Train trials (DDP, each takes both CPUs) in a row, ASHA on."""
    _repeat(
        tmp_path,
        lambda i: _config(f"ddp-{i}", rows, streaming=False, trials=3, num_workers=2),
        trials=3,
        repeats=max(1, REPEATS // 2),
    )


@pytest.mark.timeout(1800)
@pytest.mark.usefixtures("ray_cluster")
def test_batch_and_monitor_beside_serve_replicas_holding_every_cpu_never_hang(
    tmp_path: Path, rows: Path
) -> None:
    """Two Serve replicas hold both CPUs: monitoring runs anyway (its tasks reserve no CPU)
    and batch inference says at once that no CPU is free, each time; with one replica gone,
    batch sizes its pool to the freed CPU and predicts every row."""
    from ray import serve

    from raymlops.batch.run import run_batch
    from raymlops.core.errors import ResourceError
    from raymlops.monitor.run import run_monitor

    config = _config("beside", rows, streaming=False, trials=1)
    config.tune.search_space = {}
    # The actor pool's wait for CPUs is what this tests (auto runs so small an input in
    # this process, beside Ray's accounting: README, "Small inputs skip Ray").
    config.batch.executor = "ray"
    train_and_register(config, home=tmp_path, echo=False)
    sample = str(sorted(rows.glob("*.parquet"))[0])

    @serve.deployment(ray_actor_options={"num_cpus": 1})
    class Holder:
        def __call__(self) -> str:
            return "ok"

    serve.run(Holder.options(num_replicas=2).bind(), name="holder", route_prefix="/holder")
    try:
        import ray

        assert ray.available_resources().get("CPU", 0.0) < 0.05
        for i in range(max(1, REPEATS // 2)):
            started = time.monotonic()
            result = run_monitor(config, source=sample, home=tmp_path, echo=False)
            assert result.rows_compared > 0, i
            with pytest.raises(ResourceError, match="none of the Ray cluster's 2 CPUs is free"):
                run_batch(config, sample, str(tmp_path / f"out-{i}"), home=tmp_path, echo=False)
            print(f"round {i + 1}: monitor + batch refused, {time.monotonic() - started:.0f} s")
        serve.run(Holder.options(num_replicas=1).bind(), name="holder", route_prefix="/holder")
        done = run_batch(config, sample, str(tmp_path / "out"), home=tmp_path, echo=False)
        assert done.rows_out == 1_000
    finally:
        serve.shutdown()
    wait_until_nothing_is_held(CPUS)
