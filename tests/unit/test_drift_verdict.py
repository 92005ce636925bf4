"""The dataset verdict weighed by feature importance, per-feature drift rules, and the drift
conventions docs/drift.md states against Evidently's (each pinned here on raw data).

No Ray: a real Predictor (a linear torch model whose weights are set by hand, so which
feature it uses is known) and real drift statistics on seeded samples."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, chisquare, norm

from raymlops.core.config import load_config
from raymlops.core.errors import ConfigError, DataError
from raymlops.data.dataset import ColumnRoles, profile_table
from raymlops.model.features import Preprocessor
from raymlops.model.importance import FeatureImportance, permutation_importance
from raymlops.model.predictor import Predictor
from raymlops.monitor.drift import (
    CategoricalReference,
    CategoricalSketch,
    DriftSettings,
    FeatureDrift,
    FeatureRule,
    NumericReference,
    categorical_drift,
    dataset_drift,
    numeric_drift,
)


def _rows(rng: np.random.Generator, n: int = 3000) -> pa.Table:
    x0, x1 = rng.normal(0, 1, n), rng.normal(0, 1, n)
    return pa.table({"x0": x0, "x1": x1, "y": 2.0 * x0 + rng.normal(0, 0.1, n)})


def _predictor(train: pa.Table) -> Predictor:
    """A linear regression on the standardised inputs that uses x0 only."""
    from raymlops.core.config_training import FeaturesConfig

    roles = ColumnRoles("y", "regression", ["x0", "x1"], [], [])
    prep = Preprocessor.fit(train, roles, FeaturesConfig())
    model = torch.nn.Linear(prep.n_outputs, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
        model.weight[0, prep.output_names.index("x0")] = 1.0
    return Predictor(model, prep, {"name": "linear"})


def test_permutation_importance_finds_the_feature_the_model_uses() -> None:
    train = _rows(np.random.default_rng(0))
    predictor = _predictor(train)
    first = permutation_importance(predictor, train, "y", max_rows=1000, seed=3)
    again = permutation_importance(predictor, train, "y", max_rows=1000, seed=3)
    assert first == again  # seeded
    assert first.rows == 1000 and first.metric == "mse_standardised"
    assert first.importance["x0"] > 1.0  # shuffling x0 costs about twice the target variance
    assert first.importance["x1"] == 0.0  # the model never reads x1
    assert first.weights == {"x0": 1.0, "x1": 0.0}
    assert FeatureImportance.from_dict(first.to_dict()) == first


def test_weights_clip_chance_gains_and_fall_back_to_equal() -> None:
    assert FeatureImportance({"a": 0.3, "b": -0.1, "c": 0.1}).weights == pytest.approx(
        {"a": 0.75, "b": 0.0, "c": 0.25}
    )
    assert FeatureImportance({"a": -0.1, "b": 0.0}).weights == {"a": 0.5, "b": 0.5}


def _feature(name: str, drifted: bool | None, role: str = "feature") -> FeatureDrift:
    return FeatureDrift(
        name,
        "numeric",
        role,
        "wasserstein",
        0.0,
        0.1,
        None,
        drifted,
        100,
        100,
        0.0,
        0.0,  # type: ignore[arg-type]
    )


IMPORTANCE = {"driver": 0.9, "noise": 0.02, "other": 0.08}


def test_a_shift_in_the_feature_that_drives_the_model_is_drift() -> None:
    features = [_feature("driver", True), _feature("noise", False), _feature("other", False)]
    verdict = dataset_drift(features, DriftSettings(), IMPORTANCE)
    assert verdict.method == "weighted" and verdict.drifted is True
    assert verdict.share == pytest.approx(0.9)
    # The unweighted share (1 of 3) would have missed it.
    share = dataset_drift(features, DriftSettings(verdict="share"), IMPORTANCE)
    assert share.method == "share" and share.drifted is False


def test_a_shift_in_a_feature_the_model_ignores_is_not() -> None:
    features = [_feature("driver", False), _feature("noise", True), _feature("other", True)]
    verdict = dataset_drift(features, DriftSettings(), IMPORTANCE)
    assert verdict.drifted is False and verdict.share == pytest.approx(0.1)
    assert dataset_drift(features, DriftSettings(verdict="share"), IMPORTANCE).drifted is True


def test_the_prediction_drifting_is_drift_when_its_reference_is_the_models_own() -> None:
    features = [_feature("driver", False), _feature("prediction", True, "prediction")]
    assert dataset_drift(features, DriftSettings(), IMPORTANCE).drifted is True
    judged = dataset_drift(features, DriftSettings(), IMPORTANCE, prediction_decides=False)
    assert judged.drifted is False and judged.prediction_drifted is None
    assert "the prediction drifted" in dataset_drift(features, None, IMPORTANCE).explain()


def test_without_stored_importance_the_share_decides_and_says_so() -> None:
    features = [_feature("driver", True), _feature("noise", False), _feature("other", False)]
    verdict = dataset_drift(features, DriftSettings(), {})
    assert verdict.method == "share" and verdict.drifted is False
    assert "no feature importance" in verdict.note
    assert verdict.to_dict()["note"] == verdict.note


def test_the_weights_count_every_feature_and_undecided_ones_are_unknown() -> None:
    """A 2%-importance feature that drifts while the important ones have no verdict (too few
    values) does not carry 100% of the importance: re-weighting over the decided features
    used to say DRIFT here."""
    features = [_feature("driver", None), _feature("noise", True), _feature("other", None)]
    verdict = dataset_drift(features, DriftSettings(drift_share=0.6), IMPORTANCE)
    assert verdict.method == "share" and verdict.drifted is True  # 1 of 1 decided
    assert "98% of the importance have no verdict (driver, other)" in verdict.note
    # Some of the importance undecided, not most: weighted, shares of the whole importance.
    features = [_feature("driver", False), _feature("noise", True), _feature("other", None)]
    verdict = dataset_drift(features, DriftSettings(), IMPORTANCE)
    assert verdict.method == "weighted" and verdict.drifted is False
    assert verdict.share == pytest.approx(0.02) and verdict.weights["driver"] == pytest.approx(0.9)
    assert verdict.undecided_weight == pytest.approx(0.08)
    assert "8% on features without a verdict" in verdict.explain()
    assert verdict.to_dict()["undecided_weight"] == pytest.approx(0.08)


def test_features_the_importance_gives_no_weight_still_decide() -> None:
    """Every decided feature at importance 0 (the important one has no verdict): the share
    of importance was 0 whatever drifted ('0 of 0 features')."""
    importance = {"driver": 1.0, "a": 0.0, "b": 0.0}
    features = [_feature("driver", None), _feature("a", True), _feature("b", True)]
    verdict = dataset_drift(features, DriftSettings(), importance)
    assert verdict.method == "share" and verdict.drifted is True and verdict.share == 1.0
    assert "no verdict (driver)" in verdict.note
    # An importance that weighs none of the monitored features: the share, with a note.
    verdict = dataset_drift(features[1:], DriftSettings(), {"gone": 1.0})
    assert verdict.method == "share" and verdict.drifted is True
    assert "weighs none of the features" in verdict.note
    # No feature has a verdict at all: no verdict, not a fallback.
    nothing = dataset_drift([_feature("driver", None)], DriftSettings(), importance)
    assert nothing.drifted is None and nothing.note == ""


def _numeric(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    return rng.normal(shift, 1.0, n)


def _reference(values: np.ndarray) -> NumericReference:
    stats = profile_table(
        pa.table({"x": values, "y": np.zeros(len(values))}),
        ColumnRoles("y", "regression", ["x"], [], []),
    )["columns"]["x"]
    ref = NumericReference.from_profile(stats)
    assert ref is not None
    return ref


def _drift(values: np.ndarray, ref: NumericReference, **settings: Any) -> FeatureDrift:
    sketch = ref.new_sketch(1000)
    sketch.update(values)
    return numeric_drift("x", ref, sketch, DriftSettings(**settings))


def test_a_feature_rule_picks_the_method_and_the_bound() -> None:
    rng = np.random.default_rng(1)
    ref = _reference(_numeric(rng, 5000))
    current = _numeric(rng, 3000, shift=0.15)
    auto = _drift(current, ref)
    assert auto.method == "wasserstein" and auto.drifted is True
    looser = _drift(current, ref, features={"x": FeatureRule("wasserstein", 0.5)})
    assert looser.threshold == 0.5 and looser.drifted is False
    psi = _drift(current, ref, features={"x": FeatureRule("psi")})
    assert psi.method == "psi" and psi.threshold == 0.1 and psi.statistic == auto.psi
    # KS forced on a large sample (no raw values kept): the p-value of D at the edges.
    ks = _drift(current, ref, features={"x": FeatureRule("ks", 0.01)})
    assert ks.method == "ks" and ks.p_value is not None and ks.p_value < 0.01 and ks.drifted
    with pytest.raises(DataError, match=r"monitor.features.x.method 'chi2'"):
        _drift(current, ref, features={"x": FeatureRule("chi2")})


def test_monitor_features_and_verdict_are_validated_config() -> None:
    config = load_config(
        None, ["monitor.verdict=share", "monitor.features={x: {method: ks, threshold: 0.01}}"]
    )
    assert config.monitor.verdict == "share"
    assert config.monitor.features["x"].method == "ks"
    assert load_config(None, []).monitor.verdict == "weighted"
    with pytest.raises(ConfigError, match="method"):
        load_config(None, ["monitor.features={x: {method: kolmogorov}}"])


# --------------------------------------------------------------------------- conventions


def _categorical(counts_ref: list[int], counts_cur: list[int], **settings: Any) -> FeatureDrift:
    names = [f"v{i}" for i in range(len(counts_ref))]
    ref = CategoricalReference(names, np.asarray(counts_ref, np.int64))
    cur = CategoricalSketch(dict(zip(names, counts_cur, strict=True)))
    return categorical_drift("k", ref, cur, DriftSettings(**settings))


def test_jensen_shannon_is_in_base_2_and_evidentlys_bound_converts() -> None:
    """Evidently calls scipy's jensenshannon with its default natural log; raymlops uses
    base 2 (bounded by 1). Same distributions: base-2 value = base-e value / sqrt(ln 2)."""
    ref, cur = [500, 300, 200], [300, 300, 400]
    result = _categorical(ref, cur, large_sample=100)
    p, q = np.array(ref) / 1000, np.array(cur) / 1000
    assert result.method == "jensenshannon"
    assert result.statistic == pytest.approx(jensenshannon(p, q, base=2))
    assert result.statistic == pytest.approx(jensenshannon(p, q) / math.sqrt(math.log(2)))


def test_the_current_sample_size_picks_test_or_distance() -> None:
    """Evidently picks by the reference's size (≤ 1000 rows: a test); raymlops by the current
    sample's: a training reference of 5000 rows still gets a test on 500 current rows."""
    rng = np.random.default_rng(2)
    ref = _reference(_numeric(rng, 5000))
    assert _drift(_numeric(rng, 500), ref).method == "ks"
    assert _drift(_numeric(rng, 1000), ref).method == "wasserstein"


def test_chi_square_is_the_contingency_test_which_is_evidentlys_z_test_for_two_levels() -> None:
    """raymlops tests the 2×k contingency table (reference vs current); Evidently a
    goodness-of-fit of the current counts against the reference's proportions (k > 2) and a
    two-proportion Z-test (2 levels), which the 2×2 contingency test equals."""
    ref, cur = [600, 300, 100], [50, 35, 15]
    three = _categorical(ref, cur)
    assert three.method == "chi2"
    assert three.p_value == pytest.approx(chi2_contingency([ref, cur], correction=False).pvalue)
    expected = np.array(ref) / sum(ref) * sum(cur)
    goodness = chisquare(cur, expected).pvalue
    assert three.p_value > goodness  # the reference is a sample too: a wider null
    two_ref, two_cur = [700, 300], [60, 40]
    binary = _categorical(two_ref, two_cur)
    p1, p2 = two_ref[0] / 1000, two_cur[0] / 100
    pooled = (two_ref[0] + two_cur[0]) / 1100
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / 1000 + 1 / 100))
    assert binary.p_value == pytest.approx(2 * (1 - norm.cdf(abs(z))))


def test_a_numeric_column_with_few_values_stays_numeric() -> None:
    """Evidently treats a numeric column with ≤ 5 distinct values as categorical; raymlops
    keeps it numeric (KS with exact steps at the reference's atoms, Wasserstein distance on
    large samples), so a shift between ordered levels counts by how far it moves."""
    rng = np.random.default_rng(4)
    levels = np.array([0.0, 1.0, 2.0, 3.0])
    ref = _reference(rng.choice(levels, 5000, p=[0.4, 0.3, 0.2, 0.1]))
    same = _drift(rng.choice(levels, 400, p=[0.4, 0.3, 0.2, 0.1]), ref)
    moved = _drift(rng.choice(levels, 400, p=[0.25, 0.3, 0.25, 0.2]), ref)
    assert same.kind == "numeric" and same.method == "ks" and same.drifted is False
    assert moved.drifted is True
