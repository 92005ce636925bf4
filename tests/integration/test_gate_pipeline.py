"""The gate and promotion on versions trained by the real pipeline (Ray Tune on a local Ray,
one per module, MLflow SQLite under tmp_path): every registered version carries its model
card, the gate re-creates the exact test split, and a deliberately worse model never becomes
champion, even with `promotion: auto`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from raymlops.cli.main import cli
from raymlops.core.config import PipelineConfig
from raymlops.data.dataset import synth_dataset
from raymlops.loop import governance
from raymlops.loop.gate import run_gate
from raymlops.loop.training import TrainResult, train_and_register
from raymlops.registry.store import CHAMPION, Registry

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSTANT = "tests.integration.constant_arch:constant"  # same as constant_arch.CONSTANT

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


def make_config(name: str, data: Path, architecture: str, params: dict[str, Any]) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": name,
            "data": {"path": str(data), "label": "label", "id_columns": ["id"]},
            "model": {"architecture": architecture, "params": params},
            "train": {"epochs": 4, "batch_size": 64, "early_stopping_patience": None},
            "tune": {
                "num_samples": 2,
                "scheduler": "fifo",
                "search_space": {
                    "train.learning_rate": {"type": "loguniform", "low": 3e-3, "high": 3e-2}
                },
            },
            "registry": {"model_name": "gated", "experiment": "gated"},
            "gate": {
                "thresholds": {"accuracy": {"min": 0.7}},
                "slices": ["c0"],
                "latency": {"p95_ms": 10_000, "requests": 20},
            },
            "promotion": "auto",
            "card": {"intended_use": "Integration tests of the gate."},
        }
    )


@dataclass
class Trained:
    home: Path
    good: TrainResult
    worse: TrainResult
    worse_config: PipelineConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """v1: a small MLP (champion, as the first version); v2: a constant model (challenger)."""
    home = tmp_path_factory.mktemp("home")
    data = home / "data.parquet"
    synth_dataset(str(data), rows=600, features=4, categorical=1, seed=0)
    mlp = {"depth": 1, "width": 16, "dropout": 0.0}
    good = train_and_register(make_config("gated-mlp", data, "mlp", mlp), home=home, echo=False)
    worse_config = make_config("gated-constant", data, CONSTANT, {})
    worse = train_and_register(worse_config, home=home, echo=False)
    return Trained(home, good, worse, worse_config)


def test_every_registered_version_carries_its_model_card(trained: Trained) -> None:
    registry = Registry(home=trained.home)
    for result in (trained.good, trained.worse):
        info = result.version
        listed = {a.path for a in registry.client.list_artifacts(info.run_id, "card")}
        assert listed == {"card/card.md", "card/card.html"}
        path = registry.client.download_artifacts(
            info.run_id, "card/card.md", str(trained.home / f"card-v{info.version}")
        )
        card = Path(path).read_text()
        assert card.startswith(f"# Model card: gated v{info.version}")
        assert "Integration tests of the gate." in card
        # The search explored, from search.json and the nested trial runs.
        assert "| train.learning_rate | loguniform | [0.003, 0.03] |" in card
        assert "Trials (nested MLflow runs):" in card
        assert card.count("| ran to the limit (4 epochs) |") == 2  # not Ray's TERMINATED
        assert "| **parameter count** |" in card
    assert (
        "| **architecture** | tests.integration.constant_arch:constant |" in Path(path).read_text()
    )


def test_gate_re_creates_the_exact_test_split(trained: Trained) -> None:
    registry = Registry(home=trained.home)
    result = run_gate(registry, None, "gated", 1)
    assert result.passed, result.table()
    info = registry.version_info("gated", 1)
    for key, value in result.metrics.items():
        assert info.metrics[f"test_{key}"] == pytest.approx(value, abs=1e-6), key
    assert result.data["digest"] == trained.good.dataset.digest
    assert {r["slice"] for r in result.slices["c0"]} == {f"v{i}" for i in range(8)}
    assert result.latency is not None and result.latency["requests"] == 20


def test_a_worse_model_never_reaches_champion_even_with_auto_promotion(trained: Trained) -> None:
    registry = Registry(home=trained.home)
    assert trained.worse.version.aliases == ["challenger"]
    result = run_gate(registry, trained.worse_config, "gated", 2)
    assert result.status == "failed"
    assert {c.kind for c in result.failed_checks} == {"threshold", "champion"}
    decision = governance.promote_if_passed(
        registry, "gated", 2, result, config=trained.worse_config
    )
    assert not decision.promoted
    assert registry.alias_target("gated", CHAMPION) == 1

    runner = CliRunner()
    home = ["--home", str(trained.home)]
    gate = runner.invoke(cli, ["gate", "gated", "2", *home])
    assert gate.exit_code == 1, gate.output
    assert "error: gate failed" in gate.stderr
    promote = runner.invoke(cli, ["promote", "gated", "2", "--reason", "ci", *home])
    assert promote.exit_code == 1
    assert "failed its latest gate" in promote.stderr
    assert registry.alias_target("gated", CHAMPION) == 1
    moves = [e for e in registry.alias_history("gated") if e.alias == CHAMPION and e.moved]
    assert [(e.action, e.to_version) for e in moves] == [("register", 1)]
