"""Tests of raymlops.data.dataset: reading, digests, roles, splits, profiles and synthetic data."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raymlops.core.config import DataConfig, FeaturesConfig, SplitConfig
from raymlops.core.errors import DataError
from raymlops.data.dataset import (
    DatasetVersion,
    describe_path,
    infer_roles,
    load_dataset,
    load_table,
    split_table,
    synth_dataset,
)

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _frame(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    x[::17] = np.nan
    colours = rng.choice(["red", "green", "blue"], size=rows, p=[0.5, 0.3, 0.2]).astype(object)
    colours[::23] = None
    return pd.DataFrame(
        {
            "id": np.arange(rows, dtype=np.int64),
            "x": x,
            "z": rng.integers(0, 100, size=rows).astype(np.float64),
            "colour": colours,
            "y": np.where(rng.random(rows) < 0.3, "yes", "no"),
        }
    )


def _parquet(tmp_path: Path, frame: pd.DataFrame, name: str = "data.parquet") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return str(path)


def _load(path: str, label: str = "y", **kwargs: Any) -> tuple[Any, Any, Any]:
    return load_dataset(DataConfig(path=path, label=label, **kwargs), FeaturesConfig())


def _data_error(path: str, label: str = "y", **kwargs: Any) -> str:
    with pytest.raises(DataError) as info:
        _load(path, label, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    return message


# --------------------------------------------------------------------------- reading


def test_load_table_file_folder_and_uri(tmp_path: Path) -> None:
    frame = _frame(100)
    file = _parquet(tmp_path, frame)
    table = load_table(file)
    assert table.num_rows == 100
    assert table.column_names == list(frame.columns)
    np.testing.assert_array_equal(table.column("id").to_numpy(), frame["id"].to_numpy())

    uri_table = load_table(Path(file).as_uri())
    assert uri_table.equals(table)

    folder = tmp_path / "parts"
    _parquet(folder, frame.iloc[:60], "part-0.parquet")
    _parquet(folder, frame.iloc[60:], "sub/part-1.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-0.parquet.crc").write_bytes(b"\x00\x01junk")
    folder_table = load_table(str(folder))
    assert folder_table.num_rows == 100
    assert sorted(folder_table.column("id").to_pylist()) == list(range(100))


def test_load_table_csv(tmp_path: Path) -> None:
    frame = _frame(50)
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    table = load_table(str(path))
    assert table.num_rows == 50
    assert pa.types.is_floating(table.schema.field("x").type)
    np.testing.assert_allclose(
        table.column("x").to_numpy(zero_copy_only=False), frame["x"].to_numpy(), equal_nan=True
    )


def test_folder_mixing_formats_is_rejected(tmp_path: Path) -> None:
    frame = _frame(20)
    _parquet(tmp_path, frame, "a.parquet")
    frame.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError, match="mixes Parquet and CSV"):
        load_table(str(tmp_path))


def test_folder_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no Parquet or CSV files"):
        load_table(str(tmp_path))


def test_unknown_bundled_dataset() -> None:
    with pytest.raises(DataError, match="unknown bundled dataset 'sklearn:mnist'"):
        load_table("sklearn:mnist")


# --------------------------------------------------------------------------- digest


def test_digest_is_sha256_and_stable(tmp_path: Path) -> None:
    path = _parquet(tmp_path, _frame())
    first, _, _ = _load(path)
    second, _, _ = _load(path)
    assert isinstance(first, DatasetVersion)
    assert HEX64.match(first.digest)
    assert first.digest == second.digest
    uri, _, _ = _load(Path(path).as_uri())
    assert uri.digest == first.digest


def test_digest_changes_when_one_value_changes(tmp_path: Path) -> None:
    frame = _frame()
    original, _, _ = _load(_parquet(tmp_path / "a", frame))
    changed = frame.copy()
    changed.loc[5, "z"] = changed.loc[5, "z"] + 1
    modified, _, _ = _load(_parquet(tmp_path / "b", changed))
    assert modified.digest != original.digest


def test_folder_digest_stable_and_sensitive(tmp_path: Path) -> None:
    frame = _frame()
    _parquet(tmp_path / "f1", frame.iloc[:100], "p0.parquet")
    _parquet(tmp_path / "f1", frame.iloc[100:], "p1.parquet")
    a, _, _ = _load(str(tmp_path / "f1"))
    b, _, _ = _load(str(tmp_path / "f1"))
    assert a.digest == b.digest
    changed = frame.copy()
    changed.loc[150, "y"] = "yes" if changed.loc[150, "y"] == "no" else "no"
    _parquet(tmp_path / "f2", changed.iloc[:100], "p0.parquet")
    _parquet(tmp_path / "f2", changed.iloc[100:], "p1.parquet")
    c, _, _ = _load(str(tmp_path / "f2"))
    assert c.digest != a.digest


# --------------------------------------------------------------------------- roles


def _roles(table: pa.Table, **kwargs: Any) -> Any:
    return infer_roles(table, DataConfig(path="mem", label="y", **kwargs), FeaturesConfig())


def test_task_inference() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=120)
    assert _roles(pa.table({"x": x, "y": rng.choice(["a", "b"], 120)})).task == "classification"
    many_floats = _roles(pa.table({"x": x, "y": rng.normal(size=120)}))
    assert many_floats.task == "regression"
    assert many_floats.classes is None
    few_ints = _roles(pa.table({"x": x, "y": rng.integers(0, 3, 120)}))
    assert few_ints.task == "classification"
    assert few_ints.classes == ["0", "1", "2"]
    many_ints = _roles(pa.table({"x": x, "y": np.arange(120)}))
    assert many_ints.task == "regression"
    integral_floats = _roles(pa.table({"x": x, "y": rng.integers(0, 2, 120).astype(float)}))
    assert integral_floats.task == "classification"
    assert _roles(pa.table({"x": x, "y": rng.random(120) < 0.5})).task == "classification"
    forced = _roles(pa.table({"x": x, "y": rng.integers(0, 3, 120)}), task="regression")
    assert forced.task == "regression"


def test_feature_roles_inferred_from_types() -> None:
    table = pa.table(
        {
            "num": [1.0, 2.0, 3.0, 4.0],
            "flag": [True, False, True, False],
            "numeric_text": ["1.5", "2", "3", "4"],
            "cat": ["a", "b", "a", "c"],
            "empty": pa.nulls(4),
            "y": ["p", "q", "p", "q"],
        }
    )
    roles = _roles(table)
    assert roles.numeric == ["num", "flag", "numeric_text"]
    assert roles.categorical == ["cat"]
    assert "empty" not in roles.features
    assert roles.label == "y"


def test_id_columns_pass_through_and_are_not_features(tmp_path: Path) -> None:
    path = _parquet(tmp_path, _frame())
    without_ids, _, _ = _load(path)
    assert "id" in without_ids.features
    version, splits, roles = _load(path, id_columns=["id"], drop_columns=["z"])
    assert "id" not in version.features
    assert "z" not in version.features
    assert version.id_columns == ["id"]
    assert roles.ids == ["id"]
    assert sorted(version.features) == ["colour", "x"]
    for part in (splits.train, splits.validation, splits.test):
        assert "id" in part.column_names
    assert "id" not in version.profile["columns"]


# --------------------------------------------------------------------------- splits


def _ids(table: pa.Table) -> set[int]:
    return set(table.column("id").to_pylist())


def test_split_deterministic_disjoint_complete_and_stratified(tmp_path: Path) -> None:
    frame = _frame(400)
    path = _parquet(tmp_path, frame)
    version, splits, _ = _load(path, id_columns=["id"])
    _, again, _ = _load(path, id_columns=["id"])
    train, val, test = _ids(splits.train), _ids(splits.validation), _ids(splits.test)
    assert train == _ids(again.train)
    assert val == _ids(again.validation)
    assert test == _ids(again.test)
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(400))
    assert version.split == {
        "train": len(train),
        "validation": len(val),
        "test": len(test),
        "dropped_missing_label": 0,
    }
    assert len(val) == pytest.approx(60, abs=2)
    assert len(test) == pytest.approx(60, abs=2)
    overall = (frame["y"] == "yes").mean()
    for part in (splits.train, splits.validation, splits.test):
        labels = part.column("y").to_pylist()
        assert set(labels) == {"yes", "no"}
        assert labels.count("yes") / len(labels) == pytest.approx(overall, abs=0.03)

    other, _, _ = _load(path, id_columns=["id"], split=SplitConfig(seed=7))
    _, other_splits, _ = _load(path, id_columns=["id"], split=SplitConfig(seed=7))
    assert _ids(other_splits.test) != test
    assert other.digest == version.digest


def test_split_table_unstratified_regression_covers_all_rows() -> None:
    n = 101
    table = pa.table({"id": np.arange(n), "x": np.linspace(0, 1, n), "y": np.linspace(0, 5, n)})
    roles = _roles(table, id_columns=["id"])
    assert roles.task == "regression"
    splits = split_table(table, roles, 0.2, 0.1, seed=3, stratify=True)
    sizes = (splits.train.num_rows, splits.validation.num_rows, splits.test.num_rows)
    assert sizes == (n - 20 - 10, 20, 10)
    assert _ids(splits.train) | _ids(splits.validation) | _ids(splits.test) == set(range(n))


def test_split_too_few_rows() -> None:
    table = pa.table({"id": [0, 1, 2], "x": [0.0, 1.0, 2.0], "y": [0.5, 1.5, 2.7]})
    roles = _roles(table, id_columns=["id"])
    with pytest.raises(DataError, match="too few to split"):
        split_table(table, roles, 0.15, 0.15, seed=0, stratify=False)


def test_rows_with_missing_label_are_dropped(tmp_path: Path) -> None:
    frame = _frame(200)
    frame.loc[[3, 50, 99], "y"] = None
    version, splits, _ = _load(_parquet(tmp_path, frame), id_columns=["id"])
    assert version.split["dropped_missing_label"] == 3
    assert version.num_rows == 197
    covered = _ids(splits.train) | _ids(splits.validation) | _ids(splits.test)
    assert covered == set(range(200)) - {3, 50, 99}


# --------------------------------------------------------------------------- profile


def test_profile_numeric_and_categorical(tmp_path: Path) -> None:
    version, splits, _ = _load(_parquet(tmp_path, _frame(300)), id_columns=["id"])
    train = splits.train.to_pandas()
    profile = version.profile
    assert profile["num_rows"] == len(train)

    x = profile["columns"]["x"]
    values = train["x"].to_numpy()
    finite = values[np.isfinite(values)]
    assert x["kind"] == "numeric"
    assert x["count"] == len(values)
    assert x["missing"] == int(np.isnan(values).sum()) > 0
    assert x["mean"] == pytest.approx(finite.mean())
    assert x["std"] == pytest.approx(finite.std())
    assert x["min"] == pytest.approx(finite.min())
    assert x["max"] == pytest.approx(finite.max())
    assert x["quantiles"]["0.50"] == pytest.approx(np.median(finite))
    assert x["quantiles"]["0.00"] == pytest.approx(finite.min())
    assert x["quantiles"]["1.00"] == pytest.approx(finite.max())
    edges = np.asarray(x["histogram"]["edges"])
    np.testing.assert_allclose(edges, np.unique(np.quantile(finite, np.linspace(0, 1, 21))))
    assert np.all(np.diff(edges) > 0)
    assert sum(x["histogram"]["counts"]) == len(finite)
    assert len(x["histogram"]["counts"]) == len(edges) - 1
    # Quantile bins hold roughly equal numbers of rows.
    assert max(x["histogram"]["counts"]) <= 2 * len(finite) / 20 + 2

    colour = profile["columns"]["colour"]
    expected = train["colour"].value_counts(dropna=True)
    assert colour["kind"] == "categorical"
    assert colour["missing"] == int(train["colour"].isna().sum()) > 0
    assert colour["distinct"] == 3
    assert colour["frequencies"] == {str(k): int(v) for k, v in expected.items()}
    assert list(colour["frequencies"].values()) == sorted(expected.to_numpy(), reverse=True)
    assert colour["other"] == 0

    label = profile["label"]
    assert label["kind"] == "categorical"
    assert label["frequencies"] == {str(k): int(v) for k, v in train["y"].value_counts().items()}


def test_profile_of_regression_label(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"x": rng.normal(size=100), "y": rng.normal(10, 2, size=100)})
    version, splits, _ = _load(_parquet(tmp_path, frame))
    assert version.task == "regression"
    label = version.profile["label"]
    train_y = splits.train.column("y").to_numpy()
    assert label["kind"] == "numeric"
    assert label["mean"] == pytest.approx(train_y.mean())
    assert "sha256:" + version.digest in version.summary()


# --------------------------------------------------------------------------- bad inputs


def test_missing_label_column(tmp_path: Path) -> None:
    path = _parquet(tmp_path, _frame())
    message = _data_error(path, label="target")
    assert "label column 'target' not found" in message
    assert path in message


def test_empty_csv_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    message = _data_error(str(path))
    assert str(path) in message
    assert "empty" in message.lower()


def test_zero_row_parquet(tmp_path: Path) -> None:
    path = _parquet(tmp_path, _frame().iloc[:0])
    message = _data_error(path)
    assert message == f"{path} has no rows"


def test_corrupt_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    message = _data_error(str(path))
    assert f"cannot read {path}" in message


def test_corrupt_file_in_folder_is_named(tmp_path: Path) -> None:
    _parquet(tmp_path, _frame(), "good.parquet")
    (tmp_path / "bad.parquet").write_bytes(os.urandom(64))
    message = _data_error(str(tmp_path))
    assert str(tmp_path / "bad.parquet") in message


def test_label_with_single_class(tmp_path: Path) -> None:
    frame = _frame()
    frame["y"] = "yes"
    message = _data_error(_parquet(tmp_path, frame))
    assert "single class (yes)" in message
    assert "'y'" in message


def test_label_all_missing(tmp_path: Path) -> None:
    frame = _frame()
    frame["y"] = pd.Series([None] * len(frame), dtype=object)
    frame["y"] = frame["y"].astype("string")
    message = _data_error(_parquet(tmp_path, frame))
    assert "'y'" in message
    assert "all values missing" in message


def test_non_numeric_value_in_numeric_csv_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    values = [f"{v:.4f}" for v in rng.normal(size=40)]
    values[11] = "abc"
    path = tmp_path / "bad.csv"
    pd.DataFrame({"amount": values, "y": rng.integers(0, 2, 40)}).to_csv(path, index=False)
    message = _data_error(str(path))
    assert "numeric column 'amount'" in message
    assert "'abc'" in message
    assert "row 11" in message


def test_explicit_numeric_column_with_text(tmp_path: Path) -> None:
    frame = _frame()
    frame["colour"] = frame["colour"].fillna("blue")
    path = _parquet(tmp_path, frame)
    with pytest.raises(DataError, match=r"numeric column 'colour'.*non-numeric value"):
        load_dataset(DataConfig(path=path, label="y"), FeaturesConfig(numeric=["colour"]))


def test_missing_path(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.parquet")
    assert _data_error(path) == f"data not found: {path}"


def test_missing_id_and_feature_columns(tmp_path: Path) -> None:
    path = _parquet(tmp_path, _frame())
    assert "id column 'uid' not found" in _data_error(path, id_columns=["uid"])
    with pytest.raises(DataError, match="feature column 'w' not found"):
        load_dataset(DataConfig(path=path, label="y"), FeaturesConfig(numeric=["w"]))


# --------------------------------------------------------------------------- synthetic data


def test_synth_dataset_columns_and_determinism(tmp_path: Path) -> None:
    a = load_table(synth_dataset(str(tmp_path / "a.parquet"), rows=300, features=4, categorical=2))
    b = load_table(synth_dataset(str(tmp_path / "b.parquet"), rows=300, features=4, categorical=2))
    assert a.column_names == ["id", "f0", "f1", "f2", "f3", "c0", "c1", "label"]
    assert a.equals(b)
    assert a.column("id").to_pylist() == list(range(300))
    assert a.schema.field("f0").type == pa.float32()
    assert set(a.column("c0").to_pylist()) <= {f"v{i}" for i in range(8)}
    assert set(a.column("label").to_pylist()) == {0, 1}
    other = load_table(
        synth_dataset(str(tmp_path / "c.parquet"), rows=300, features=4, categorical=2, seed=1)
    )
    assert not other.equals(a)


def test_synth_dataset_forms_hold_the_same_rows(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"rows": 250, "features": 3, "categorical": 1, "seed": 5}
    file = load_table(synth_dataset(str(tmp_path / "one.parquet"), chunk_rows=100, **kwargs))
    folder_path = synth_dataset(str(tmp_path / "parts"), chunk_rows=100, **kwargs)
    parts = sorted(p.name for p in Path(folder_path).iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    folder = load_table(folder_path)
    csv = load_table(synth_dataset(str(tmp_path / "data.csv"), chunk_rows=100, **kwargs))
    assert folder.equals(file)
    assert csv.num_rows == 250
    assert csv.column_names == file.column_names
    assert csv.column("c0").to_pylist() == file.column("c0").to_pylist()
    assert csv.column("label").to_pylist() == file.column("label").to_pylist()
    np.testing.assert_allclose(
        csv.column("f1").to_numpy(), file.column("f1").to_numpy().astype(np.float64), rtol=1e-6
    )


def test_synth_dataset_drift_shifts_means(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"rows": 4000, "features": 4, "categorical": 1, "seed": 3}
    base = load_table(synth_dataset(str(tmp_path / "base.parquet"), **kwargs)).to_pandas()
    drifted = load_table(
        synth_dataset(str(tmp_path / "drift.parquet"), drift=0.5, **kwargs)
    ).to_pandas()
    for col in ("f0", "f1", "f2", "f3"):
        assert base[col].mean() == pytest.approx(0.0, abs=0.08)
        assert drifted[col].mean() - base[col].mean() == pytest.approx(0.5, abs=0.1)
        assert drifted[col].std() == pytest.approx(1.0, abs=0.08)
    # Drift also moves categorical mass from the frequent levels to the rare ones.
    base_share = base["c0"].value_counts(normalize=True)
    drift_share = drifted["c0"].value_counts(normalize=True)
    assert drift_share["v7"] > base_share["v7"]
    assert drift_share["v0"] < base_share["v0"]


def test_synth_dataset_label_follows_features(tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    kwargs: dict[str, Any] = {"rows": 2000, "features": 6, "seed": 11}
    train = load_table(synth_dataset(str(tmp_path / "train.parquet"), **kwargs)).to_pandas()
    shifted = load_table(
        synth_dataset(str(tmp_path / "shifted.parquet"), drift=0.5, **kwargs)
    ).to_pandas()
    cols = [f"f{j}" for j in range(6)]
    model = LogisticRegression().fit(train[cols], train["label"])
    majority = max(train["label"].mean(), 1 - train["label"].mean())
    accuracy = model.score(train[cols], train["label"])
    assert accuracy > 0.8
    assert accuracy > majority + 0.2
    # Covariate shift keeps the concept: the same model still predicts the drifted data.
    assert model.score(shifted[cols], shifted["label"]) > 0.75

    reg = load_table(
        synth_dataset(str(tmp_path / "reg.parquet"), task="regression", **kwargs)
    ).to_pandas()
    assert reg["label"].dtype == np.float64
    assert reg["label"].nunique() > 1000
    assert LinearRegression().fit(reg[cols], reg["label"]).score(reg[cols], reg["label"]) > 0.6


def test_synth_regression_dataset_loads_as_regression(tmp_path: Path) -> None:
    path = synth_dataset(str(tmp_path / "reg"), rows=200, features=3, task="regression")
    version, _, roles = _load(path, label="label", id_columns=["id"])
    assert version.task == "regression"
    assert roles.numeric == ["f0", "f1", "f2"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rows": 0}, "--rows"),
        ({"rows": 10, "features": 0, "categorical": 0}, "at least one feature"),
        ({"rows": 10, "drift": -0.1}, "--drift"),
    ],
)
def test_synth_dataset_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DataError, match=match):
        synth_dataset(str(tmp_path / "x.parquet"), **kwargs)


# --------------------------------------------------------------------------- describe


def test_describe_path_bundled_breast_cancer() -> None:
    version = describe_path("sklearn:breast_cancer", label="target")
    assert version.num_rows == 569
    assert version.task == "classification"
    assert version.label == "target"
    assert version.classes == ["benign", "malignant"]
    assert len(version.features) == 30
    assert "mean_radius" in version.features
    assert HEX64.match(version.digest)
    assert describe_path("sklearn:breast_cancer", label="target").digest == version.digest
    assert version.profile["label"]["frequencies"] == {"benign": 357, "malignant": 212}
    assert version.profile["columns"]["mean_radius"]["count"] == 569
    assert DatasetVersion.from_dict(version.to_dict()) == version


def test_describe_path_defaults_to_last_column(tmp_path: Path) -> None:
    path = _parquet(tmp_path, _frame())
    version = describe_path(path)
    assert version.label == "y"
    assert version.num_rows == 200
    assert version.split == {}
    summary = version.summary()
    assert "rows:    200" in summary
    assert "colour" in summary
