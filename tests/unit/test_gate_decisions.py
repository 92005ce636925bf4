"""The gate's decisions recorded on a real MLflow SQLite store (no Ray; long: each test
builds a registry): a first version is gated on its thresholds and, failing them, leaves
no champion; fresh labelled rows decide the champion comparison with a paired test, which
the gate record, the alias history and the model card state; the card says how each trial
ended and lists only the training resources that applied.

The models and helpers are test_governance's (a trained MLP and a constant model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from raymlops.cli import cli
from raymlops.data.dataset import synth_dataset
from raymlops.loop import governance
from raymlops.loop.cards import render_card
from raymlops.loop.gate import FIRST_VERSION, load_gate_result, recorded_gate, run_gate
from raymlops.loop.governance import PromotionError
from raymlops.registry.store import CHAMPION, Registry, TrialRecord
from tests.unit import test_governance
from tests.unit.test_governance import Trained, make_config, register

pytestmark = pytest.mark.long

# test_governance's fixtures: a fresh registry per test, the trained models once per module.
_isolated_env = test_governance._isolated_env
registry = test_governance.registry
trained = test_governance.trained


def test_a_first_version_failing_its_thresholds_leaves_no_champion(
    registry: Registry, trained: Trained
) -> None:
    v1 = register(registry, trained, trained.constant)
    assert registry.alias_target("m", CHAMPION) == v1  # champion by registration only
    result = run_gate(registry, None, "m", v1, by="ci")  # accuracy ≥ 0.7: the constant fails

    assert result.status == "failed"
    kinds = {c.kind: (c.status, c.detail) for c in result.checks}
    assert kinds["threshold"][0] == "failed"
    assert kinds["champion"] == ("skipped", FIRST_VERSION)
    assert result.comparison is not None and result.comparison["basis"] == "first version"
    assert "no version is champion" in result.comparison["cleared"]
    assert "no champion: v1 was champion only as the first version" in result.table()
    assert registry.alias_target("m", CHAMPION) is None
    gate, clear = registry.alias_history("m")[-2:]
    assert (gate.action, clear.action, clear.from_version, clear.to_version) == (
        "gate",
        "clear",
        v1,
        None,
    )
    assert clear.moved and clear.by == "ci"
    assert recorded_gate(registry.version_info("m", v1))["comparison"].startswith("first version")
    with pytest.raises(PromotionError, match="failed its latest gate"):
        governance.promote(registry, "m", v1, reason="anyway")

    # The next version becomes champion as the first one again, and passes the same gate.
    v2 = register(registry, trained, trained.good)
    assert registry.alias_target("m", CHAMPION) == v2
    passed = run_gate(registry, None, "m", v2)
    assert passed.passed and registry.alias_target("m", CHAMPION) == v2
    card = render_card(registry, "m", v2)
    assert f"first version: {FIRST_VERSION}" in card


def test_a_champion_that_passed_its_gate_keeps_the_alias_on_a_failed_re_gate(
    registry: Registry, trained: Trained
) -> None:
    v1 = register(registry, trained, trained.good)
    assert run_gate(registry, None, "m", v1).passed
    strict = make_config(trained.data, gate={"thresholds": {"accuracy": {"min": 0.999}}})
    assert run_gate(registry, strict, "m", v1).status == "failed"
    assert registry.alias_target("m", CHAMPION) == v1
    assert "clear" not in [e.action for e in registry.alias_history("m")]


def test_fresh_rows_decide_the_comparison_and_every_record_says_so(
    registry: Registry, trained: Trained, tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh.parquet"
    synth_dataset(str(fresh), rows=300, features=4, categorical=1, seed=0)
    v1 = register(registry, trained, trained.good)
    v2 = register(registry, trained, trained.constant)
    lenient = make_config(trained.data, gate={"thresholds": {}})
    note = "300 rows held out for the test"

    # `raymlops gate --fresh` (evaluate only): the same paired comparison, exit 1 on its fail.
    command = ["gate", "m", str(v2), "--fresh", str(fresh), "--no-record", "--json"]
    command += ["--tracking-uri", registry.tracking_uri, "--home", str(registry.home)]
    via_cli = CliRunner().invoke(cli, command)
    assert via_cli.exit_code == 1, via_cli.output
    printed = json.loads(via_cli.stdout)
    assert printed["comparison"]["basis"] == "fresh"
    assert printed["comparison"]["paired"]["rows"] == 300

    worse = run_gate(registry, lenient, "m", v2, fresh=str(fresh), fresh_note=note)
    assert worse.status == "failed"
    (check,) = worse.checks
    assert check.kind == "champion" and "on 300 fresh rows (paired bootstrap)" in check.name
    assert worse.comparison is not None
    paired = worse.comparison["paired"]
    assert (paired["metric"], paired["rows"], paired["seed"]) == ("log_loss", 300, 0)
    assert paired["high"] < 0 and worse.comparison["note"] == note

    tags = recorded_gate(registry.version_info("m", v2))
    assert tags["comparison"].startswith("fresh: paired bootstrap on 300 fresh rows: log_loss")
    stored = load_gate_result(registry, tags["run_id"])
    assert stored is not None and stored.comparison == worse.comparison
    run = registry.client.get_run(tags["run_id"])
    assert run.data.metrics["comparison/rows"] == 300
    assert run.data.metrics["comparison/difference"] == pytest.approx(paired["difference"])
    assert registry.alias_history("m")[-1].details["comparison"] == tags["comparison"]
    card = render_card(registry, "m", v2)
    assert "fresh: paired bootstrap on 300 fresh rows" in card and "95% interval" in card

    # The same model as the champion: paired, the difference is exactly 0 → within the margin.
    v3 = register(registry, trained, trained.good)
    same = run_gate(registry, lenient, "m", v3, fresh=str(fresh))
    assert same.passed and same.champion is not None and same.champion["version"] == v1
    # Without fresh rows the held-out comparison stays, and the record says so.
    held_out = run_gate(registry, lenient, "m", v3)
    assert held_out.passed and held_out.comparison is not None
    assert held_out.comparison["basis"] == "held-out"
    assert "no fresh labelled rows" in recorded_gate(registry.version_info("m", v3))["comparison"]


def test_the_card_says_how_each_trial_ended_and_only_the_resources_that_applied(
    registry: Registry, trained: Trained
) -> None:
    v1 = register(registry, trained, trained.good)  # train.epochs 10, on CPU

    def trial(trial_id: str, epochs: int, outcome: str | None) -> TrialRecord:
        history = [{"epoch": float(e), "val_loss": 1.0 / e} for e in range(1, epochs + 1)]
        return TrialRecord(trial_id, {"lr": 0.01}, history, "TERMINATED", None, outcome)

    run_id = registry.version_info("m", v1).run_id
    assert run_id is not None
    registry.log_trials(
        run_id,
        trained.config,
        [
            trial("full", 10, "completed"),
            trial("asha", 3, "stopped"),
            trial("patient", 6, "early_stopped"),
            trial("legacy", 4, None),  # recorded before outcomes were
            trial("legacy_full", 10, None),
        ],
    )
    card = render_card(registry, "m", v1)
    assert "TERMINATED" not in card
    for trial_id, ended in (
        ("full", "ran to the limit (10 epochs)"),
        ("asha", "early-stopped by the scheduler at epoch 3 of 10"),
        ("patient", "early-stopped (patience) at epoch 6 of 10"),
        ("legacy", "early-stopped at epoch 4 of 10"),
        ("legacy_full", "ran to the limit (10 epochs)"),
    ):
        assert f"| {trial_id} | {ended} |" in card, trial_id
    assert "gpus_per_worker" not in card and "cpus_per_worker" not in card
    assert "| **train.epochs** | 10 |" in card
