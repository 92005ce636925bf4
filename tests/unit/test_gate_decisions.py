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

    # The next version is not champion at registration (the champion was cleared): only a
    # passing gate and a promotion make it champion.
    v2 = register(registry, trained, trained.good)
    assert registry.alias_target("m", CHAMPION) is None
    assert registry.alias_history("m")[-1].reason.endswith(
        "no champion until a version passes its gate"
    )
    passed = run_gate(registry, None, "m", v2)
    assert passed.passed and registry.alias_target("m", CHAMPION) is None
    governance.promote(registry, "m", v2, reason="passed its gate")
    assert registry.alias_target("m", CHAMPION) == v2


def test_train_gates_a_version_registered_with_no_champion_before_it_is_champion(
    registry: Registry, trained: Trained
) -> None:
    """`train_and_register(gate_first_version=True)`'s path after the search: registered
    without the alias, gated, champion only through a passing gate (an audited promote)."""
    from raymlops.loop.training import _gate_then_champion

    strict = make_config(trained.data, gate={"thresholds": {"accuracy": {"min": 0.999}}})
    with registry.pipeline_run(strict, "run") as run_id:
        info = registry.register(
            strict, run_id, trained.good, trained.dataset, {}, assign_champion=False
        )
    assert registry.alias_target("m", CHAMPION) is None  # never champion before its gate
    failed = _gate_then_champion(registry, strict, info, echo=False)
    assert failed.status == "failed" and registry.alias_target("m", CHAMPION) is None
    actions = [e.action for e in registry.alias_history("m")]
    assert actions == ["register", "gate"], actions  # nothing to clear: it never was champion

    v2 = register(registry, trained, trained.good)  # assign_champion=True: earlier versions
    assert registry.alias_target("m", CHAMPION) is None
    passed = _gate_then_champion(registry, trained.config, registry.version_info("m", v2), False)
    assert passed.passed and registry.alias_target("m", CHAMPION) == v2
    gate, promote, clear = registry.alias_history("m")[-3:]
    assert (gate.action, promote.action, promote.to_version) == ("gate", "promote", v2)
    assert "passed its gate" in promote.reason and promote.details["gate_run_id"] == passed.run_id
    # Champion now, so no longer also the challenger.
    assert (clear.action, clear.alias, clear.from_version) == ("clear", "challenger", v2)
    assert registry.version_info("m", v2).aliases == [CHAMPION]


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
    check, guard = worse.checks  # log loss, and its ROC AUC guard (a binary model)
    assert check.kind == "champion" and "on 300 fresh rows (paired bootstrap)" in check.name
    assert guard.kind == "champion" and guard.name.startswith("roc_auc guard vs v")
    assert worse.comparison is not None and worse.comparison["guard"]["metric"] == "roc_auc"
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
    guarded = worse.comparison["guard"]
    assert run.data.metrics["comparison/guard/low"] == pytest.approx(guarded["low"])
    assert "; guard: paired bootstrap on 300 fresh rows: roc_auc" in tags["comparison"]
    assert registry.alias_history("m")[-1].details["comparison"] == tags["comparison"]
    card = render_card(registry, "m", v2)
    assert "fresh: paired bootstrap on 300 fresh rows" in card and "95% interval" in card
    assert "guard: paired bootstrap on 300 fresh rows: roc_auc" in card

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


def test_the_card_reads_histories_of_shown_trials_only_against_their_own_epoch_limit(
    registry: Registry, trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the trials the card shows (the best `_MAX_TRIALS`) cost an MLflow call each, and
    a trial whose search sampled `train.epochs` is judged against its own limit."""
    from raymlops.loop import cards

    v1 = register(registry, trained, trained.good)  # train.epochs 10 in the config
    many = cards._MAX_TRIALS + 7

    def trial(trial_id: str, epochs: int, params: dict[str, object]) -> TrialRecord:
        history = [{"epoch": float(e), "val_loss": 1.0 / e} for e in range(1, epochs + 1)]
        return TrialRecord(trial_id, params, history, "TERMINATED", None, None)

    run_id = registry.version_info("m", v1).run_id
    assert run_id is not None
    registry.log_trials(
        run_id,
        trained.config,
        [trial("short", 3, {"train.epochs": 3}), trial("cut", 4, {"train.epochs": 8})]
        + [trial(f"t{i:02d}", 2, {"train.epochs": 4}) for i in range(many - 2)],
    )
    read: list[str] = []
    real = registry.client.get_metric_history

    def counted(run: str, key: str) -> object:  # a spy: the real store answers
        read.append(run)
        return real(run, key)

    monkeypatch.setattr(registry.client, "get_metric_history", counted)
    card = render_card(registry, "m", v1)
    assert len(read) == cards._MAX_TRIALS, len(read)  # not one per trial (32)
    assert "| short | ran to the limit (3 epochs) |" in card  # its own 3, not the config's 10
    assert (
        "| early-stopped at epoch 2 of 4 |" in card
        and "| cut | early-stopped at epoch 4 of 8 |" in card
    )
