"""Champion/challenger on fresh ground truth through `retrain` (Ray Tune on a local Ray,
MLflow SQLite under tmp_path; long): a slice of the recent labelled rows is held out of the
candidate's training set and both models are compared on it with a paired test.

The recent rows follow another relation than the reference (`synth_dataset`'s relation
depends on its seed: concept drift). A candidate trained on them beats the champion on the
fresh slice and is promoted; a sabotaged one (a learning rate that learns nothing) is
refused on the same kind of rows, and the champion stays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from raymlops.core.config import PipelineConfig
from raymlops.data.dataset import synth_dataset
from raymlops.loop.gate import recorded_gate, run_gate
from raymlops.loop.retrain import retrain
from raymlops.loop.training import train_and_register
from raymlops.registry.store import CHAMPION, Registry

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.usefixtures("ray_cluster")]


def _config(data: Path, **train: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "fresh",
            "data": {"path": str(data), "label": "label", "id_columns": ["id"]},
            "model": {"params": {"depth": 1, "width": 16, "dropout": 0.0}},
            "train": {
                "epochs": 8,
                "batch_size": 32,
                "learning_rate": 0.01,
                "early_stopping_patience": None,
                **train,
            },
            "tune": {"num_samples": 1, "scheduler": "fifo"},
            "registry": {"model_name": "fresh", "experiment": "fresh"},
            "gate": {"thresholds": {}},
            "retrain": {"include_reference": False},
            "promotion": "auto",
        }
    )


def test_retrain_compares_on_held_out_fresh_rows_and_decides_both_ways(tmp_path: Path) -> None:
    home = tmp_path / "home"
    reference, drifted = tmp_path / "reference.parquet", tmp_path / "drifted.parquet"
    synth_dataset(str(reference), rows=600, features=4, categorical=1, seed=0)
    synth_dataset(str(drifted), rows=1200, features=4, categorical=1, seed=1)  # new relation
    rows = pd.read_parquet(drifted)
    first, second = tmp_path / "recent-1.parquet", tmp_path / "recent-2.parquet"
    rows.iloc[:600].to_parquet(first)
    rows.iloc[600:].to_parquet(second)
    config = _config(reference)
    registry = Registry(home=home)
    train_and_register(config, home=home, echo=False)
    assert run_gate(registry, config, "fresh", 1).passed  # the first version: thresholds only
    assert registry.alias_target("fresh", CHAMPION) == 1

    better = retrain(config, force=True, recent_data=str(first), home=home, echo=False)
    assert better.outcome == "promoted", better.steps
    assert better.champion_after == better.candidate == 2
    assert better.gate is not None and better.gate.comparison is not None
    compared = better.gate.comparison
    held = compared["rows"]  # about 0.3 of 600, by a stable hash of each row
    assert compared["basis"] == "fresh" and 140 <= held <= 220
    assert f"{held} of 600 recent labelled rows held out" in compared["note"]
    assert compared["paired"]["low"] > 0  # better than the champion, with 95% confidence
    # The candidate never trained on the fresh rows: the other 600 − held trained.
    assert better.training_rows == 600 - held and better.training_data is not None
    trained_on = set(pd.read_parquet(better.training_data)["f0"])
    fresh = set(pd.read_parquet(compared["source"])["f0"])
    assert len(fresh) == held and fresh.isdisjoint(trained_on)
    assert fresh | trained_on == set(rows.iloc[:600]["f0"])
    tags = recorded_gate(registry.version_info("fresh", 2))
    assert tags["comparison"].startswith(f"fresh: paired bootstrap on {held} fresh rows: log_loss")

    sabotaged = _config(reference, learning_rate=1e-7, epochs=1)
    worse = retrain(sabotaged, force=True, recent_data=str(second), home=home, echo=False)
    assert worse.outcome == "rejected", worse.steps
    assert worse.gate is not None and worse.gate.comparison is not None
    paired = worse.gate.comparison["paired"]
    assert 140 <= paired["rows"] <= 220 and paired["high"] < 0  # worse, with 95% confidence
    assert registry.alias_target("fresh", CHAMPION) == 2
    actions = [e.action for e in registry.alias_history("fresh")]
    assert actions[-2:] == ["gate", "retrain-rejected"]
