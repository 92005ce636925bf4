"""The gate's pure parts (no registry, no Ray): fairness metrics against hand computations,
every kind of check passing and failing on a hand-built model whose behaviour is known
exactly, the gate config's validation, and the history replay behind rollback/approvals."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from raymlops.core.config import FeaturesConfig, GateConfig, PipelineConfig, load_config
from raymlops.core.errors import ConfigError
from raymlops.data.dataset import ColumnRoles
from raymlops.loop.gate import (
    CheckResult,
    GateResult,
    demographic_parity_difference,
    equalized_odds_difference,
    evaluate_gate,
    group_rates,
)
from raymlops.loop.governance import approvals_for, previous_target
from raymlops.model.architectures import build_model
from raymlops.model.features import Preprocessor
from raymlops.model.predictor import Predictor
from raymlops.registry.store import AliasEvent

# --------------------------------------------------------------------------- fairness metrics


def test_fairness_metrics_match_a_hand_computation() -> None:
    y_true = np.array([1, 1, 0, 0, 1, 0, 0, 0], dtype=bool)
    y_pred = np.array([1, 0, 1, 0, 1, 1, 1, 0], dtype=bool)
    groups = np.array(["a"] * 4 + ["b"] * 4)
    rates = group_rates(y_true, y_pred, groups)
    # a: selected 2/4; TPR 1/2 (rows 0,1 positive, 0 predicted); FPR 1/2 (rows 2,3; 2 predicted)
    # b: selected 3/4; TPR 1/1 (row 4); FPR 2/3 (rows 5,6,7; 5 and 6 predicted)
    assert rates["a"] == {
        "rows": 4.0,
        "selection_rate": 0.5,
        "true_positive_rate": 0.5,
        "false_positive_rate": 0.5,
    }
    assert rates["b"]["selection_rate"] == 0.75
    assert rates["b"]["true_positive_rate"] == 1.0
    assert rates["b"]["false_positive_rate"] == pytest.approx(2 / 3)
    assert demographic_parity_difference(y_pred, groups) == pytest.approx(0.25)
    # max(TPR gap 0.5, FPR gap 1/6)
    assert equalized_odds_difference(y_true, y_pred, groups) == pytest.approx(0.5)


def test_small_groups_and_undefined_rates_are_left_out() -> None:
    y_pred = np.array([1, 0, 0, 0, 1], dtype=bool)
    groups = np.array(["a", "a", "b", "b", "tiny"])
    # tiny (1 row, selection 1.0) is dropped with min_group_rows=2: a 0.5 vs b 0.0.
    assert demographic_parity_difference(y_pred, groups, min_group_rows=2) == 0.5
    assert demographic_parity_difference(y_pred, groups) == 1.0
    # One group left: no comparison possible.
    assert math.isnan(demographic_parity_difference(y_pred, np.array(["a"] * 5)))
    # A group with no negatives has an undefined FPR: only the TPR gap counts then.
    truth = np.array([1, 1, 1, 0], dtype=bool)
    pred = np.array([1, 0, 1, 0], dtype=bool)
    grp = np.array(["x", "x", "y", "y"])
    assert math.isnan(group_rates(truth, pred, grp)["x"]["false_positive_rate"])
    assert equalized_odds_difference(truth, pred, grp) == pytest.approx(0.5)


def test_fairness_metrics_agree_with_confusion_matrices_on_random_data() -> None:
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(7)
    y_true = rng.random(3000) < 0.4
    y_pred = rng.random(3000) < np.where(y_true, 0.7, 0.2)
    groups = rng.choice(["p", "q", "r"], size=3000, p=[0.5, 0.3, 0.2])
    selection, tpr, fpr = [], [], []
    for g in ("p", "q", "r"):
        m = groups == g
        tn, fp, fn, tp = confusion_matrix(y_true[m], y_pred[m], labels=[False, True]).ravel()
        selection.append((tp + fp) / m.sum())
        tpr.append(tp / (tp + fn))
        fpr.append(fp / (fp + tn))
    assert demographic_parity_difference(y_pred, groups) == pytest.approx(
        max(selection) - min(selection)
    )
    assert equalized_odds_difference(y_true, y_pred, groups) == pytest.approx(
        max(max(tpr) - min(tpr), max(fpr) - min(fpr))
    )


# --------------------------------------------------------------------------- a known model

N = 200


def _rows() -> pd.DataFrame:
    """f0 decides the label (yes iff f0 > 0) except every 10th row, which is flipped; those
    rows all have c0 == 'a' (even rows), so slice a has accuracy 0.8 and slice b 1.0. The
    group column `side` separates f0 < 0 from f0 > 0."""
    f0 = np.concatenate([np.linspace(-2, -0.01, N // 2), np.linspace(0.01, 2, N // 2)])
    label = np.where(f0 > 0, "yes", "no")
    flip = np.arange(N) % 10 == 0
    label[flip] = np.where(label[flip] == "yes", "no", "yes")
    return pd.DataFrame(
        {
            "id": np.arange(N),
            "f0": f0,
            "c0": np.where(np.arange(N) % 2 == 0, "a", "b"),
            "side": np.where(f0 < 0, "left", "right"),
            "label": label,
        }
    )


def _predictor(weight: float) -> Predictor:
    """A linear model: logit(yes) − logit(no) = weight · f0; c0 has zero weight (irrelevant)."""
    frame = _rows()
    roles = ColumnRoles("label", "classification", ["f0"], ["c0"], ["id"], ["no", "yes"])
    prep = Preprocessor.fit(
        pa.Table.from_pandas(frame), roles, FeaturesConfig(scale=False, missing_indicators=False)
    )
    model = build_model("mlp", {"depth": 0}, prep.n_outputs, prep.n_targets)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.net[0].weight[1, 0] = weight
    spec = {"name": "mlp", "params": {"depth": 0}, "in_features": prep.n_outputs, "out_features": 2}
    return Predictor(model, prep, spec, metadata={"name": "m", "version": 1 if weight else 0})


@pytest.fixture(scope="module")
def good() -> Predictor:
    return _predictor(3.0)


@pytest.fixture(scope="module")
def constant() -> Predictor:
    return _predictor(0.0)  # always 'no' (argmax of equal logits)


def _gate(**values: Any) -> GateConfig:
    return GateConfig.model_validate({"champion": None, **values})


def _only(result: GateResult, kind: str) -> CheckResult:
    checks = [c for c in result.checks if c.kind == kind]
    assert len(checks) == 1, result.checks
    return checks[0]


def test_metrics_and_thresholds(good: Predictor) -> None:
    passing = evaluate_gate(
        _gate(thresholds={"accuracy": {"min": 0.85}, "log_loss": {"max": 10}}),
        good,
        _rows(),
        "label",
    )
    assert passing.metrics["accuracy"] == pytest.approx(0.9)
    assert passing.status == "passed"
    assert [c.status for c in passing.checks] == ["passed", "passed"]
    failing = evaluate_gate(_gate(thresholds={"accuracy": {"min": 0.95}}), good, _rows(), "label")
    assert failing.status == "failed"
    assert failing.checks[0].value == pytest.approx(0.9)
    assert failing.checks[0].limit == "≥ 0.9500"
    with pytest.raises(ConfigError, match="'rmse' is not a classification metric"):
        evaluate_gate(_gate(thresholds={"rmse": {"max": 1}}), good, _rows(), "label")


def test_champion_comparison_on_the_same_rows(good: Predictor, constant: Predictor) -> None:
    beat = {"champion": {"metric": "accuracy", "min_improvement": 0.3}}
    result = evaluate_gate(
        GateConfig.model_validate(beat), good, _rows(), "label", champion=constant
    )
    check = _only(result, "champion")
    assert check.status == "passed"
    assert result.champion is not None and result.champion["metrics"]["accuracy"] == 0.5
    assert check.limit.startswith("≥ 0.8000")
    more = {"champion": {"metric": "accuracy", "min_improvement": 0.5}}
    result = evaluate_gate(
        GateConfig.model_validate(more), good, _rows(), "label", champion=constant
    )
    assert _only(result, "champion").status == "failed"
    # A worse candidate against a better champion, default rule (worse by at most 0.01).
    result = evaluate_gate(GateConfig(), constant, _rows(), "label", champion=good)
    assert _only(result, "champion").status == "failed"
    assert result.status == "failed"
    # Lower-is-better metrics compare the other way round.
    loss = {"champion": {"metric": "log_loss", "max_regression": 0.0}}
    result = evaluate_gate(
        GateConfig.model_validate(loss), good, _rows(), "label", champion=constant
    )
    assert _only(result, "champion").status == "passed"
    # No champion: skipped, not failed.
    result = evaluate_gate(GateConfig(), good, _rows(), "label")
    assert _only(result, "champion").status == "skipped"
    assert result.status == "passed"


def test_slices_and_minimum_functionality(good: Predictor) -> None:
    result = evaluate_gate(
        _gate(
            slices=["c0", "f0"],
            slice_minimums=[
                {"column": "c0", "metric": "accuracy", "min": 0.85},
                {"column": "c0", "values": ["b"], "metric": "accuracy", "min": 0.95},
                {"column": "c0", "metric": "accuracy", "min": 0.75},
            ],
        ),
        good,
        _rows(),
        "label",
    )
    by_slice = {r["slice"]: r for r in result.slices["c0"]}
    assert by_slice["a"]["rows"] == by_slice["b"]["rows"] == 100
    assert by_slice["a"]["metrics"]["accuracy"] == pytest.approx(0.8)
    assert by_slice["b"]["metrics"]["accuracy"] == pytest.approx(1.0)
    # Numeric slice columns are cut into quantile bins, listed in numeric order.
    bins = [r["slice"] for r in result.slices["f0"]]
    assert len(bins) == 4 and bins[0].startswith("[-2")
    assert sum(r["rows"] for r in result.slices["f0"]) == N
    statuses = [c.status for c in result.checks]
    assert statuses == ["failed", "passed", "passed"]
    assert "a=0.8000" in result.checks[0].detail
    assert result.checks[0].value == pytest.approx(0.8)  # the worst slice
    # Slices below min_slice_rows are reported but not judged.
    small = evaluate_gate(
        _gate(
            min_slice_rows=150,
            slice_minimums=[{"column": "c0", "metric": "accuracy", "min": 0.99}],
        ),
        good,
        _rows(),
        "label",
    )
    assert small.checks[0].status == "skipped"
    with pytest.raises(ConfigError, match="column 'nope'"):
        evaluate_gate(_gate(slices=["nope"]), good, _rows(), "label")


def test_invariance_to_irrelevant_perturbations(good: Predictor) -> None:
    result = evaluate_gate(
        _gate(
            invariance=[
                {"column": "id", "perturbation": "shuffle"},
                {"column": "c0", "perturbation": "set", "value": "a"},
                {"column": "c0", "perturbation": "map", "value": {"a": "b", "b": "zzz"}},
                {"column": "f0", "perturbation": "noise", "value": 0.001, "max_changed": 0.05},
                {"column": "f0", "perturbation": "shuffle", "max_changed": 0.1},
                {"column": "f0", "perturbation": "scale", "value": -1},
            ]
        ),
        good,
        _rows(),
        "label",
    )
    values = [c.value for c in result.checks]
    statuses = [c.status for c in result.checks]
    assert statuses == ["passed", "passed", "passed", "passed", "failed", "failed"]
    assert values[:3] == [0.0, 0.0, 0.0]
    assert values[4] is not None and values[4] > 0.2
    assert values[5] == 1.0  # mirroring f0 flips every prediction
    with pytest.raises(ConfigError, match="needs a numeric column"):
        evaluate_gate(
            _gate(invariance=[{"column": "c0", "perturbation": "add", "value": 1}]),
            good,
            _rows(),
            "label",
        )


def test_directional_expectations(good: Predictor, constant: Predictor) -> None:
    gate = _gate(
        directional=[
            {"column": "f0", "add": 0.5, "expect": "increase"},
            {"column": "f0", "add": 0.5, "expect": "decrease"},
            {"column": "f0", "add": 0.5, "expect": "increase", "target_class": "no"},
            {"column": "f0", "add": -0.5, "expect": "increase", "target_class": "no"},
        ]
    )
    result = evaluate_gate(gate, good, _rows(), "label")
    assert [c.status for c in result.checks] == ["passed", "failed", "failed", "passed"]
    assert result.checks[0].value == 1.0
    assert result.checks[1].value == 0.0
    # A constant model does not respond at all.
    flat = evaluate_gate(gate, constant, _rows(), "label")
    assert [c.status for c in flat.checks] == ["failed"] * 4
    with pytest.raises(ConfigError, match="class 'maybe'"):
        evaluate_gate(
            _gate(
                directional=[
                    {"column": "f0", "add": 1, "expect": "increase", "target_class": "maybe"}
                ]
            ),
            good,
            _rows(),
            "label",
        )


def test_fairness_limits(good: Predictor) -> None:
    side = {"sensitive_column": "side", "max_demographic_parity_difference": 0.5}
    result = evaluate_gate(_gate(fairness=side), good, _rows(), "label")
    check = _only(result, "fairness")
    assert check.status == "failed"
    assert check.value == pytest.approx(1.0)  # left: never 'yes'; right: always 'yes'
    assert result.fairness is not None
    assert result.fairness["positive_class"] == "yes"
    assert set(result.fairness["groups"]) == {"left", "right"}
    fair = {
        "sensitive_column": "c0",
        "max_demographic_parity_difference": 0.1,
        "max_equalized_odds_difference": 0.2,
    }
    result = evaluate_gate(_gate(fairness=fair), good, _rows(), "label")
    assert [c.status for c in result.checks] == ["passed", "passed"]
    # The sensitive column need not be a feature; with too few rows per group: skipped.
    few = {**fair, "min_group_rows": 500}
    result = evaluate_gate(_gate(fairness=few), good, _rows(), "label")
    assert [c.status for c in result.checks] == ["skipped", "skipped"]
    assert result.status == "passed"


def test_latency_budget(good: Predictor) -> None:
    def fixed(_p: Predictor, _f: pd.DataFrame, n: int, _w: int) -> dict[str, float]:
        return {"requests": float(n), "p50_ms": 2.0, "p95_ms": 5.0, "p99_ms": 9.0}

    ok = evaluate_gate(_gate(latency={"p95_ms": 10}), good, _rows(), "label", latency_fn=fixed)
    assert _only(ok, "latency").status == "passed"
    slow = evaluate_gate(_gate(latency={"p95_ms": 1}), good, _rows(), "label", latency_fn=fixed)
    assert _only(slow, "latency").status == "failed"
    # The real measurement: single-row predictions through Predictor.predict.
    real = evaluate_gate(
        _gate(latency={"p95_ms": 60_000, "requests": 30, "warmup": 2}), good, _rows(), "label"
    )
    assert real.latency is not None and real.latency["requests"] == 30
    assert 0 < real.latency["p50_ms"] <= real.latency["p95_ms"] <= real.latency["p99_ms"]
    assert _only(real, "latency").status == "passed"


def test_result_round_trips_and_prints_a_table(good: Predictor, constant: Predictor) -> None:
    result = evaluate_gate(
        GateConfig.model_validate({"thresholds": {"accuracy": {"min": 0.95}}, "slices": ["c0"]}),
        good,
        _rows(),
        "label",
        champion=constant,
        data={"source": "rows.parquet", "digest": "ab" * 32, "split": "file"},
    )
    again = GateResult.from_dict(result.to_dict())
    assert again.checks == result.checks
    assert again.slices == result.slices
    table = result.table()
    assert "threshold accuracy" in table and "FAIL" in table
    assert "champion v0" in table
    assert table.splitlines()[-1].startswith("FAILED: 2 checks, 1 failed, 0 skipped")


def test_regression_models_reject_fairness() -> None:
    frame = pd.DataFrame({"x": np.linspace(0, 1, 50), "y": np.linspace(0, 2, 50)})
    roles = ColumnRoles("y", "regression", ["x"], [], [], None)
    prep = Preprocessor.fit(pa.Table.from_pandas(frame), roles, FeaturesConfig())
    model = build_model("mlp", {"depth": 0}, prep.n_outputs, 1)
    predictor = Predictor(model, prep, {})
    result = evaluate_gate(
        GateConfig.model_validate({"thresholds": {"rmse": {"max": 100}}}), predictor, frame, "y"
    )
    assert set(result.metrics) == {"rmse", "mae", "r2", "loss"}
    assert result.passed
    with pytest.raises(ConfigError, match="classification models only"):
        evaluate_gate(_gate(fairness={"sensitive_column": "x"}), predictor, frame, "y")


# --------------------------------------------------------------------------- config


def _config_error(tmp_path: Path, gate_yaml: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: n\ndata: {path: d.parquet, label: y}\nregistry: {model_name: n}\n" + gate_yaml
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("gate_yaml", "expected"),
    [
        ("gate: {thresholds: {acuracy: {min: 0.9}}}", "unknown metric 'acuracy'"),
        ("gate: {thresholds: {accuracy: {}}}", "give 'min', 'max' or both"),
        ("gate: {thresholds: {accuracy: {min: 0.9, max: 0.5}}}", "is above max"),
        ("gate: {treshold: {}}", "gate.treshold: unknown key"),
        (
            "gate: {champion: {max_regression: 0.1, min_improvement: 0.1}}",
            "not both",
        ),
        ("gate: {invariance: [{column: a, perturbation: set}]}", "needs a value"),
        ("gate: {invariance: [{column: a, perturbation: add, value: x}]}", "needs a number"),
        ("gate: {invariance: [{column: a, perturbation: shuffle, value: 1}]}", "takes no value"),
        ("gate: {directional: [{column: a, add: 0, expect: increase}]}", "non-zero"),
        ("gate: {fairness: {sensitive_column: s, max_demographic_parity_difference: 2}}", "1"),
        ("gate: {latency: {p95_ms: 0}}", "greater than 0"),
        ("promotion: sometimes", "promotion.mode"),
        ("card: {intended: x}", "card.intended: unknown key"),
    ],
)
def test_gate_config_errors_name_the_key(tmp_path: Path, gate_yaml: str, expected: str) -> None:
    assert expected in _config_error(tmp_path, gate_yaml)


def test_gate_promotion_and_card_defaults() -> None:
    config = load_config(None)
    assert config.gate.champion is not None
    assert config.gate.champion.metric == "auto"
    assert config.gate.champion.max_regression == 0.01
    assert config.gate.thresholds == {}
    assert config.promotion.mode == "auto"
    manual = load_config(None, ["promotion=manual", "card.intended_use=teaching"])
    assert manual.promotion.mode == "manual" and manual.promotion.approvals == 1
    assert manual.card.intended_use == "teaching"
    # The effective config (what a version records) validates again unchanged.
    assert PipelineConfig.model_validate(manual.model_dump(mode="json")) == manual
    beat = load_config(None, ["gate.champion.min_improvement=0.02"])
    assert beat.gate.champion is not None and beat.gate.champion.max_regression is None


def test_every_gate_field_has_a_description() -> None:
    from pydantic import BaseModel

    import raymlops.core.config as cfg

    sections: list[type[BaseModel]] = [
        cfg.GateConfig,
        cfg.MetricBound,
        cfg.ChampionComparison,
        cfg.SliceMinimum,
        cfg.InvarianceTest,
        cfg.DirectionalTest,
        cfg.FairnessConfig,
        cfg.LatencyBudget,
        cfg.PromotionConfig,
        cfg.CardConfig,
    ]
    for section in sections:
        for name, info in section.model_fields.items():
            assert info.description, f"{section.__name__}.{name} has no description"
        assert section.model_config.get("extra") == "forbid"


# --------------------------------------------------------------------------- history replay

_seq = itertools.count(1)


def _event(
    action: str,
    frm: int | None,
    to: int | None,
    *,
    moved: bool = True,
    alias: str = "champion",
    by: str = "u",
) -> AliasEvent:
    return AliasEvent("m", alias, action, frm, to, 0.0, by, "", next(_seq), {}, None, moved)


def test_rollback_walks_back_like_an_undo_stack() -> None:
    events = [
        _event("register", None, 1),
        _event("register", None, 2, alias="challenger"),
        _event("promote", 1, 2),
        _event("gate", None, 3, moved=False),
        _event("auto-rollback", 3, 2, moved=False),  # serving's canary rollback: no move
        _event("promote", 2, 3),
    ]
    assert previous_target(events, "champion", 3) == [2, 1]
    events.append(_event("rollback", 3, 2))
    assert previous_target(events, "champion", 2) == [1]
    events.append(_event("rollback", 2, 1))
    assert previous_target(events, "champion", 1) == []
    events.append(_event("promote", 1, 3))
    assert previous_target(events, "champion", 3) == [1]
    # The alias moved outside raymlops (e.g. in the MLflow UI): the current target counts.
    assert previous_target(events, "champion", 7) == [3, 1]
    assert previous_target([], "champion", None) == []
    assert previous_target(events, "challenger", 2) == []


def test_approvals_count_distinct_people_after_the_latest_gate() -> None:
    events = [
        _event("gate", None, 2, moved=False),
        _event("approve", None, 2, moved=False, by="ann"),
        _event("approve", None, 2, moved=False, by="ann"),
        _event("approve", None, 3, moved=False, by="bob"),
        _event("approve", None, 2, moved=False, by="cid", alias="challenger"),
    ]
    assert approvals_for(events, 2) == ["ann"]
    events.append(_event("approve", None, 2, moved=False, by="dee"))
    assert approvals_for(events, 2) == ["ann", "dee"]
    events.append(_event("gate", None, 2, moved=False))  # a new gate run voids them
    assert approvals_for(events, 2) == []
