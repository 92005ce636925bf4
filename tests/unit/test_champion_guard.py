"""The champion comparison's two safety rules (no registry, no Ray): the guard metric, which
refuses a candidate that wins on log loss only because noisy labels reward its lack of
confidence, and the row floor, below which no comparison is made (inconclusive, refused).

The models are fixed linear ones over known relations (`test_paired._linear`), so each
case's truth is known exactly: which model ranks better, and on which labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from raymlops.core.config import GateConfig
from raymlops.core.errors import ConfigError
from raymlops.loop.gate import evaluate_gate
from raymlops.model.metrics import classification_metrics
from raymlops.model.predictor import Predictor
from tests.unit.test_paired import _linear


def _balanced(rows: int, seed: int, flip: float = 0.0) -> pd.DataFrame:
    """P(yes) = sigmoid(3·f0); f1 is noise the label ignores; a share `flip` of the labels
    flipped at random (label noise that does not depend on the row)."""
    rng = np.random.default_rng(seed)
    f0, f1 = rng.normal(size=rows), rng.normal(size=rows)
    yes = rng.random(rows) < 1 / (1 + np.exp(-3.0 * f0))
    yes ^= rng.random(rows) < flip
    return pd.DataFrame({"f0": f0, "f1": f1, "label": np.where(yes, "yes", "no")})


def _log_loss(model: Predictor, frame: pd.DataFrame) -> float:
    outputs = model.predict_matrix(model.preprocessor.transform(frame))
    truth = model.preprocessor.encode_target(frame["label"])
    return classification_metrics(truth, outputs, 2)["log_loss"]


@pytest.fixture(scope="module")
def models() -> tuple[Predictor, Predictor, pd.DataFrame]:
    """The champion (the true relation, confident) and a candidate as label noise makes one:
    far less confident, and leaning on the noise feature f1 (so it ranks rows worse)."""
    held_out = _balanced(600, 1)
    champion = _linear(held_out, 3.0, 0.0, 0.0, 1)
    noisy = _linear(held_out, 0.4, 0.25, 0.0, 2)
    return champion, noisy, held_out


def test_noisy_labels_make_log_loss_prefer_a_worse_model_and_the_guard_refuses_it(
    models: tuple[Predictor, Predictor, pd.DataFrame],
) -> None:
    champion, noisy, held_out = models
    fresh = _balanced(400, 2, flip=0.4)  # recent rows: 40% of the labels flipped
    # The truth on clean labels: the noise-trained candidate is far worse.
    clean = _balanced(5000, 3)
    assert _log_loss(noisy, clean) > _log_loss(champion, clean) + 0.1

    unguarded = GateConfig.model_validate({"champion": {"guard": "none"}})
    fooled = evaluate_gate(unguarded, noisy, held_out, "label", champion=champion, fresh=fresh)
    assert fooled.passed  # log loss on the noisy labels: "better", with 95% confidence
    assert fooled.comparison is not None and fooled.comparison["paired"]["low"] > 0
    assert "guard" not in fooled.comparison and len(fooled.checks) == 1

    guarded = evaluate_gate(GateConfig(), noisy, held_out, "label", champion=champion, fresh=fresh)
    assert guarded.status == "failed"
    log_loss, guard = guarded.checks
    assert log_loss.status == "passed" and log_loss.name.startswith("log_loss vs v1 on 400")
    assert guard.status == "failed" and guard.name.startswith("roc_auc guard vs v1 on 400")
    compared = guarded.comparison
    assert compared is not None and compared["basis"] == "fresh"
    recorded = compared["guard"]
    assert (recorded["metric"], recorded["method"], recorded["rows"]) == (
        "roc_auc",
        "paired bootstrap",
        400,
    )
    assert recorded["required"] == -0.05 and recorded["low"] < -0.05 and not recorded["passed"]
    assert "; guard: paired bootstrap on 400 fresh rows: roc_auc" in compared["summary"]
    assert "roc_auc guard" in guarded.table()


def test_a_really_better_candidate_passes_the_comparison_and_its_guard(
    models: tuple[Predictor, Predictor, pd.DataFrame],
) -> None:
    champion, noisy, held_out = models
    fresh = _balanced(400, 4)
    # Now the noisy-looking model is the champion and the true relation the candidate.
    better = evaluate_gate(GateConfig(), champion, held_out, "label", champion=noisy, fresh=fresh)
    assert better.passed and [c.status for c in better.checks] == ["passed", "passed"]
    assert better.comparison is not None and better.comparison["guard"]["low"] > 0
    # An identical candidate passes the guard as it passes the comparison (not worse).
    same = evaluate_gate(GateConfig(), champion, held_out, "label", champion=champion, fresh=fresh)
    assert same.passed and same.comparison is not None
    assert same.comparison["guard"]["difference"] == 0.0


def test_the_guard_fits_the_compared_metric_and_the_task(
    models: tuple[Predictor, Predictor, pd.DataFrame],
) -> None:
    champion, noisy, held_out = models
    fresh = _balanced(400, 2, flip=0.4)

    def gate(champion_section: dict[str, object]) -> GateConfig:
        return GateConfig.model_validate({"champion": champion_section})

    # 'auto' guards probability scores only: accuracy (McNemar) and ROC AUC go unguarded.
    for metric in ("accuracy", "roc_auc"):
        result = evaluate_gate(
            gate({"metric": metric}), noisy, held_out, "label", champion=champion, fresh=fresh
        )
        assert result.comparison is not None and "guard" not in result.comparison, metric
    # A named guard is used as named: accuracy with McNemar's test, at guard_margin.
    named = evaluate_gate(
        gate({"guard": "accuracy", "guard_margin": 0.02}),
        noisy,
        held_out,
        "label",
        champion=champion,
        fresh=fresh,
    )
    assert named.comparison is not None
    assert (named.comparison["guard"]["method"], named.comparison["guard"]["required"]) == (
        "McNemar",
        -0.02,
    )
    with pytest.raises(ConfigError, match="guard: 'log_loss' is the compared metric"):
        evaluate_gate(
            gate({"guard": "log_loss"}), noisy, held_out, "label", champion=champion, fresh=fresh
        )
    with pytest.raises(ConfigError, match="'rmse' is not a classification metric"):
        evaluate_gate(
            gate({"guard": "rmse"}), noisy, held_out, "label", champion=champion, fresh=fresh
        )
    with pytest.raises(ValidationError, match="unknown metric 'auroc'"):
        gate({"guard": "auroc"})
    # Both named: refused when the config is read, before any search runs.
    with pytest.raises(ValidationError, match="guard 'log_loss' is the compared metric"):
        gate({"metric": "log_loss", "guard": "log_loss"})


@pytest.mark.parametrize("positives", [0, 4])
def test_the_roc_auc_guard_on_too_few_rows_of_a_class_is_inconclusive_and_says_so(
    models: tuple[Predictor, Predictor, pd.DataFrame], positives: int
) -> None:
    """Rare positives: with none, ROC AUC is undefined; with a few, its interval spans most
    of [0, 1]. The guard then fails as inconclusive with its reason — not on a NaN — and the
    comparison on log loss is still made and reported."""
    champion, _, held_out = models
    pool = _balanced(2000, 6)
    fresh = pd.concat(
        [pool[pool["label"] == "no"].head(200), pool[pool["label"] == "yes"].head(positives)]
    )
    result = evaluate_gate(
        GateConfig(), champion, held_out, "label", champion=champion, fresh=fresh
    )
    assert result.status == "failed" and result.comparison is not None
    main, guard = result.checks
    assert main.status == "passed" and main.name.startswith("log_loss vs")
    assert guard.status == "failed" and guard.name.startswith("roc_auc guard")
    assert f"{positives} fresh rows of class 'yes', ROC AUC needs ≥ 10" in guard.detail
    assert result.comparison["guard"]["inconclusive"]
    assert "guard: inconclusive" in result.comparison["summary"]
    # With enough of each class the same candidate (the champion itself) passes the guard.
    enough = pd.concat([fresh, pool[pool["label"] == "yes"].iloc[positives : positives + 60]])
    assert evaluate_gate(
        GateConfig(), champion, held_out, "label", champion=champion, fresh=enough
    ).passed


def test_too_few_rows_to_compare_is_inconclusive_and_refused(
    models: tuple[Predictor, Predictor, pd.DataFrame],
) -> None:
    champion, _, held_out = models
    # The champion itself as candidate: on enough rows it passes (not worse), so only the
    # row count can refuse it here.
    few_held_out = held_out.iloc[:20]
    refused = evaluate_gate(GateConfig(), champion, few_held_out, "label", champion=champion)
    assert refused.status == "failed" and refused.champion is None
    (check,) = refused.checks
    assert check.status == "failed" and check.limit == "≥ 30 rows"
    assert check.detail.startswith("inconclusive: 20 held-out rows, below gate.champion.min_rows")
    compared = refused.comparison
    assert compared is not None and compared["inconclusive"] and compared["rows"] == 20
    assert compared["basis"] == "held-out" and "champion kept" in compared["note"]
    assert "no fresh labelled rows" in compared["note"]
    assert evaluate_gate(GateConfig(), champion, held_out, "label", champion=champion).passed

    # Fresh rows above min_fresh_rows (10) but below min_rows (50) fall back to the 600
    # held-out rows, as fewer than min_fresh_rows would: more fresh rows never decide worse.
    fresh = _balanced(40, 5)
    strict = GateConfig.model_validate({"champion": {"min_fresh_rows": 10, "min_rows": 50}})
    on_fresh = evaluate_gate(strict, champion, held_out, "label", champion=champion, fresh=fresh)
    assert on_fresh.passed and on_fresh.comparison is not None
    assert on_fresh.comparison["basis"] == "held-out"
    assert (
        "40 usable fresh rows of 40, below gate.champion.min_rows (50)"
        in (on_fresh.comparison["note"])
    )
    lenient = GateConfig.model_validate({"champion": {"min_fresh_rows": 10, "min_rows": 10}})
    compared_40 = evaluate_gate(
        lenient, champion, held_out, "label", champion=champion, fresh=fresh
    )
    assert compared_40.passed and compared_40.comparison is not None
    assert compared_40.comparison["paired"]["rows"] == 40
