"""The champion/challenger statistics (no registry, no Ray): McNemar against a hand
computation, the paired bootstrap on clearly better, clearly worse and equal candidates, its
seeded determinism and fast path, the per-row metric terms, and the task-fitting default
metric catching a near-random binary candidate that accuracy lets through."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from raymlops.core.config import FeaturesConfig, GateConfig, PipelineConfig, load_config
from raymlops.data.dataset import ColumnRoles
from raymlops.loop.fresh import KEEP_FRESH_FOLDERS, hold_out_fresh
from raymlops.loop.gate import evaluate_gate
from raymlops.loop.paired import PairedComparison, mcnemar_comparison, paired_bootstrap
from raymlops.loop.retrain import build_training_data
from raymlops.model.architectures import build_model
from raymlops.model.features import Preprocessor
from raymlops.model.metrics import (
    classification_metrics,
    comparison_metric,
    metric_value,
    regression_metrics,
    resampled_f1_macro,
    row_terms,
)
from raymlops.model.predictor import Predictor

# --------------------------------------------------------------------------- McNemar


def _pairs(both: int, ours_only: int, theirs_only: int, neither: int) -> tuple[np.ndarray, ...]:
    ours = [True] * both + [True] * ours_only + [False] * theirs_only + [False] * neither
    theirs = [True] * both + [False] * ours_only + [True] * theirs_only + [False] * neither
    return np.array(ours), np.array(theirs)


def test_mcnemar_matches_the_exact_binomial_by_hand() -> None:
    # 10 rows only the candidate gets right, 2 only the champion: under "equally accurate"
    # b ~ Binomial(12, 1/2), two-sided p = 2·P(b ≤ 2) = 2·(1 + 12 + 66) / 4096.
    ours, theirs = _pairs(80, 10, 2, 8)
    result = mcnemar_comparison(ours, theirs, margin=0.0)
    assert result.p_value == pytest.approx(158 / 4096)
    assert result.discordant == (10, 2)
    assert result.rows == 100
    assert (result.candidate, result.champion) == (0.90, 0.82)
    assert result.difference == pytest.approx(0.08)
    # The interval is the exact (Clopper-Pearson) one of b/d, mapped to d/n·(2p − 1).
    from scipy.stats import beta

    low_p, high_p = beta.ppf(0.025, 10, 3), beta.ppf(0.975, 11, 2)
    assert result.low == pytest.approx(0.12 * (2 * low_p - 1))
    assert result.high == pytest.approx(0.12 * (2 * high_p - 1))
    assert 0 < result.low < result.difference < result.high
    assert result.passed  # better with 95% confidence: low > 0 = −margin


def test_mcnemar_refuses_a_worse_candidate_and_the_margin_decides_an_equal_one() -> None:
    worse = mcnemar_comparison(*_pairs(80, 2, 10, 8), margin=0.01)
    assert worse.difference == pytest.approx(-0.08)
    assert worse.high < 0 and not worse.passed
    equal = mcnemar_comparison(*_pairs(90, 0, 0, 10), margin=0.01)
    assert (equal.low, equal.high, equal.p_value) == (0.0, 0.0, 1.0)
    assert equal.passed  # 0 ≥ −0.01
    assert mcnemar_comparison(*_pairs(90, 0, 0, 10), margin=0.0).passed  # not worse: 0 ≥ 0
    assert not mcnemar_comparison(*_pairs(89, 0, 1, 10), margin=0.0).passed  # can be worse
    # Balanced discordance on few rows: the interval is too wide to rule out a 1% loss.
    unsure = mcnemar_comparison(*_pairs(40, 5, 5, 10), margin=0.01)
    assert unsure.low < -0.01 < unsure.high and not unsure.passed


# --------------------------------------------------------------------------- bootstrap


def _log_loss_metric(
    y: np.ndarray, ours: np.ndarray, theirs: np.ndarray
) -> tuple[
    Callable[[np.ndarray], tuple[float, float]],
    Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
]:
    """The slow path (metric on each resample) and the fast one (means of row terms)."""

    def one(index: np.ndarray) -> tuple[float, float]:
        return (
            classification_metrics(y[index], ours[index], 2)["log_loss"],
            classification_metrics(y[index], theirs[index], 2)["log_loss"],
        )

    a, b = row_terms("log_loss", y, ours), row_terms("log_loss", y, theirs)
    assert a is not None and b is not None

    def batch(picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return a[picks].mean(axis=1), b[picks].mean(axis=1)

    return one, batch


def _binary(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.4).astype(np.int64)
    score = np.clip(np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.15, rows), 0.02, 0.98)
    return y, np.stack([1 - score, score], axis=1)


def test_bootstrap_passes_a_clearly_better_candidate_and_refuses_a_clearly_worse_one() -> None:
    y, good = _binary(400, 1)
    vague = np.full_like(good, 0.5)  # knows nothing: log loss ln 2
    one, batch = _log_loss_metric(y, good, vague)
    better = paired_bootstrap(
        one, len(y), name="log_loss", higher_is_better=False, margin=0.01, batch_metric=batch
    )
    assert better.candidate < better.champion
    assert better.difference == pytest.approx(better.champion - better.candidate)
    assert 0 < better.low < better.difference < better.high
    assert better.passed and better.method == "paired bootstrap"

    one, batch = _log_loss_metric(y, vague, good)
    worse = paired_bootstrap(
        one, len(y), name="log_loss", higher_is_better=False, margin=0.01, batch_metric=batch
    )
    assert worse.difference == pytest.approx(-better.difference)
    assert worse.high < 0 and not worse.passed


def test_bootstrap_of_an_equal_candidate_is_decided_by_the_margin() -> None:
    y, good = _binary(300, 2)
    one, batch = _log_loss_metric(y, good, good.copy())
    equal = paired_bootstrap(
        one, len(y), name="log_loss", higher_is_better=False, margin=0.01, batch_metric=batch
    )
    # Paired: identical predictions differ by exactly 0 on every resample.
    assert (equal.difference, equal.low, equal.high) == (0.0, 0.0, 0.0)
    assert equal.passed
    strict = paired_bootstrap(
        one, len(y), name="log_loss", higher_is_better=False, margin=0.0, batch_metric=batch
    )
    assert strict.passed  # identical: not worse, the held-out path's rule too
    better = paired_bootstrap(
        one, len(y), name="log_loss", higher_is_better=False, margin=-0.01, batch_metric=batch
    )
    assert not better.passed  # an improvement of 0.01 required: 0 does not reach it


def test_bootstrap_is_seeded_and_its_fast_path_equals_the_slow_one() -> None:
    y, good = _binary(200, 3)
    _, other = _binary(200, 4)
    one, batch = _log_loss_metric(y, good, other)

    def run(seed: int, fast_path: bool = True) -> PairedComparison:
        return paired_bootstrap(
            one,
            len(y),
            name="log_loss",
            higher_is_better=False,
            margin=0.01,
            resamples=300,
            seed=seed,
            batch_metric=batch if fast_path else None,
        )

    fast, slow, again, other_seed = run(7), run(7, fast_path=False), run(7), run(8)
    assert fast == again
    assert (fast.low, fast.high) == pytest.approx((slow.low, slow.high), abs=1e-12)
    assert (fast.low, fast.high) != (other_seed.low, other_seed.high)
    assert fast.to_dict()["seed"] == 7 and "interval" in fast.describe()


def test_bootstrap_and_mcnemar_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="confidence"):
        mcnemar_comparison(np.ones(3, bool), np.ones(3, bool), margin=0, confidence=1.0)
    with pytest.raises(ValueError, match="same rows"):
        mcnemar_comparison(np.ones(3, bool), np.ones(4, bool), margin=0)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap(
            lambda i: (0.0, 0.0), 5, name="x", higher_is_better=True, margin=0, resamples=10
        )


# --------------------------------------------------------------------------- metrics


def test_one_metric_alone_equals_the_metrics_and_f1_resamples_are_vectorised() -> None:
    """The bootstrap computes only the compared metric: each equals its value among all the
    metrics, and macro F1 of many resamples at once (confusion counts by np.bincount) equals
    the per-resample computation, classes missing from a resample included."""
    rng = np.random.default_rng(7)
    for classes in (2, 4):
        y = rng.integers(0, classes, 300)
        probs = rng.dirichlet(np.ones(classes), 300)
        everything = classification_metrics(y, probs, classes)
        for name, value in everything.items():
            assert metric_value(name, y, probs) == pytest.approx(value), (classes, name)
        picks = rng.integers(0, 30, size=(50, 30))  # small resamples: some miss a class
        fast = resampled_f1_macro(y, probs.argmax(axis=1), classes, picks)
        slow = [classification_metrics(y[p], probs[p], classes)["f1_macro"] for p in picks]
        assert fast == pytest.approx(slow)
    truth = np.linspace(-3, 3, 50)
    pred = truth + np.sin(truth)
    for name, value in regression_metrics(truth, pred).items():
        assert metric_value(name, truth, pred) == pytest.approx(value), name

    # The f1_macro gate comparison on fresh rows: the batch path gives the same interval.
    y = rng.integers(0, 3, 400)
    a_probs, b_probs = rng.dirichlet(np.ones(3), 400), rng.dirichlet(np.ones(3), 400)

    def one(index: np.ndarray) -> tuple[float, float]:
        return (
            metric_value("f1_macro", y[index], a_probs[index]),
            metric_value("f1_macro", y[index], b_probs[index]),
        )

    def batch(picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (
            resampled_f1_macro(y, a_probs.argmax(axis=1), 3, picks),
            resampled_f1_macro(y, b_probs.argmax(axis=1), 3, picks),
        )

    fast_result = paired_bootstrap(
        one, 400, name="f1_macro", higher_is_better=True, margin=0.01, batch_metric=batch
    )
    slow_result = paired_bootstrap(one, 400, name="f1_macro", higher_is_better=True, margin=0.01)
    assert (fast_result.low, fast_result.high, fast_result.difference) == pytest.approx(
        (slow_result.low, slow_result.high, slow_result.difference)
    )


def test_row_terms_average_to_the_metrics() -> None:
    y, probs = _binary(250, 5)
    metrics = classification_metrics(y, probs, 2)
    for name in ("accuracy", "log_loss"):
        terms = row_terms(name, y, probs)
        assert terms is not None and terms.mean() == pytest.approx(metrics[name]), name
    truth = np.linspace(-3, 3, 50)
    pred = truth + np.sin(truth)
    reg = regression_metrics(truth, pred)
    mae, sq = row_terms("mae", truth, pred), row_terms("rmse", truth, pred)
    assert mae is not None and sq is not None
    assert mae.mean() == pytest.approx(reg["mae"])
    assert math.sqrt(sq.mean()) == pytest.approx(reg["rmse"])
    assert row_terms("roc_auc", y, probs) is None and row_terms("f1_macro", y, probs) is None


def test_the_default_comparison_metric_fits_the_task() -> None:
    assert comparison_metric(2) == "log_loss"
    assert comparison_metric(5) == "f1_macro"
    assert comparison_metric(None) == "rmse"


# --------------------------------------------------------------------------- the gate


def _imbalanced(rows: int, seed: int) -> pd.DataFrame:
    """About 9% positives: P(yes) = sigmoid(1.5·(f0 − 2.2)); f1 is noise."""
    rng = np.random.default_rng(seed)
    f0, f1 = rng.normal(size=rows), rng.normal(size=rows)
    yes = rng.random(rows) < 1 / (1 + np.exp(-1.5 * (f0 - 2.2)))
    return pd.DataFrame({"f0": f0, "f1": f1, "label": np.where(yes, "yes", "no")})


def _linear(frame: pd.DataFrame, w0: float, w1: float, bias: float, version: int) -> Predictor:
    """logit(yes) − logit(no) = w0·f0 + w1·f1 + bias."""
    roles = ColumnRoles("label", "classification", ["f0", "f1"], [], [], ["no", "yes"])
    prep = Preprocessor.fit(
        pa.Table.from_pandas(frame), roles, FeaturesConfig(scale=False, missing_indicators=False)
    )
    model = build_model("mlp", {"depth": 0}, prep.n_outputs, prep.n_targets)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.net[0].weight[1, 0] = w0
        model.net[0].weight[1, 1] = w1
        model.net[0].bias[1] = bias
    spec = {"name": "mlp", "params": {"depth": 0}, "in_features": prep.n_outputs, "out_features": 2}
    return Predictor(model, prep, spec, metadata={"name": "m", "version": version})


def test_a_near_random_binary_candidate_passes_on_accuracy_but_not_by_default() -> None:
    held_out, fresh = _imbalanced(2000, 3), _imbalanced(1500, 4)
    champion = _linear(held_out, 1.5, 0.0, -1.5 * 2.2, 1)  # the true relation
    rate = float((held_out["label"] == "yes").mean())
    near_random = _linear(held_out, 0.0, 0.3, math.log(rate / (1 - rate)), 2)

    on_accuracy = evaluate_gate(
        GateConfig.model_validate({"champion": {"metric": "accuracy"}}),
        near_random,
        held_out,
        "label",
        champion=champion,
    )
    assert on_accuracy.passed  # accuracy falls by less than the 0.01 slack
    assert on_accuracy.metrics["roc_auc"] < 0.55
    assert on_accuracy.champion is not None
    assert on_accuracy.champion["metrics"]["accuracy"] - on_accuracy.metrics["accuracy"] < 0.01
    assert on_accuracy.comparison is not None and on_accuracy.comparison["basis"] == "held-out"

    default = evaluate_gate(GateConfig(), near_random, held_out, "label", champion=champion)
    assert [(c.kind, c.name, c.status) for c in default.checks] == [
        ("champion", "log_loss", "failed")
    ]
    assert "no fresh labelled rows" in default.comparison["note"]  # type: ignore[index]

    paired = evaluate_gate(
        GateConfig(), near_random, held_out, "label", champion=champion, fresh=fresh
    )
    check, guard = paired.checks  # log loss, then its ROC AUC guard (binary: the default)
    assert check.status == "failed" and "1500 fresh rows (paired bootstrap)" in check.name
    assert guard.status == "failed" and guard.name.startswith("roc_auc guard vs v")
    compared = paired.comparison
    assert compared is not None and compared["basis"] == "fresh" and compared["rows"] == 1500
    figures = compared["paired"]
    assert figures["high"] < 0 and figures["metric"] == "log_loss"
    assert "interval" in paired.table()

    # The champion against itself on the fresh rows passes; McNemar when comparing accuracy.
    same = evaluate_gate(GateConfig(), champion, held_out, "label", champion=champion, fresh=fresh)
    assert same.passed and same.comparison["paired"]["difference"] == 0.0  # type: ignore[index]
    mcnemar = evaluate_gate(
        GateConfig.model_validate({"champion": {"metric": "accuracy"}}),
        near_random,
        held_out,
        "label",
        champion=champion,
        fresh=fresh,
    )
    assert mcnemar.comparison["paired"]["method"] == "McNemar"  # type: ignore[index]


def test_an_identical_candidate_with_margin_zero_passes_on_both_paths() -> None:
    """One rule on both paths: the champion against itself with max_regression 0 is not
    worse, on the held-out rows (metric values) and on fresh rows (a paired test)."""
    held_out, fresh = _imbalanced(400, 3), _imbalanced(300, 4)
    champion = _linear(held_out, 1.5, 0.0, -1.5 * 2.2, 1)
    for metric in ("log_loss", "accuracy", "f1_macro", "roc_auc"):
        gate = GateConfig.model_validate({"champion": {"metric": metric, "max_regression": 0}})
        plain = evaluate_gate(gate, champion, held_out, "label", champion=champion)
        paired = evaluate_gate(gate, champion, held_out, "label", champion=champion, fresh=fresh)
        assert plain.comparison is not None and plain.comparison["basis"] == "held-out"
        assert paired.comparison is not None and paired.comparison["basis"] == "fresh"
        assert plain.passed and paired.passed, (metric, plain.table(), paired.table())


# --------------------------------------------------------------------------- fresh rows


def _retrain_config(tmp_path: Path, *overrides: str) -> PipelineConfig:
    data = tmp_path / "train.csv"
    pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": ["a", "b", "a", "b"]}).to_csv(data, index=False)
    return load_config(None, [f"data.path={data}", "data.label=y", *overrides])


def test_fresh_rows_are_carved_out_before_the_training_set_is_built(tmp_path: Path) -> None:
    config = _retrain_config(tmp_path)
    recent = tmp_path / "recent.parquet"
    labels = pd.array(["a", "b"] * 95 + [None] * 10, dtype="string")
    pd.DataFrame({"x": 100 + np.arange(200.0), "y": labels}).to_parquet(recent)

    split = hold_out_fresh(config, tmp_path / "home", str(recent))
    assert split.fresh is not None and split.train is not None
    fresh, train = pd.read_parquet(split.fresh), pd.read_parquet(split.train)
    assert split.rows == len(fresh) and 40 <= len(fresh) <= 75  # about 0.3 of the 190 labelled
    assert fresh["y"].notna().all()  # only labelled rows can judge
    assert set(fresh["x"]).isdisjoint(train["x"])
    assert sorted([*fresh["x"], *train["x"]]) == list(100 + np.arange(200.0))
    assert f"{len(fresh)} of 190 recent labelled rows held out" in split.note
    again = hold_out_fresh(config, tmp_path / "home", str(recent))  # seeded: the same rows
    assert again.fresh is not None
    assert pd.read_parquet(again.fresh)["x"].tolist() == fresh["x"].tolist()

    # The candidate trains on the reference and the rest of the recent rows, never on these.
    path, rows = build_training_data(config, tmp_path / "home", split.train)
    assert rows == 4 + 200 - len(fresh)  # the unlabelled rows go in too
    trained_on = set(pd.read_parquet(path)["x"])
    assert trained_on.isdisjoint(fresh["x"]) and set(train["x"]) < trained_on


def test_a_rows_side_never_changes_as_the_recent_rows_grow(tmp_path: Path) -> None:
    """Between watch passes `retrain.recent_data` grows: a row held out before stays held
    out and a row that trained keeps training (else a later champion's "fresh" rows would be
    rows it trained on). By the id column when there is one, else by the row's content."""
    rng = np.random.default_rng(0)
    grown = pd.DataFrame(
        {"id": np.arange(600), "x": rng.normal(size=600), "y": rng.choice(["a", "b"], 600)}
    )
    for ids in ([], ["id"]):
        config = _retrain_config(tmp_path, f"data.id_columns={json.dumps(ids)}")
        sides = []
        for rows in (200, 600):  # the same first 200 rows, then 400 more, shuffled
            recent = tmp_path / f"recent-{rows}.parquet"
            grown.iloc[:rows].sample(frac=1.0, random_state=rows).to_parquet(recent)
            split = hold_out_fresh(config, tmp_path / "home", str(recent))
            assert split.fresh is not None
            sides.append(set(pd.read_parquet(split.fresh)["id"]))
        before, after = sides
        assert before == {i for i in after if i < 200}, ids
        assert 0.2 < len(after) / 600 < 0.4
    # The same rows with another id column: the side follows the id, not the content.
    config = _retrain_config(tmp_path, 'data.id_columns=["id"]')
    relabelled = grown.assign(x=grown["x"] + 1.0)
    recent = tmp_path / "relabelled.parquet"
    relabelled.to_parquet(recent)
    split = hold_out_fresh(config, tmp_path / "home", str(recent))
    assert split.fresh is not None and set(pd.read_parquet(split.fresh)["id"]) == sides[1]
    # Only the newest written splits are kept (7 written here).
    for _ in range(2):
        hold_out_fresh(config, tmp_path / "home", str(recent))
    folders = list((tmp_path / "home" / "retrain" / config.registry.model_name).glob("fresh-*"))
    assert len(folders) == KEEP_FRESH_FOLDERS, folders


def test_too_few_fresh_rows_are_not_held_out_and_the_note_says_why(tmp_path: Path) -> None:
    recent = tmp_path / "recent.parquet"
    pd.DataFrame({"x": np.arange(50.0), "y": ["a", "b"] * 25}).to_parquet(recent)
    few = hold_out_fresh(_retrain_config(tmp_path), tmp_path / "home", str(recent))
    assert (few.train, few.fresh, few.rows) == (str(recent), None, 0)
    assert "below gate.champion.min_fresh_rows (30)" in few.note
    off = _retrain_config(tmp_path, "gate.champion.fresh_share=0")
    assert hold_out_fresh(off, tmp_path / "home", str(recent)).fresh is None
    assert hold_out_fresh(off, tmp_path / "home", None).note == "no recent labelled rows"
    with pytest.raises(ValidationError, match="mcnemar"):
        GateConfig.model_validate({"champion": {"test": "mcnemar"}})


def test_fresh_rows_of_a_class_neither_model_saw_are_left_out_and_counted() -> None:
    """A new class in the fresh rows (a new distribution) cannot be scored by a model that
    never saw it: those rows are left out of both models' scores and the record says how
    many, instead of the gate failing with 'not one of the training classes'."""
    held_out, fresh = _imbalanced(400, 3), _imbalanced(300, 4)
    fresh.loc[:39, "label"] = "maybe"
    champion = _linear(held_out, 1.5, 0.0, -1.5 * 2.2, 1)
    result = evaluate_gate(
        GateConfig(), champion, held_out, "label", champion=champion, fresh=fresh
    )
    compared = result.comparison
    assert compared is not None and compared["basis"] == "fresh"
    assert (compared["rows"], compared["unknown_label_rows"]) == (260, 40)
    assert compared["unknown_labels"] == ["maybe"]
    assert "40 of a class one model never saw (maybe), scored by neither" in compared["note"]
    assert result.passed


def test_unlabelled_or_too_few_fresh_rows_fall_back_to_the_held_out_rows() -> None:
    held_out, fresh = _imbalanced(400, 3), _imbalanced(300, 4)
    champion = _linear(held_out, 1.5, 0.0, -1.5 * 2.2, 1)
    unlabelled = fresh.assign(label=None)
    result = evaluate_gate(
        GateConfig(), champion, held_out, "label", champion=champion, fresh=unlabelled
    )
    compared = result.comparison
    assert compared is not None and compared["basis"] == "held-out"
    assert compared["fresh_unlabelled"] == 300
    assert "0 usable fresh rows of 300 (300 unlabelled left out), below" in compared["note"]
    few = evaluate_gate(
        GateConfig(), champion, held_out, "label", champion=champion, fresh=fresh.iloc[:29]
    )
    assert few.comparison is not None and few.comparison["basis"] == "held-out"
    assert (
        "29 usable fresh rows of 29, below gate.champion.min_fresh_rows (30)"
        in (few.comparison["note"])
    )
    enough = evaluate_gate(
        GateConfig(), champion, held_out, "label", champion=champion, fresh=fresh.iloc[:30]
    )
    assert enough.comparison is not None and enough.comparison["basis"] == "fresh"
