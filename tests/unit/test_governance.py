"""Gate, promotion, approval, rollback, history and model cards on a real MLflow SQLite store.

No Ray: the models are trained in this process by `raymlops.train.loop.fit` (the same loop a Tune
trial runs) and registered with `Registry.register`, as `train_and_register` does after its
search — so each test gets a fresh store under tmp_path in a second or two. The Tune path
itself is covered by tests/integration/test_gate_pipeline.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from raymlops.cli.main import cli
from raymlops.core.config import PipelineConfig
from raymlops.core.errors import DataError, RegistryError
from raymlops.data.dataset import DatasetSplits, DatasetVersion, load_dataset, synth_dataset
from raymlops.loop import governance
from raymlops.loop.cards import render_card
from raymlops.loop.gate import load_gate_result, recorded_gate, run_gate
from raymlops.loop.governance import PromotionError
from raymlops.model.architectures import build_model
from raymlops.model.features import Preprocessor
from raymlops.model.predictor import Predictor
from raymlops.registry.store import CHAMPION, Registry
from raymlops.train.loop import TrainingArrays, evaluate, fit, load_best_predictor
from tests.unit.cache_support import cold_load

SCRUBBED_ENV = ("MLFLOW_TRACKING_URI", "RAYMLOPS_DEBUG", "RAYMLOPS_USER")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SCRUBBED_ENV:
        monkeypatch.delenv(name, raising=False)


def make_config(data: Path, **sections: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "m",
            "description": "Synthetic test model.",
            "data": {"path": str(data), "label": "label", "id_columns": ["id"]},
            "model": {"params": {"depth": 1, "width": 16, "dropout": 0.0}},
            "train": {
                "epochs": 10,
                "batch_size": 64,
                "learning_rate": 0.01,
                "early_stopping_patience": None,
            },
            "tune": {"num_samples": 1, "scheduler": "fifo"},
            "registry": {"model_name": "m", "experiment": "m"},
            "gate": {"thresholds": {"accuracy": {"min": 0.7}}},
            "card": {"intended_use": "Exercising the gate.", "limitations": "Synthetic data."},
            **sections,
        }
    )


@dataclass
class Trained:
    data: Path
    config: PipelineConfig
    dataset: DatasetVersion
    splits: DatasetSplits
    prep: Preprocessor
    good: Predictor
    constant: Predictor


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A real model (10 epochs of the trial loop) and a constant one (all weights zero:
    always predicts class '0'), both on 600 synthetic rows."""
    folder = tmp_path_factory.mktemp("trained")
    data = folder / "data.parquet"
    synth_dataset(str(data), rows=600, features=4, categorical=1, seed=0)
    config = make_config(data)
    dataset, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
    checkpoint = folder / "checkpoint"

    def keep(_metrics: dict[str, float], ckpt: Path | None) -> None:
        if ckpt is not None:
            shutil.copytree(ckpt, checkpoint, dirs_exist_ok=True)

    fit(config, arrays, keep)
    good = load_best_predictor(checkpoint, config, arrays.preprocessor)
    model = build_model("mlp", config.model.params, prep.n_outputs, prep.n_targets)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    constant = Predictor(model, prep, good.architecture)
    return Trained(data, config, dataset, splits, prep, good, constant)


def register(
    registry: Registry, trained: Trained, predictor: Predictor, config: PipelineConfig | None = None
) -> int:
    """What train_and_register does after the search: test metrics, run, version, card."""
    from raymlops.loop.cards import refresh_card

    config = config or trained.config
    test = trained.splits.test
    metrics = evaluate(
        predictor, trained.prep.transform(test), trained.prep.encode_target(test.column("label"))
    )
    with registry.pipeline_run(config, "run") as run_id:
        info = registry.register(
            config, run_id, predictor, trained.dataset, {f"test_{k}": v for k, v in metrics.items()}
        )
    assert refresh_card(registry, "m", info.version)
    return info.version


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(home=tmp_path)


# --------------------------------------------------------------------------- gate


def test_gate_recreates_the_test_split_and_records_its_result(
    registry: Registry, trained: Trained
) -> None:
    v1 = register(registry, trained, trained.good)
    result = run_gate(registry, None, "m", v1, by="ci")

    assert result.passed, result.table()
    info = registry.version_info("m", v1)
    # Same rows as at registration: the re-created split gives the registered test metrics.
    for key, value in result.metrics.items():
        assert info.metrics[f"test_{key}"] == pytest.approx(value, abs=1e-6), key
    assert result.data["split"] == "test"
    assert result.data["rows"] == trained.dataset.split["test"]
    assert result.data["digest"] == info.tags["raymlops.dataset_digest"]
    kinds = {c.kind: c.status for c in result.checks}
    assert kinds == {"threshold": "passed", "champion": "skipped"}  # v1 is the champion

    gate = recorded_gate(info)
    assert gate["status"] == "passed"
    assert gate["run_id"] == result.run_id
    assert gate["champion"] == "none"
    run = registry.client.get_run(gate["run_id"])
    assert run.data.metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert run.data.tags["raymlops.gate.status"] == "passed"
    stored = load_gate_result(registry, gate["run_id"])
    assert stored is not None and stored.checks == result.checks

    events = registry.alias_history("m")
    assert [(e.action, e.to_version, e.by) for e in events][-1] == ("gate", v1, "ci")
    assert events[-1].details["status"] == "passed"
    assert not events[-1].moved


def test_a_gate_on_fresh_rows_logs_both_models_on_those_rows_under_fresh(
    registry: Registry, trained: Trained, tmp_path: Path
) -> None:
    """On fresh rows, the gate run's champion figures are on the fresh rows, next to the
    candidate's on the same rows (fresh/candidate/*, fresh/champion/*): MLflow never shows
    the champion on fresh rows beside the candidate on its held-out rows."""
    register(registry, trained, trained.good)
    v2 = register(registry, trained, trained.good)
    fresh = tmp_path / "fresh.parquet"
    pq.write_table(trained.splits.test, fresh)
    result = run_gate(registry, None, "m", v2, fresh=str(fresh))
    assert result.comparison is not None and result.comparison["basis"] == "fresh"
    logged = registry.client.get_run(result.run_id).data.metrics
    assert logged["fresh/candidate/accuracy"] == pytest.approx(logged["fresh/champion/accuracy"])
    assert not any(key.startswith("champion/") for key in logged), sorted(logged)
    held_out = run_gate(registry, None, "m", v2)  # no fresh rows: the champion on held-out
    logged = registry.client.get_run(held_out.run_id).data.metrics
    assert "champion/accuracy" in logged and not any(k.startswith("fresh/") for k in logged)


def test_worse_model_is_rejected_and_never_reaches_champion_even_with_auto_promotion(
    registry: Registry, trained: Trained
) -> None:
    v1 = register(registry, trained, trained.good)
    v2 = register(registry, trained, trained.constant)
    config = make_config(trained.data, promotion="auto")

    result = run_gate(registry, config, "m", v2)
    assert result.status == "failed"
    failed = {c.kind for c in result.failed_checks}
    assert failed == {"threshold", "champion"}
    assert result.champion is not None and result.champion["version"] == v1

    decision = governance.promote_if_passed(registry, "m", v2, result, config=config)
    assert not decision.promoted
    assert "gate failed" in decision.reason
    assert registry.alias_target("m", CHAMPION) == v1
    with pytest.raises(PromotionError, match="failed its latest gate"):
        governance.promote(registry, "m", v2, reason="try", config=config)
    assert registry.alias_target("m", CHAMPION) == v1

    # --force moves it, and the history says it was forced and past what.
    event = governance.promote(registry, "m", v2, reason="drill", by="ops", force=True)
    assert registry.alias_target("m", CHAMPION) == v2
    assert event.details["forced"] is True
    assert "failed its latest gate" in event.details["force_overrode"][0]
    assert event.details["gate"] == "failed"


def test_a_good_candidate_is_promoted_automatically(registry: Registry, trained: Trained) -> None:
    register(registry, trained, trained.good)
    v2 = register(registry, trained, trained.good)
    result = run_gate(registry, None, "m", v2)
    assert result.passed, result.table()
    assert {c.kind: c.status for c in result.checks}["champion"] == "passed"
    decision = governance.promote_if_passed(registry, "m", v2, result, by="lifecycle")
    assert decision.promoted and decision.event is not None
    assert registry.alias_target("m", CHAMPION) == v2
    assert decision.event.details["gate"] == "passed"
    assert decision.event.details["forced"] is False
    # Manual mode leaves a passed version waiting.
    manual = make_config(trained.data, promotion="manual")
    v3 = register(registry, trained, trained.good)
    waiting = governance.promote_if_passed(
        registry, "m", v3, run_gate(registry, manual, "m", v3), config=manual
    )
    assert not waiting.promoted and "manual" in waiting.reason
    assert registry.alias_target("m", CHAMPION) == v2


def test_fairness_limit_breach_rejects(registry: Registry, trained: Trained) -> None:
    register(registry, trained, trained.good)
    v2 = register(registry, trained, trained.good)
    # The synthetic concept gives each c0 level its own effect: positive rates differ a lot.
    strict = make_config(
        trained.data,
        gate={
            "fairness": {
                "sensitive_column": "c0",
                "max_demographic_parity_difference": 0.05,
                "max_equalized_odds_difference": 1.0,
            }
        },
    )
    result = run_gate(registry, strict, "m", v2)
    fairness = [c for c in result.checks if c.kind == "fairness"]
    assert [c.status for c in fairness] == ["failed", "passed"]
    assert result.status == "failed"
    assert result.fairness is not None and result.fairness["demographic_parity_difference"] > 0.05
    with pytest.raises(PromotionError, match="failed its latest gate"):
        governance.promote(registry, "m", v2, reason="fair enough?")
    assert registry.alias_target("m", CHAMPION) == 1


def test_data_digest_is_verified_and_data_overrides_the_split(
    registry: Registry, trained: Trained, tmp_path: Path
) -> None:
    data = tmp_path / "copy.parquet"
    shutil.copy(trained.data, data)
    v1 = register(registry, trained, trained.good, make_config(data))
    synth_dataset(str(data), rows=600, features=4, categorical=1, seed=5)  # the file changes
    with pytest.raises(DataError, match=r"changed since m v1 was trained.*--data"):
        run_gate(registry, None, "m", v1)
    holdout = tmp_path / "holdout.parquet"
    synth_dataset(str(holdout), rows=150, features=4, categorical=1, seed=0)
    result = run_gate(registry, None, "m", v1, data=str(holdout))
    assert result.data["split"] == "file" and result.data["rows"] == 150
    assert result.passed


# --------------------------------------------------------------------------- promotion rules


def test_promote_refuses_ungated_and_stale_gates(registry: Registry, trained: Trained) -> None:
    register(registry, trained, trained.good)
    v2 = register(registry, trained, trained.good)
    v3 = register(registry, trained, trained.good)
    with pytest.raises(PromotionError, match="has not been gated"):
        governance.promote(registry, "m", v2, reason="r")
    assert run_gate(registry, None, "m", v2).passed
    assert run_gate(registry, None, "m", v3).passed  # both compared with v1
    governance.promote(registry, "m", v2, reason="better")
    with pytest.raises(PromotionError, match="compared it with v1, but 'champion' is now v2"):
        governance.promote(registry, "m", v3, reason="also better")
    assert run_gate(registry, None, "m", v3).passed  # now against v2
    governance.promote(registry, "m", v3, reason="also better")
    assert registry.alias_target("m", CHAMPION) == v3
    with pytest.raises(PromotionError, match="already points to v3"):
        governance.promote(registry, "m", v3, reason="again")
    with pytest.raises(RegistryError, match="no version 9"):
        governance.promote(registry, "m", 9, reason="r")


def test_manual_promotion_needs_approvals(registry: Registry, trained: Trained) -> None:
    register(registry, trained, trained.good)
    v2 = register(registry, trained, trained.good)
    v3 = register(registry, trained, trained.good)
    manual = make_config(trained.data, promotion={"mode": "manual", "approvals": 2})
    assert run_gate(registry, manual, "m", v2).passed
    with pytest.raises(PromotionError, match="0 of 2 approval"):
        governance.promote(registry, "m", v2, reason="r", config=manual)
    governance.approve(registry, "m", v2, by="ann", reason="read the card")
    governance.approve(registry, "m", v2, by="ann")  # the same person twice counts once
    with pytest.raises(PromotionError, match="has not been gated"):
        governance.approve(registry, "m", v3, by="bob")
    with pytest.raises(PromotionError, match="1 of 2 approval"):
        governance.promote(registry, "m", v2, reason="r", config=manual)
    governance.approve(registry, "m", v2, by="bob")
    event = governance.promote(registry, "m", v2, reason="approved", config=manual, by="cid")
    assert event.details["approvals"] == ["ann", "bob"]
    assert event.details["mode"] == "manual"
    assert registry.alias_target("m", CHAMPION) == v2
    approvals = [e for e in registry.alias_history("m") if e.action == "approve"]
    assert [e.by for e in approvals] == ["ann", "ann", "bob"]


def test_rollback_restores_the_previous_champion(registry: Registry, trained: Trained) -> None:
    v1 = register(registry, trained, trained.good)
    v2 = register(registry, trained, trained.good)
    v3 = register(registry, trained, trained.good)
    with pytest.raises(PromotionError, match="no previous version"):
        governance.rollback(registry, "m", reason="nothing before v1")
    governance.promote(registry, "m", v2, reason="r", force=True, refresh_cards=False)
    governance.promote(registry, "m", v3, reason="r", force=True, refresh_cards=False)
    event = governance.rollback(registry, "m", reason="errors up", by="oncall")
    assert (event.from_version, event.to_version) == (v3, v2)
    assert registry.alias_target("m", CHAMPION) == v2
    assert governance.rollback(registry, "m", reason="still bad").to_version == v1
    with pytest.raises(PromotionError, match="no previous version"):
        governance.rollback(registry, "m", reason="nothing left")
    history = governance.model_history(registry, "m", CHAMPION)
    moves = [(e.action, e.from_version, e.to_version) for e in history if e.moved]
    assert moves == [
        ("register", None, v1),
        ("promote", v1, v2),
        ("promote", v2, v3),
        ("rollback", v3, v2),
        ("rollback", v2, v1),
    ]
    assert history[-1].by == "oncall" or history[-2].by == "oncall"
    with pytest.raises(RegistryError, match="no registered model named 'nope'"):
        governance.rollback(registry, "nope", reason="r")


_WORKER = """
import json, sys
from raymlops.loop import governance
from raymlops.registry.store import Registry
reg = Registry(home=sys.argv[1])
done = 0
for i in range(int(sys.argv[3])):
    try:
        if i % 2:
            governance.rollback(reg, "m", reason="proc", refresh_cards=False)
        else:
            governance.promote(reg, "m", int(sys.argv[2]), reason="proc", force=True,
                               refresh_cards=False)
        done += 1
    except governance.PromotionError:
        pass
print(json.dumps({"done": done}))
"""


def test_history_is_complete_and_ordered_under_concurrent_promote_and_rollback(
    registry: Registry, trained: Trained, tmp_path: Path
) -> None:
    for _ in range(4):
        register(registry, trained, trained.good)
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path), str(v), "4"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for v in (3, 4)
    ]
    done: list[int] = []
    errors: list[BaseException] = []

    def worker(version: int) -> None:
        reg = Registry(home=tmp_path)  # its own client, as another process would have
        count = 0
        for i in range(4):
            try:
                if i % 2:
                    governance.rollback(reg, "m", reason="thread", refresh_cards=False)
                else:
                    governance.promote(
                        reg, "m", version, reason="thread", force=True, refresh_cards=False
                    )
                count += 1
            except PromotionError:
                pass  # refused: the alias moved meanwhile, already there, nothing to undo
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
        done.append(count)

    threads = [threading.Thread(target=worker, args=(v,)) for v in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        done.append(json.loads(out.strip().splitlines()[-1])["done"])
    assert not errors, errors

    history = registry.alias_history("m")
    assert [e.sequence for e in history] == list(range(1, len(history) + 1))
    assert [e.timestamp for e in history] == sorted(e.timestamp for e in history)
    moves = [e for e in history if e.alias == CHAMPION and e.moved]
    # Every successful call is one move, nothing lost, nothing extra (+ v1's registration).
    assert len(moves) == 1 + sum(done)
    assert sum(done) >= 5
    for before, after in pairwise(moves):
        assert after.from_version == before.to_version, (before, after)
    assert registry.alias_target("m", CHAMPION) == moves[-1].to_version


# --------------------------------------------------------------------------- cards


CARD_SECTIONS = (
    "Intended use and limitations",
    "Model architecture",
    "Training data",
    "Hyperparameters and search",
    "Metrics",
    "Fairness",
    "Validation gate",
    "Drift baseline (training profile)",
    "Alias history",
)


def _stored_card(registry: Registry, version: int, tmp: Path) -> str:
    info = registry.version_info("m", version)
    path = registry.client.download_artifacts(info.run_id, "card/card.md", str(tmp))
    return Path(path).read_text()


def test_card_has_every_section_and_is_stored_and_refreshed(
    registry: Registry, trained: Trained, tmp_path: Path
) -> None:
    gated = make_config(
        trained.data,
        gate={
            "thresholds": {"accuracy": {"min": 0.7}},
            "slices": ["c0"],
            "fairness": {"sensitive_column": "c0"},
        },
    )
    v1 = register(registry, trained, trained.good, gated)
    v2 = register(registry, trained, trained.good, gated)
    for version in (v1, v2):
        stored = _stored_card(registry, version, tmp_path / f"v{version}")
        assert stored.startswith(f"# Model card: m v{version}")
        assert "Not gated yet" in stored
        info = registry.version_info("m", version)
        assert info.tags["raymlops.card"].endswith("card/card.md")
        listed = {a.path for a in registry.client.list_artifacts(info.run_id, "card")}
        assert listed == {"card/card.md", "card/card.html"}

    run_gate(registry, None, "m", v2)
    governance.promote(registry, "m", v2, reason="better on c0", by="ann")
    card = render_card(registry, "m", v2)
    for title in CARD_SECTIONS:
        assert f"\n## {title}\n" in card, title
    assert "Exercising the gate." in card and "Synthetic data." in card
    assert "parameter count" in card
    assert "sha256:" + trained.dataset.digest in card
    assert "| f0 | float |" in card  # the schema
    assert "Per slice of 'c0'" in card
    assert "demographic parity difference" in card
    assert "| threshold | accuracy |" in card
    assert "| promote | v1 → v2 | ann | better on c0 |" in card
    # The stored artifact was regenerated by the gate and the promotion.
    stored = _stored_card(registry, v2, tmp_path / "after")
    assert "| promote | v1 → v2 | ann | better on c0 |" in stored
    # And the previous champion's card records that it was replaced.
    assert "| promote | v1 → v2 |" in _stored_card(registry, v1, tmp_path / "v1-after")

    page = render_card(registry, "m", "champion", fmt="html")
    assert page.startswith("<!doctype html>")
    assert "<style>" in page and page.count("<table") >= 8
    for title in CARD_SECTIONS:
        assert title in page
    assert '<span class="badge passed">passed</span>' in page
    assert "<script" not in page


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def invoke(tmp_path: Path) -> Callable[..., Any]:
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli, [*args, "--home", str(tmp_path)])

    return run


def test_cli_gate_promote_approve_rollback_history_card(
    registry: Registry, trained: Trained, invoke: Callable[..., Any], tmp_path: Path
) -> None:
    register(registry, trained, trained.good)
    register(registry, trained, trained.constant)
    register(registry, trained, trained.good)

    bad = invoke("gate", "m", "2")
    assert bad.exit_code == 1, bad.output
    assert "threshold accuracy" in bad.stdout and "FAIL" in bad.stdout
    assert bad.stderr.strip().splitlines()[-1].startswith("error: gate failed: 2 of 2 checks")
    good = invoke("gate", "m", "3", "--json")
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["status"] == "passed"
    assert invoke("gate", "m", "9").exit_code == 2
    assert invoke("gate", "nope", "1").exit_code == 2
    typo = invoke("gate", "m", "3", "--set", "gate.tresholds={}")
    assert typo.exit_code == 2 and "gate.tresholds: unknown key" in typo.stderr
    assert invoke("gate", "m", "3", "-c", str(tmp_path / "missing.yaml")).exit_code == 2
    stricter = invoke("gate", "m", "3", "--no-record", "--set", "gate.thresholds.accuracy.min=1")
    assert stricter.exit_code == 1
    assert recorded_gate(registry.version_info("m", 3))["status"] == "passed"  # not recorded

    refused = invoke("promote", "m", "2", "--reason", "try")
    assert refused.exit_code == 1 and "failed its latest gate" in refused.stderr
    assert invoke("promote", "m", "3").exit_code == 2  # --reason is required
    assert invoke("promote", "m", "champion", "--reason", "x").exit_code == 2
    manual = invoke("promote", "m", "3", "--reason", "r", "--set", "promotion=manual")
    assert manual.exit_code == 1 and "approval" in manual.stderr
    approved = invoke("approve", "m", "3", "--by", "ann", "--reason", "card read")
    assert approved.exit_code == 0 and "approved for champion by ann" in approved.stdout
    promoted = invoke("promote", "m", "3", "--reason", "better", "--by", "bob")
    assert promoted.exit_code == 0, promoted.output
    assert "champion of m: v1 → v3 (promoted by bob)" in promoted.stdout
    forced = invoke("promote", "m", "2", "--reason", "drill", "--force")
    assert forced.exit_code == 0 and "FORCED past" in forced.stdout
    back = invoke("rollback", "m", "--reason", "drill over", "--by", "oncall")
    assert back.exit_code == 0 and "champion of m: v2 → v3" in back.stdout

    listing = invoke("models", "history", "m")
    assert listing.exit_code == 0
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "TIME", "(UTC)"]
    assert any("promote (forced)" in line and "v3 → v2" in line for line in lines)
    as_json = json.loads(invoke("models", "history", "m", "--json").stdout)
    assert [e["sequence"] for e in as_json] == list(range(1, len(as_json) + 1))
    actions = [e["action"] for e in as_json]
    assert actions == [
        "register",
        "register",
        "register",
        "gate",
        "gate",
        "approve",
        "promote",
        "promote",
        "rollback",
    ]
    assert as_json[-1]["by"] == "oncall" and as_json[-1]["reason"] == "drill over"
    assert invoke("models", "history", "nope").exit_code == 2

    out = tmp_path / "cards" / "v3.html"
    written = invoke("card", "m", "3", "--format", "html", "--out", str(out))
    assert written.exit_code == 0 and out.read_text().startswith("<!doctype html>")
    printed = invoke("card", "m", "champion")
    assert printed.exit_code == 0 and printed.stdout.startswith("# Model card: m v3")
    assert invoke("card", "m", "7").exit_code == 2


# --------------------------------------------------------------------------- tampered names


def test_a_digest_tag_that_names_a_path_is_refused(registry: Registry, trained: Trained) -> None:
    """A version whose digest tags name `../x` (written by anyone who can tag versions) is
    refused before any file is read: exit 2 naming the version and the tag (#15)."""
    version = register(registry, trained, trained.good)
    digest = registry.version_info("m", version).digests["config.json"]
    registry.client.set_model_version_tag("m", str(version), "raymlops.sha256.../x", digest)
    with pytest.raises(RegistryError, match=r"m v1: tag raymlops.sha256.../x names '../x'"):
        registry.download("m", version)
    args = ["predict", "m", "--home", str(registry.home), "--input", str(trained.data)]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 2 and "not a plain artifact file name" in done.output, done.output


def test_cold_loads_of_one_version_at_once_all_succeed(
    registry: Registry, trained: Trained
) -> None:
    """32 processes fetch the same version into an empty model cache together (serve
    replicas and batch actors start so): every one gets the verified folder (#15)."""
    import multiprocessing

    version = register(registry, trained, trained.good)
    shutil.rmtree(registry.home / "cache", ignore_errors=True)
    # Fresh processes (no MLflow store inherited), forked from one that imported them once.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.unit.cache_support", "mlflow", "raymlops.model.artifacts"])
    with ctx.Pool(32) as pool:
        results = pool.starmap(cold_load, [(str(registry.home), "m", version)] * 32)
    assert results == ["ok"] * 32, [r for r in results if r != "ok"][:3]
