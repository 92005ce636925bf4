"""Helpers of the batch-inference tests: a registered model version in seconds (trained in
this process, no Ray Tune), and architectures that make a run slow enough to interrupt.

The architectures are imported on demand by `raymlops.model.architectures` through their
'package.module:name' names, in the driver and in every Ray worker (the repository root
must be on PYTHONPATH), like `tests.integration.crashy_arch`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from raymlops.core.config import PipelineConfig
from raymlops.core.processes import stop_session
from raymlops.data.dataset import load_dataset, synth_dataset
from raymlops.model.architectures import MLP, MLPParams, register_architecture
from raymlops.model.features import Preprocessor
from raymlops.registry.store import ModelVersionInfo, Registry
from raymlops.train.loop import TrainingArrays, fit, load_best_predictor

#: An MLP whose forward pass sleeps $RAYMLOPS_TEST_SLOW_S seconds (default 0): a batch run
#: with it lasts long enough to be killed midway.
SLOW = "tests.integration.batch_support:slow_mlp"
SLOW_ENV = "RAYMLOPS_TEST_SLOW_S"


@register_architecture(SLOW, MLPParams)
class SlowMLP(MLP):
    """An MLP that takes its time (only where $RAYMLOPS_TEST_SLOW_S is set)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delay = float(os.environ.get(SLOW_ENV, "0") or 0)
        if delay:
            time.sleep(delay)
        return super().forward(x)


def batch_config(
    name: str, data: Path | str, architecture: str = "mlp", **batch: Any
) -> PipelineConfig:
    """A small classification pipeline over synthetic data (id column `id`)."""
    return PipelineConfig.model_validate(
        {
            "name": name,
            "data": {"path": str(data), "label": "label", "id_columns": ["id"]},
            "model": {
                "architecture": architecture,
                "params": {"depth": 1, "width": 16, "dropout": 0.0},
            },
            "train": {"epochs": 2, "batch_size": 128, "early_stopping_patience": None},
            "registry": {"model_name": name, "experiment": name},
            "batch": batch,
        }
    )


def register_model(config: PipelineConfig, home: Path) -> ModelVersionInfo:
    """Train `config` in this process (a couple of epochs, no Ray) and register the best
    epoch as a version of config.registry.model_name in the MLflow store under `home`."""
    dataset, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
    keep = Path(tempfile.mkdtemp(prefix="raymlops-test-ckpt-"))
    try:

        def report(metrics: dict[str, float], folder: Path | None) -> None:
            if folder is not None:
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(folder, keep)

        best = fit(config, arrays, report)
        predictor = load_best_predictor(keep, config, arrays.preprocessor)
    finally:
        shutil.rmtree(keep, ignore_errors=True)
    registry = Registry(home=home)
    metrics = {k: float(v) for k, v in best.items() if k.startswith("val_")}
    with registry.pipeline_run(config, f"{config.name}-test") as run_id:
        return registry.register(config, run_id, predictor, dataset, metrics)


# --------------------------------------------------------------------------- fixtures
# Shared by the batch test modules, which bind them by assignment (`home = batch_support.home`:
# an imported fixture would read as an unused import that each test redefines). `data` and
# `model` build what the using module asks for in its INPUT (synth_dataset's arguments) and
# MODEL (the model's name, its batch settings).


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's registry home (an MLflow SQLite store)."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def data(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's input: Parquet files of 2,000 synthetic rows each (id, f*, c*, label)."""
    folder = tmp_path_factory.mktemp("input") / "rows"
    synth_dataset(str(folder), chunk_rows=2_000, **request.module.INPUT)
    return folder


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest, home: Path, data: Path) -> PipelineConfig:
    """Version 1 (champion) of the module's model, an MLP trained on `data`."""
    name, batch = request.module.MODEL
    config = batch_config(name, data, **batch)
    register_model(config, home)
    return config


# --------------------------------------------------------------------------- processes


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid`: a crash of the driver and its local Ray."""
    stop_session(sid, term_s=0.0, kill_s=5.0)


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


# --------------------------------------------------------------------------- outputs


def read_output(folder: Path) -> pd.DataFrame:
    """Every prediction row of a batch output (what any Parquet reader sees)."""
    return pq.read_table(folder).to_pandas()


def unit_stats(folder: Path) -> list[dict[str, Any]]:
    """The statistics each unit recorded in its output file's footer."""
    return [
        json.loads(pq.read_metadata(part).metadata[b"raymlops.batch"])
        for part in sorted(folder.glob("part-*.parquet"))
    ]
