"""Tests of raymlops.model.features.Preprocessor: fitting, transform, persistence, targets."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raymlops.core.config import FeaturesConfig
from raymlops.core.errors import DataError
from raymlops.data.dataset import ColumnRoles
from raymlops.model.features import Preprocessor, to_columns

ROWS = 60


def _train_table() -> pa.Table:
    rng = np.random.default_rng(0)
    a = rng.normal(5.0, 2.0, size=ROWS)
    a[[3, 17, 40]] = np.nan
    b = rng.uniform(-10, 10, size=ROWS)
    # 'x' 30 times, 'y' 20, 'z' 6, 'rare' once, missing 3 times.
    colour: list[str | None] = ["x"] * 30 + ["y"] * 20 + ["z"] * 6 + ["rare"] + [None] * 3
    order = rng.permutation(ROWS)
    return pa.table(
        {
            "a": a,
            "b": b,
            "colour": pa.array([colour[i] for i in order], pa.string()),
            "label": pa.array(rng.choice(["no", "yes"], size=ROWS)),
        }
    )


def _roles(task: str = "classification") -> ColumnRoles:
    return ColumnRoles(
        label="label",
        task=task,  # type: ignore[arg-type]
        numeric=["a", "b"],
        categorical=["colour"],
        ids=[],
        classes=["no", "yes"] if task == "classification" else None,
    )


def _fit(**config: Any) -> Preprocessor:
    return Preprocessor.fit(_train_table(), _roles(), FeaturesConfig(min_frequency=2, **config))


def test_fit_learns_statistics_and_vocabulary() -> None:
    prep = _fit()
    table = _train_table()
    a = table.column("a").to_numpy(zero_copy_only=False)
    finite = a[np.isfinite(a)]
    assert prep.impute["a"] == pytest.approx(np.median(finite))
    assert prep.mean["a"] == pytest.approx(finite.mean())
    assert prep.std["a"] == pytest.approx(finite.std())
    assert prep.indicators == ["a"]  # only 'a' had missing training values
    # Ordered by frequency; 'rare' (seen once) is below min_frequency=2.
    assert prep.vocab == {"colour": ["x", "y", "z"]}
    assert prep.classes == ["no", "yes"]
    assert prep.feature_names == ["a", "b", "colour"]
    assert prep.output_names == [
        "a",
        "b",
        "a__missing",
        "colour=<unknown>",
        "colour=x",
        "colour=y",
        "colour=z",
    ]
    assert prep.n_outputs == 7
    assert prep.n_targets == 2


def test_transform_shape_dtype_and_no_nan() -> None:
    prep = _fit()
    out = prep.transform(_train_table())
    assert out.shape == (ROWS, prep.n_outputs)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


def test_training_numerics_are_standardised() -> None:
    prep = _fit()
    table = _train_table()
    out = prep.transform(table)
    observed = np.isfinite(table.column("a").to_numpy(zero_copy_only=False))
    assert out[observed, 0].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[observed, 0].std() == pytest.approx(1.0, abs=1e-5)
    assert out[:, 1].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[:, 1].std() == pytest.approx(1.0, abs=1e-5)
    # Missing values become the (standardised) median.
    expected_fill = (prep.impute["a"] - prep.mean["a"]) / prep.std["a"]
    np.testing.assert_allclose(out[~observed, 0], expected_fill, rtol=1e-5)


def test_missing_indicator_column() -> None:
    prep = _fit()
    table = _train_table()
    out = prep.transform(table)
    missing = ~np.isfinite(table.column("a").to_numpy(zero_copy_only=False))
    indicator = out[:, prep.output_names.index("a__missing")]
    np.testing.assert_array_equal(indicator, missing.astype(np.float32))
    assert indicator.sum() == 3


def test_no_indicators_when_disabled() -> None:
    prep = _fit(missing_indicators=False)
    assert prep.indicators == []
    assert "a__missing" not in prep.output_names
    assert prep.transform(_train_table()).shape == (ROWS, 6)


def test_one_hot_and_unknown_bucket() -> None:
    prep = _fit()
    rows = [
        {"a": 1.0, "b": 0.0, "colour": "y"},
        {"a": 1.0, "b": 0.0, "colour": "purple"},  # never seen
        {"a": 1.0, "b": 0.0, "colour": "rare"},  # seen once, below min_frequency
        {"a": 1.0, "b": 0.0, "colour": None},  # missing
    ]
    out = prep.transform(rows)
    start = prep.output_names.index("colour=<unknown>")
    one_hot = out[:, start:]
    assert one_hot.shape == (4, 4)
    np.testing.assert_array_equal(one_hot.sum(axis=1), np.ones(4))
    assert one_hot[0].argmax() == 1 + prep.vocab["colour"].index("y")
    for row in (1, 2, 3):
        assert one_hot[row, 0] == 1.0


def test_max_categories_keeps_most_frequent() -> None:
    prep = _fit(max_categories=2)
    assert prep.vocab["colour"] == ["x", "y"]
    out = prep.transform([{"a": 0.0, "b": 0.0, "colour": "z"}])
    assert out[0, prep.output_names.index("colour=<unknown>")] == 1.0


@pytest.mark.parametrize(("impute", "expected"), [("mean", "mean"), ("zero", 0.0)])
def test_impute_strategies(impute: str, expected: str | float) -> None:
    prep = _fit(numeric_impute=impute)
    a = _train_table().column("a").to_numpy(zero_copy_only=False)
    want = float(np.nanmean(a)) if expected == "mean" else expected
    assert prep.impute["a"] == pytest.approx(want)


def test_scale_false_keeps_raw_values() -> None:
    prep = _fit(scale=False)
    table = _train_table()
    out = prep.transform(table)
    np.testing.assert_allclose(out[:, 1], table.column("b").to_numpy(), rtol=1e-6)


def test_constant_column_does_not_divide_by_zero() -> None:
    table = pa.table({"a": [2.0] * 5, "b": [1.0, 2.0, 3.0, 4.0, 5.0], "colour": ["x"] * 5})
    table = table.append_column("label", pa.array(["no", "yes"] * 2 + ["no"]))
    prep = Preprocessor.fit(table, _roles(), FeaturesConfig())
    assert prep.std["a"] == 1.0
    out = prep.transform(table)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 0], np.zeros(5, dtype=np.float32))


def test_to_dict_round_trip_is_json_and_identical() -> None:
    prep = _fit()
    text = json.dumps(prep.to_dict())
    restored = Preprocessor.from_dict(json.loads(text))
    assert restored == prep
    table = _train_table()
    np.testing.assert_array_equal(restored.transform(table), prep.transform(table))


def test_regression_preprocessor_round_trip_is_json() -> None:
    table = _train_table().set_column(3, "label", pa.array(np.linspace(100.0, 200.0, ROWS)))
    prep = Preprocessor.fit(table, _roles("regression"), FeaturesConfig())
    restored = Preprocessor.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert restored.classes is None
    assert restored.target_mean == pytest.approx(150.0)
    assert restored.n_targets == 1


def test_same_result_for_every_input_type() -> None:
    prep = _fit()
    table = _train_table()
    frame = table.to_pandas()
    arrays = {
        "a": frame["a"].to_numpy(),
        "b": frame["b"].to_numpy(),
        "colour": np.array(table.column("colour").to_pylist(), dtype=object),
    }
    records = table.select(["a", "b", "colour"]).to_pylist()
    expected = prep.transform(table)
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(prep.transform(frame), expected)
    np.testing.assert_array_equal(prep.transform(arrays), expected)
    np.testing.assert_array_equal(prep.transform(records), expected)
    np.testing.assert_array_equal(prep.transform(table.to_batches()[0]), expected)
    lists = {k: list(v) for k, v in arrays.items()}
    np.testing.assert_array_equal(prep.transform(lists), expected)


def test_extra_columns_are_ignored() -> None:
    prep = _fit()
    table = _train_table()
    with_extra = table.append_column("unused", pa.array(["?"] * ROWS))
    np.testing.assert_array_equal(prep.transform(with_extra), prep.transform(table))


def test_missing_feature_column_is_named() -> None:
    prep = _fit()
    with pytest.raises(DataError, match="missing feature column 'b'"):
        prep.transform({"a": [1.0], "colour": ["x"]})
    with pytest.raises(DataError, match="missing feature column 'colour'"):
        prep.transform(pd.DataFrame({"a": [1.0], "b": [2.0]}))


def test_non_numeric_value_in_numeric_feature() -> None:
    prep = _fit()
    with pytest.raises(DataError, match=r"column 'b': non-numeric value 'ten'"):
        prep.transform([{"a": 1.0, "b": "ten", "colour": "x"}])


def test_numeric_strings_are_parsed() -> None:
    prep = _fit()
    as_text = prep.transform([{"a": "1.5", "b": "2", "colour": "x"}])
    as_numbers = prep.transform([{"a": 1.5, "b": 2.0, "colour": "x"}])
    np.testing.assert_array_equal(as_text, as_numbers)


def test_to_columns_rejects_bad_inputs() -> None:
    with pytest.raises(DataError, match="must hold records"):
        to_columns([1, 2, 3])
    with pytest.raises(DataError, match="unsupported input type int"):
        to_columns(42)  # type: ignore[arg-type]


def test_encode_target_classes() -> None:
    prep = _fit()
    codes = prep.encode_target(pa.chunked_array([["yes", "no", "yes"]]))
    assert codes.dtype == np.int64
    assert codes.tolist() == [1, 0, 1]
    assert prep.encode_target(["no"]).tolist() == [0]
    with pytest.raises(DataError, match="label value 'maybe' is not one of the training classes"):
        prep.encode_target(["yes", "maybe"])


def test_encode_target_integer_classes_match_inferred_classes() -> None:
    table = _train_table().set_column(3, "label", pa.array([0, 1, 2] * (ROWS // 3)))
    roles = ColumnRoles("label", "classification", ["a", "b"], ["colour"], [], ["0", "1", "2"])
    prep = Preprocessor.fit(table, roles, FeaturesConfig())
    assert prep.encode_target(table.column("label")).tolist() == [0, 1, 2] * (ROWS // 3)


def test_encode_and_decode_regression_round_trip() -> None:
    y = np.linspace(1000.0, 3000.0, ROWS)
    table = _train_table().set_column(3, "label", pa.array(y))
    prep = Preprocessor.fit(table, _roles("regression"), FeaturesConfig())
    assert prep.target_mean == pytest.approx(y.mean())
    assert prep.target_std == pytest.approx(y.std())
    encoded = prep.encode_target(table.column("label"))
    assert encoded.dtype == np.float32
    assert encoded.mean() == pytest.approx(0.0, abs=1e-5)
    assert encoded.std() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(prep.decode_regression(encoded.astype(np.float64)), y, rtol=1e-6)


def test_integer_categorical_with_missing_values_encodes_consistently() -> None:
    table = pa.table(
        {
            "a": [1.0, 2.0, 3.0, 4.0],
            "b": [0.0, 0.0, 1.0, 1.0],
            "colour": pa.array([1, 2, None, 1], pa.int64()),
            "label": ["no", "yes", "no", "yes"],
        }
    )
    prep = Preprocessor.fit(table, _roles(), FeaturesConfig())
    served = prep.transform([{"a": 1.0, "b": 0.0, "colour": 1}])
    trained = prep.transform(table)
    start = prep.output_names.index("colour=<unknown>")
    np.testing.assert_array_equal(served[0, start:], trained[0, start:])
