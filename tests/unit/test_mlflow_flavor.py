"""The MLflow flavor's parts that need no registry (raymlops.model.pyfunc): the signature's
types and optionality, the input example's rows, the pinned requirements. What MLflow does
with a registered version is tested in tests/integration/test_mlflow_pyfunc.py."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raymlops.model.features import Preprocessor
from raymlops.model.pyfunc import (
    EXAMPLE_ROWS,
    example_rows,
    input_types,
    model_signature,
    pip_requirements,
    version_example,
)


def _prep(classes: list[str] | None = None) -> Preprocessor:
    return Preprocessor(
        numeric=["age", "income"],
        categorical=["city", "code", "member"],
        task="classification" if classes else "regression",
        impute={"age": 40.0, "income": 1000.0},
        mean={"age": 0.0, "income": 0.0},
        std={"age": 1.0, "income": 1.0},
        vocab={"city": ["paris", "oslo"], "code": ["7", "9"], "member": ["True"]},
        classes=classes,
    )


TYPES = {"age": "int64", "income": "double", "city": "string", "code": "int64", "member": "bool"}


def test_signature_types_follow_the_training_columns_and_allow_missing() -> None:
    prep = _prep(["no", "yes"])
    profile = {"columns": {"age": {"missing": 3}, "code": {"missing": 0}}}
    types = input_types(prep, TYPES, profile, optional=True)
    optional = model_signature(prep, types, optional=True)
    inputs = {c["name"]: (c["type"], c["required"]) for c in optional.inputs.to_dict()}
    # Optional features (serve.allow_missing) take a missing value, which MLflow refuses in
    # a long: every integer column is a double, also one without missing training values.
    assert inputs == {
        "age": ("double", False),
        "income": ("double", False),
        "city": ("string", False),
        "code": ("double", False),
        "member": ("boolean", False),
    }
    # Required features: as MLflow infers them from the training frame, an integer column
    # with missing training values is a double (pandas holds it as floats), one without a
    # long.
    required = input_types(prep, TYPES, profile, optional=False)
    assert (required["age"], required["code"]) == ("double", "long")
    assert [c["name"] for c in optional.outputs.to_dict()] == [
        "prediction",
        "proba_no",
        "proba_yes",
    ]
    strict = model_signature(_prep(), required, optional=False)
    assert all(c["required"] for c in strict.inputs.to_dict())
    assert strict.outputs.to_dict() == [{"type": "double", "name": "prediction", "required": True}]


def test_the_example_is_complete_training_rows_first(tmp_path: Path) -> None:
    rows = pd.DataFrame(
        {
            "age": [None, 31, 52, 23, 44, 35, 61],
            "income": [10.0, 20.0, None, 40.0, 50.0, 60.0, 70.0],
            "city": ["paris", "oslo", "oslo", None, "paris", "rome", "oslo"],
            "code": [7, 9, 7, 9, 7, 9, 7],
            "member": [True, False, True, True, False, True, False],
            "label": [1, 0, 1, 0, 1, 0, 1],
        }
    )
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), path)

    example = example_rows(_prep(), input_types(_prep(), TYPES), str(path))

    assert len(example) == 4 <= EXAMPLE_ROWS  # the complete rows only
    assert list(example.columns) == ["age", "income", "city", "code", "member"]
    assert example["age"].tolist() == [31, 44, 35, 61]
    assert example["city"].tolist() == ["oslo", "paris", "rome", "oslo"]
    assert example["member"].tolist() == [False, False, True, False]
    assert example["age"].dtype == "int64" and example["income"].dtype == "float64"


def test_without_readable_data_the_example_is_the_profile_s_typical_row(tmp_path: Path) -> None:
    profile = {
        "columns": {
            "age": {"quantiles": {"0.50": 38.0}},
            "income": {},
            "city": {"frequencies": {"oslo": 9, "paris": 3}},
        }
    }
    types = input_types(_prep(), TYPES, profile)
    example = example_rows(_prep(), types, str(tmp_path / "gone.parquet"), profile=profile)

    assert example.to_dict(orient="records") == [
        {"age": 38, "income": 1000.0, "city": "oslo", "code": 7, "member": True}
    ]


def test_the_version_example_is_the_profile_s_row_unless_rows_are_asked_for(
    tmp_path: Path,
) -> None:
    """Training rows may be someone's record: a version's example (which every reader of
    the registry sees) is the profile's typical row unless `registry.input_example: rows`."""
    rows = pd.DataFrame(
        {
            "age": [31, 52],
            "income": [20.0, 30.0],
            "city": ["oslo", "paris"],
            "code": [9, 7],
            "member": [False, True],
        }
    )
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), path)
    profile = {
        "columns": {
            "age": {"quantiles": {"0.50": 41.0}},
            "income": {"quantiles": {"0.50": 25.0}},
            "city": {"frequencies": {"paris": 9, "oslo": 3}},
            "code": {"frequencies": {"9": 5}},
            "member": {"frequencies": {"True": 4}},
        }
    }
    types = input_types(_prep(), TYPES, profile)

    typical = version_example(_prep(), types, profile, str(path))
    assert typical.to_dict(orient="records") == [
        {"age": 41, "income": 25.0, "city": "paris", "code": 9, "member": True}
    ]
    real = version_example(_prep(), types, profile, str(path), kind="rows")
    assert real["age"].tolist() == [31, 52] and real["city"].tolist() == ["oslo", "paris"]


def test_requirements_pin_the_installed_versions() -> None:
    pins = dict(line.split("==") for line in pip_requirements())
    assert pins["torch"] == metadata.version("torch").split("+")[0]  # no local label (+cpu)
    for name in ("raymlops", "mlflow", "safetensors", "numpy", "pandas", "pyarrow"):
        assert pins[name] == metadata.version(name), name
