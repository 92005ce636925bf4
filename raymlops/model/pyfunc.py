"""The MLflow pyfunc flavor of a raymlops model: what makes every registered version a model
that MLflow's own tools load, serve and evaluate.

`save_mlflow_model` writes MLflow's files for a model folder (MLmodel with the pyfunc
flavor, signature, input example, pinned pip requirements, and the models-from-code file
`mlflow_model.py`); the weights and preprocessing stay raymlops' safetensors + JSON files
beside them. `RaymlopsModel` is the PythonModel MLflow runs: it loads those files with
`Predictor.load` (SHA-256 of every file checked against the folder's manifest first) and
answers with the same frame as `Predictor.predict(...).to_frame()`. Nothing is pickled.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext  # run time: see `predict`

from raymlops.model.features import TabularInput, to_columns

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

    from raymlops.model.features import Preprocessor
    from raymlops.model.predictor import Predictor

__all__ = [
    "CODE_FILE",
    "EXAMPLE_KINDS",
    "MLFLOW_FILES",
    "MLMODEL",
    "OUTPUTS",
    "RaymlopsModel",
    "example_frame",
    "example_rows",
    "input_types",
    "model_signature",
    "pip_requirements",
    "profile_row",
    "save_mlflow_model",
    "version_example",
]

#: The models-from-code file MLflow copies into every version (see its docstring).
CODE_FILE = Path(__file__).with_name("mlflow_model.py")
#: MLflow's model description file; a folder holding it is an MLflow model.
MLMODEL = "MLmodel"
#: The files MLflow writes into a version beside raymlops' JSON and safetensors (models from
#: code: its MLmodel, the model's code, pinned requirements, environment files, registry meta).
MLFLOW_FILES = frozenset(
    {
        MLMODEL,
        CODE_FILE.name,
        "requirements.txt",
        "python_env.yaml",
        "conda.yaml",
        "registered_model_meta",
    }
)
#: Distributions pinned in a version's requirements: what the pyfunc imports (raymlops and
#: its model stack) at the versions it was trained under.
_PINNED = ("raymlops", "mlflow", "torch", "safetensors", "numpy", "pandas", "pyarrow", "ray")
#: Rows in a version's input example.
EXAMPLE_ROWS = 5
#: What the pyfunc answers (its model_config `output`, saved as "frame"; MLflow lets a loader
#: override only keys the saved model_config has): the whole frame, or `prediction` alone.
OUTPUTS = ("frame", "prediction")


class RaymlopsModel(PythonModel):  # type: ignore[misc]  # mlflow ships no type hints
    """A raymlops model folder as an MLflow PythonModel (see the module docstring).

    `folder` holds the version's files; `mlflow_model.py` passes its own folder, since MLflow
    runs the copy that lies in the model. Features the signature marks optional and a
    request leaves out are read as missing (imputed, or the unknown category), as in
    training. Loaded with `model_config={"output": "prediction"}` it answers the
    `prediction` column alone, as a Series: what `mlflow.models.evaluate` needs of a
    classifier or regressor (it takes one column of predictions)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._predictor: Predictor | None = None
        self._output = "frame"

    def load_context(self, context: PythonModelContext) -> None:
        """Load and verify the weights and preprocessing (ArtifactIntegrityError on a
        digest mismatch, before any file is parsed)."""
        from raymlops.core.errors import UserInputError
        from raymlops.model.predictor import Predictor

        output = (getattr(context, "model_config", None) or {}).get("output", "frame")
        if output not in OUTPUTS:
            raise UserInputError(
                f"model_config output={output!r}: one of {', '.join(map(repr, OUTPUTS))}"
            )
        self._output = output
        self._predictor = Predictor.load(self.folder)

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame | pd.Series:
        """`prediction` (label or value) and, for classification, `proba_<class>` per class:
        `Predictor.predict(rows).to_frame()` (its `prediction` column alone with
        model_config output=prediction). (MLflow reads these annotations with
        `typing.get_type_hints`, so every name in them is imported at run time.)"""
        if self._predictor is None:
            self.load_context(context)
        assert self._predictor is not None
        frame = pd.DataFrame(model_input)
        for name in self._predictor.feature_names:
            if name not in frame.columns:  # optional in the signature: missing in every row
                frame[name] = np.nan if name in self._predictor.preprocessor.numeric else None
        result = self._predictor.predict(frame).to_frame()
        return result["prediction"] if self._output == "prediction" else result


def input_types(
    prep: Preprocessor,
    schema: dict[str, str],
    profile: dict[str, Any] | None = None,
    optional: bool = False,
) -> dict[str, str]:
    """The MLflow type of each feature, as MLflow infers it from the training frame: an
    integer column is `long` (`double` when the training profile counts missing values:
    pandas holds those as floats), a float column `double`, a boolean one `boolean`, a
    numeric feature stored as text `double`, any other `string`. `schema` holds the Arrow
    type of each training column (`DatasetVersion.schema`). With `optional` (the version's
    `serve.allow_missing`) every integer column is `double`: MLflow refuses a missing value
    in a `long`, and serving accepts one (an integral float reads as the same category)."""
    columns = (profile or {}).get("columns", {})
    types: dict[str, str] = {}
    for name in prep.feature_names:
        arrow = schema.get(name, "")
        if arrow == "bool":
            types[name] = "boolean"
        elif arrow.startswith(("int", "uint")):
            missing = optional or columns.get(name, {}).get("missing")
            types[name] = "double" if missing else "long"
        elif arrow.startswith(("float", "double", "halffloat")) or name in prep.numeric:
            types[name] = "double"
        else:
            types[name] = "string"
    return types


def model_signature(prep: Preprocessor, types: dict[str, str], optional: bool) -> ModelSignature:
    """Inputs: each feature with its type (`input_types`) and `required=not optional`;
    outputs: the frame `Predictor.predict(...).to_frame()` returns. `optional` is the
    version's `serve.allow_missing`: whether a missing value is accepted (and imputed); an
    optional feature may be left out of a request altogether."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = [ColSpec(types[name], name, required=not optional) for name in prep.feature_names]
    if prep.classes is None:
        outputs = [ColSpec("double", "prediction")]
    else:
        outputs = [ColSpec("string", "prediction")]
        outputs += [ColSpec("double", f"proba_{cls}") for cls in prep.classes]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def pip_requirements() -> list[str]:
    """`name==version` of each distribution in `_PINNED` installed here (a local version
    label such as torch's `+cpu` dropped: pip finds the release under its public number)."""
    pins = []
    for name in _PINNED:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        pins.append(f"{name}=={version.split('+', 1)[0]}")
    return pins


#: What a version's input example holds (`registry.input_example`).
EXAMPLE_KINDS = ("profile", "rows")


def version_example(
    prep: Preprocessor,
    types: dict[str, str],
    profile: dict[str, Any],
    source: str = "",
    fmt: str = "auto",
    kind: str = "profile",
) -> pd.DataFrame:
    """A version's input example (`registry.input_example`): 'profile', one typical row of
    the training profile (`profile_row`): no training row leaves the data for the registry,
    whose readers need not be allowed to see it; 'rows', the training data's first rows
    (`example_rows`)."""
    if kind == "rows":
        return example_rows(prep, types, source, fmt, profile)
    return profile_row(prep, types, profile)


def example_rows(
    prep: Preprocessor,
    types: dict[str, str],
    source: str,
    fmt: str = "auto",
    profile: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Up to `EXAMPLE_ROWS` rows of the training data's features, read from the start of
    `source`: complete rows (the first rows, when none is). When the data cannot be read
    (moved, deleted), one row of the training profile's medians and most frequent
    categories."""
    from raymlops.core.errors import DataError
    from raymlops.data.dataset import iter_tables

    try:
        table = next(iter(iter_tables(source, fmt, per_file=1000)), None)
    except DataError:
        table = None
    if table is None or not set(prep.feature_names) <= set(table.column_names):
        return profile_row(prep, types, profile or {})
    frame = table.select(prep.feature_names).to_pandas()
    complete = frame.notna().all(axis=1)
    if complete.any():
        frame = frame[complete]
    return _typed(frame.head(EXAMPLE_ROWS).reset_index(drop=True), prep, types)


def example_frame(prep: Preprocessor, types: dict[str, str], data: TabularInput) -> pd.DataFrame:
    """The first `EXAMPLE_ROWS` of `data` (any input `Predictor.predict` takes), features
    only, typed as the signature says: a version's input example."""
    columns = to_columns(data)
    frame = pd.DataFrame({name: list(columns[name]) for name in prep.feature_names})
    return _typed(frame.head(EXAMPLE_ROWS), prep, types)


def profile_row(prep: Preprocessor, types: dict[str, str], profile: dict[str, Any]) -> pd.DataFrame:
    """One row of the training profile's medians and most frequent categories (the value
    training imputes, or the first vocabulary entry, where the profile has none), typed as
    the signature says: a typical input that is no one's record."""
    columns = profile.get("columns", {})
    row: dict[str, Any] = {}
    for name in prep.numeric:
        row[name] = columns.get(name, {}).get("quantiles", {}).get("0.50", prep.impute[name])
    for name in prep.categorical:
        top = list(columns.get(name, {}).get("frequencies", {})) or prep.vocab.get(name, [])
        row[name] = top[0] if top else None
    return _typed(pd.DataFrame([row]), prep, types)


def _typed(frame: pd.DataFrame, prep: Preprocessor, types: dict[str, str]) -> pd.DataFrame:
    """`frame`'s columns as the signature types them (`input_types`). A missing value in a
    `long` column (possible only in rows outside the training split) becomes the value
    training imputes, or the most frequent category: MLflow refuses it in a `long`."""
    out = pd.DataFrame(index=frame.index)
    for name in prep.feature_names:
        values, kind = frame[name], types[name]
        if kind in ("double", "long"):
            numbers = pd.to_numeric(values, errors="coerce").astype("float64")
            if kind == "long":
                vocab = prep.vocab.get(name) or ["0"]
                fill = prep.impute[name] if name in prep.impute else pd.to_numeric(vocab[0])
                numbers = numbers.fillna(round(float(fill))).astype("int64")
            out[name] = numbers
        elif kind == "boolean":  # True, or "True" from a profile's frequencies
            spelled = values.astype("string").str.lower()
            out[name] = spelled.map({"true": True, "false": False}).astype("boolean")
        else:
            out[name] = (
                values.astype(object)
                .where(values.notna(), None)
                .map(lambda v: v if v is None else str(v))
            )
    return out


def save_mlflow_model(
    folder: str | Path,
    prep: Preprocessor,
    types: dict[str, str],
    example: pd.DataFrame,
    optional: bool = True,
) -> list[str]:
    """Write MLflow's files of a pyfunc model into `folder` (empty or new): MLmodel (models
    from code, signature, input example), requirements pinned to this environment, and the
    code file. The raymlops files (`Predictor.save`) go into the same folder. Returns the
    names written."""
    import mlflow.pyfunc

    target = Path(folder)
    before = set(target.iterdir()) if target.exists() else set()
    # MLflow logs at INFO that it checked the example against the signature: every
    # registration would print it.
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        mlflow.pyfunc.save_model(
            path=str(target),
            python_model=str(CODE_FILE),
            signature=model_signature(prep, types, optional),
            input_example=example,
            pip_requirements=pip_requirements(),
            model_config={"output": "frame"},
        )
    finally:
        logger.setLevel(level)
    return sorted(p.name for p in set(target.iterdir()) - before)
