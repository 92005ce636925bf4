"""Tests of raymlops.monitor.drift: every statistic against scipy (or its definition) on raw data,
mergeability of the summaries, and the verdict's behaviour over repeated seeded draws.

The reference of every comparison is built the way a registered version's is: a table
profiled by `raymlops.data.dataset.profile_table` (the `profile.json` format), read back with
`NumericReference.from_profile` / `CategoricalReference.from_profile`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

from raymlops.data.dataset import ColumnRoles, profile_table
from raymlops.monitor.drift import (
    CategoricalReference,
    CategoricalSketch,
    DriftSettings,
    FeatureDrift,
    NumericReference,
    NumericSketch,
    categorical_drift,
    dataset_drift,
    numeric_drift,
    population_stability_index,
    wasserstein_from_sketch,
)

LEVELS = ["a", "b", "c", "d", "e"]
LEVEL_P = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
NUMERIC = ["x0", "x1", "x2", "x3", "x4"]
CATEGORICAL = ["k0", "k1"]
SEEDS = range(100)


def _table(rng: np.random.Generator, n: int, shift: float = 0.0, swap: bool = False) -> pa.Table:
    """5 numeric features of different shapes (normal, exponential, discrete, lognormal
    float32, zero-inflated) and 2 categorical ones. `shift` moves x0 by `shift` standard
    deviations; `swap` reverses k0's category frequencies."""
    p = LEVEL_P[::-1] if swap else LEVEL_P
    return pa.table(
        {
            "x0": rng.normal(shift, 1.0, n),
            "x1": rng.exponential(2.0, n),
            "x2": rng.integers(0, 10, n).astype(np.float64),
            "x3": rng.lognormal(0.0, 0.75, n).astype(np.float32),
            "x4": np.where(rng.random(n) < 0.4, 0.0, rng.gamma(2.0, 1.0, n)),
            "k0": rng.choice(LEVELS, size=n, p=p),
            "k1": rng.choice(LEVELS[:3], size=n, p=[0.5, 0.3, 0.2]),
            "y": rng.integers(0, 2, n),
        }
    )


ROLES = ColumnRoles("y", "classification", NUMERIC, CATEGORICAL, [], ["0", "1"])


@pytest.fixture(scope="module")
def reference_table() -> pa.Table:
    return _table(np.random.default_rng(12345), 5000)


@pytest.fixture(scope="module")
def profile(reference_table: pa.Table) -> dict[str, Any]:
    return profile_table(reference_table, ROLES)


def _sketches(
    profile: dict[str, Any], table: pa.Table, chunks: int = 1
) -> tuple[dict[str, NumericSketch], dict[str, CategoricalSketch]]:
    """Summaries of `table` built chunk by chunk and merged, as the Ray Data pass does."""
    numeric: dict[str, NumericSketch] = {}
    categorical: dict[str, CategoricalSketch] = {}
    bounds = np.linspace(0, table.num_rows, chunks + 1).astype(int)
    for start, stop in itertools.pairwise(bounds):
        part = table.slice(start, stop - start)
        for name in NUMERIC:
            ref = NumericReference.from_profile(profile["columns"][name])
            assert ref is not None
            sketch = ref.new_sketch()
            sketch.update(part.column(name).to_numpy())
            numeric[name] = numeric[name].merge(sketch) if name in numeric else sketch
        for name in CATEGORICAL:
            cat = CategoricalSketch()
            cat.update(part.column(name))
            categorical[name] = categorical[name].merge(cat) if name in categorical else cat
    return numeric, categorical


def _compare(
    profile: dict[str, Any], table: pa.Table, settings: DriftSettings | None = None
) -> list[FeatureDrift]:
    numeric, categorical = _sketches(profile, table)
    out = []
    for name in NUMERIC:
        ref = NumericReference.from_profile(profile["columns"][name])
        assert ref is not None
        out.append(numeric_drift(name, ref, numeric[name], settings))
    for name in CATEGORICAL:
        cat_ref = CategoricalReference.from_profile(profile["columns"][name])
        out.append(categorical_drift(name, cat_ref, categorical[name], settings))
    return out


# --------------------------------------------------------------------------- vs scipy


DISTRIBUTIONS: dict[str, Callable[[np.random.Generator, int, float], np.ndarray]] = {
    "normal": lambda rng, n, s: rng.normal(s, 1.0, n),
    "exponential": lambda rng, n, s: rng.exponential(1.0 + s, n),
    "lognormal": lambda rng, n, s: rng.lognormal(s, 1.0, n),
    "integers": lambda rng, n, s: rng.integers(0, 5, n) + np.round(2 * s),
    "many-integers": lambda rng, n, s: rng.poisson(20 + 5 * s, n),
    "zero-inflated": lambda rng, n, s: np.where(rng.random(n) < 0.5, 0.0, rng.normal(2 + s, 1, n)),
}


@pytest.mark.parametrize("shape", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5, 2.0])
def test_wasserstein_matches_scipy_on_raw_data(shape: str, shift: float) -> None:
    rng = np.random.default_rng(7)
    draw = DISTRIBUTIONS[shape]
    reference_values = draw(rng, 5000, 0.0).astype(np.float64)
    current = draw(rng, 3000, shift).astype(np.float64)
    reference = NumericReference.from_values(reference_values)
    sketch = reference.new_sketch()
    for chunk in np.array_split(current, 7):
        part = reference.new_sketch()
        part.update(chunk)
        sketch.merge(part)
    ours = wasserstein_from_sketch(reference, sketch) / reference_values.std()
    exact = wasserstein_distance(reference_values, current) / reference_values.std()
    assert ours == pytest.approx(exact, abs=0.015)


def test_reference_from_profile_equals_reference_from_values(
    reference_table: pa.Table, profile: dict[str, Any]
) -> None:
    for name in NUMERIC:
        values = reference_table.column(name).to_numpy().astype(np.float64)
        from_profile = NumericReference.from_profile(profile["columns"][name])
        assert from_profile is not None
        direct = NumericReference.from_values(values)
        np.testing.assert_allclose(from_profile.edges, direct.edges)
        np.testing.assert_array_equal(from_profile.counts, direct.counts)
        np.testing.assert_allclose(from_profile.sums, direct.sums)
        assert from_profile.std == pytest.approx(values.std())


def test_sketch_counts_match_numpy_and_merging_equals_one_pass() -> None:
    rng = np.random.default_rng(3)
    reference = NumericReference.from_values(rng.normal(0, 1, 4000))
    values = np.concatenate([rng.normal(0.3, 1.5, 9000), [np.nan, np.inf, -np.inf, np.nan]])
    whole = reference.new_sketch()
    whole.update(values)
    merged = reference.new_sketch()
    for chunk in np.array_split(values, 9):
        part = reference.new_sketch()
        part.update(chunk)
        merged.merge(part)
    finite = values[np.isfinite(values)]
    edges = reference.edges
    inner, _ = np.histogram(finite, bins=edges)
    np.testing.assert_array_equal(whole.counts[1:-1], inner)
    assert whole.counts[0] == int((finite < edges[0]).sum())
    assert whole.counts[-1] == int((finite > edges[-1]).sum())
    assert whole.missing == 4
    assert whole.n == len(finite)
    assert whole.sums[0] == pytest.approx(finite[finite < edges[0]].sum())
    assert whole.mean == pytest.approx(finite.mean())
    assert (whole.minimum, whole.maximum) == (finite.min(), finite.max())
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-9, atol=1e-9)
    assert merged.missing == whole.missing
    assert whole.sample is None and merged.sample is None  # 9000 values > sample_cap 1000


def test_sketch_keeps_the_sample_only_while_small() -> None:
    reference = NumericReference.from_values(np.arange(100.0))
    sketch = reference.new_sketch(sample_cap=10)
    sketch.update(np.arange(6.0))
    assert sketch.sample is not None and len(sketch.sample) == 6
    other = reference.new_sketch(sample_cap=10)
    other.update(np.arange(5.0))
    sketch.merge(other)
    assert sketch.sample is None
    with pytest.raises(ValueError, match="different bin edges"):
        sketch.merge(NumericSketch(np.array([0.0, 1.0])))


@pytest.mark.parametrize("shape", sorted(DISTRIBUTIONS))
def test_reference_cdf_follows_the_empirical_cdf(shape: str) -> None:
    rng = np.random.default_rng(2)
    values = np.sort(DISTRIBUTIONS[shape](rng, 5000, 0.0).astype(np.float64))
    reference = NumericReference.from_values(values)
    points = np.union1d(np.quantile(values, np.linspace(0, 1, 997)), values[::37])
    ecdf = np.searchsorted(values, points, side="right") / len(values)
    ecdf_left = np.searchsorted(values, points, side="left") / len(values)
    # Exact at edges and atoms (the steps of discrete and zero-inflated features); within
    # one bin's mass (1%) elsewhere.
    assert np.max(np.abs(reference.cdf(points) - ecdf)) <= 0.0105
    assert np.max(np.abs(reference.cdf(points, left=True) - ecdf_left)) <= 0.0105
    np.testing.assert_allclose(
        reference.cdf(reference.edges[:-1], left=True), reference.cdf_at_edges()[:-1]
    )


def test_ks_statistic_and_p_value_match_scipy_two_sample() -> None:
    rng = np.random.default_rng(11)
    reference_values = rng.normal(0, 1, 5000)
    reference = NumericReference.from_values(reference_values)
    for shift in (0.0, 0.1, 0.3):
        current = rng.normal(shift, 1, 400)
        sketch = reference.new_sketch()
        sketch.update(current)
        result = numeric_drift("x", reference, sketch)
        exact = ks_2samp(reference_values, current, method="asymp")
        assert result.method == "ks"
        assert result.statistic == pytest.approx(exact.statistic, abs=0.01)
        assert result.p_value is not None
        assert result.p_value == pytest.approx(exact.pvalue, abs=0.05)


def test_jensen_shannon_and_chi_square_match_scipy() -> None:
    rng = np.random.default_rng(5)
    reference_values = rng.choice(LEVELS, size=4000, p=LEVEL_P)
    current_values = rng.choice([*LEVELS, "new"], size=600, p=[0.3, 0.3, 0.2, 0.1, 0.05, 0.05])
    reference = CategoricalReference.from_values(reference_values)
    sketch = CategoricalSketch()
    sketch.update(pa.array(current_values))
    small = categorical_drift("k", reference, sketch)  # 600 rows: chi-square decides
    categories = [*LEVELS, "new"]
    ref_counts = np.array([(reference_values == c).sum() for c in categories])
    cur_counts = np.array([(current_values == c).sum() for c in categories])
    expected_js = jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum(), 2)
    assert small.js_distance == pytest.approx(expected_js, rel=1e-9)
    test = chi2_contingency(np.vstack([ref_counts, cur_counts]), correction=False)
    assert small.method == "chi2"
    assert small.statistic == pytest.approx(test.statistic, rel=1e-9)
    assert small.p_value == pytest.approx(test.pvalue, rel=1e-6)
    large = categorical_drift("k", reference, sketch, DriftSettings(large_sample=500))
    assert large.method == "jensenshannon"
    assert large.statistic == pytest.approx(expected_js, rel=1e-9)


def test_psi_on_reference_deciles_matches_its_definition() -> None:
    rng = np.random.default_rng(9)
    reference_values = rng.normal(0, 1, 10_000)
    current = rng.normal(0.25, 1.2, 5000)
    reference = NumericReference.from_values(reference_values)
    sketch = reference.new_sketch()
    sketch.update(current)
    result = numeric_drift("x", reference, sketch)
    deciles = np.quantile(reference_values, np.linspace(0, 1, 11))
    deciles[0], deciles[-1] = -np.inf, np.inf
    r = np.histogram(reference_values, deciles)[0] / len(reference_values)
    c = np.histogram(current, deciles)[0] / len(current)
    expected = float(np.sum((c - r) * np.log(c / r)))
    assert result.psi == pytest.approx(expected, rel=0.02)
    assert population_stability_index(np.array([5, 5]), np.array([5, 5])) == 0.0


def test_profiles_without_a_sketch_fall_back_to_the_histogram(
    reference_table: pa.Table, profile: dict[str, Any]
) -> None:
    stats = {k: v for k, v in profile["columns"]["x0"].items() if k != "sketch"}
    coarse = NumericReference.from_profile(stats)
    assert coarse is not None and len(coarse.counts) == 20
    current = np.random.default_rng(1).normal(0.5, 1, 5000)
    sketch = coarse.new_sketch()
    sketch.update(current)
    values = reference_table.column("x0").to_numpy()
    exact = wasserstein_distance(values, current) / values.std()
    assert wasserstein_from_sketch(coarse, sketch) / coarse.std == pytest.approx(exact, abs=0.03)


def test_constant_reference_feature() -> None:
    reference = NumericReference.from_values(np.full(500, 3.0))
    same = reference.new_sketch()
    same.update(np.full(2000, 3.0))
    assert numeric_drift("c", reference, same).drifted is False
    moved = reference.new_sketch()
    moved.update(np.full(2000, 4.0))
    result = numeric_drift("c", reference, moved)
    assert result.drifted is True
    assert wasserstein_from_sketch(reference, moved) == pytest.approx(1.0)


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("rows", "methods"), [(400, {"ks", "chi2"}), (5000, {"wasserstein", "jensenshannon"})]
)
def test_same_distribution_is_flagged_in_at_most_5_percent_of_draws(
    profile: dict[str, Any], rows: int, methods: set[str]
) -> None:
    dataset_flags = 0
    feature_flags = 0
    for seed in SEEDS:
        features = _compare(profile, _table(np.random.default_rng(seed), rows))
        assert {f.method for f in features} == methods
        feature_flags += sum(bool(f.drifted) for f in features)
        dataset_flags += bool(dataset_drift(features).drifted)
    assert dataset_flags <= 0.05 * len(SEEDS)
    # Per feature too: tests at p < 0.05 flag about 5% of the time, distances almost never.
    assert feature_flags <= 0.07 * len(SEEDS) * len(features)


@pytest.mark.parametrize("rows", [400, 5000])
def test_half_std_mean_shift_and_category_swap_are_always_flagged(
    profile: dict[str, Any], rows: int
) -> None:
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        features = {f.name: f for f in _compare(profile, _table(rng, rows, shift=0.5, swap=True))}
        assert features["x0"].drifted is True, (seed, features["x0"])
        assert features["k0"].drifted is True, (seed, features["k0"])


def test_dataset_drifts_when_half_the_features_drift(profile: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    table = _table(rng, 3000)
    shifted = table.set_column(1, "x1", pa.array(table.column("x1").to_numpy() * 1.5))
    shifted = shifted.set_column(2, "x2", pa.array(shifted.column("x2").to_numpy() + 2))
    shifted = shifted.set_column(4, "x4", pa.array(shifted.column("x4").to_numpy() + 1))
    features = _compare(profile, shifted.set_column(0, "x0", pa.array(rng.normal(1, 1, 3000))))
    verdict = dataset_drift(features)
    assert verdict.drifted_features == ["x0", "x1", "x2", "x4"]
    assert verdict.evaluated == 7
    assert verdict.share == pytest.approx(4 / 7)
    assert verdict.drifted is True
    assert dataset_drift(features, DriftSettings(drift_share=0.6)).drifted is False
    assert dataset_drift(features[1:], DriftSettings(drift_share=0.5)).drifted is True


def test_tiny_windows_give_no_verdict(profile: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    features = _compare(profile, _table(rng, 60, shift=3.0, swap=True))
    assert all(f.drifted is None for f in features)
    assert all("min_samples" in f.reason for f in features)
    assert features[0].wasserstein is not None and features[0].wasserstein > 1  # still reported
    verdict = dataset_drift(features)
    assert verdict.drifted is None and verdict.share is None and verdict.evaluated == 0
    empty = _compare(profile, _table(rng, 0))
    assert all(f.drifted is None and f.reason == "no values" for f in empty)


def test_feature_drift_serialises_without_nan_or_inf(profile: dict[str, Any]) -> None:
    features = _compare(profile, _table(np.random.default_rng(0), 2000, shift=1.0))
    for f in features:
        data = f.to_dict()
        assert data["name"] == f.name
        for key in ("statistic", "p_value", "psi", "wasserstein", "js_distance"):
            assert data[key] is None or np.isfinite(data[key])
        assert f.score is not None
        assert (f.score >= 1) == bool(f.drifted)


def test_settings_reject_impossible_values() -> None:
    with pytest.raises(ValueError, match="large_sample"):
        DriftSettings(min_samples=500, large_sample=100)
    with pytest.raises(ValueError, match="drift_share"):
        DriftSettings(drift_share=0)
    with pytest.raises(ValueError, match="p_value"):
        DriftSettings(p_value=1.5)
