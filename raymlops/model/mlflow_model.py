"""MLflow's "models from code" file of every registered raymlops version.

Why this module exists: MLflow loads a pyfunc model either by unpickling a Python object or,
with models from code, by running a Python file that names the model with
`mlflow.models.set_model`. raymlops artifacts carry no pickles, so `Registry.register` hands
MLflow this file's path (`mlflow.pyfunc.save_model(python_model=CODE_FILE)`); MLflow copies
it into the version's folder next to MLmodel, and every MLflow tool that loads the version
(`mlflow.pyfunc.load_model`, `mlflow models serve`, `mlflow.models.evaluate`) runs that copy.
The model's logic stays in the package (`raymlops.model.pyfunc.RaymlopsModel`); the copy
only points at it and at its own folder, where the weights (safetensors) and preprocessing
(JSON) lie beside it and are digest-checked before they are read.

Running it has an effect (`set_model`): that is its whole purpose, so nothing in raymlops
imports it; MLflow runs it by path.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.models import set_model

from raymlops.model.pyfunc import RaymlopsModel

set_model(RaymlopsModel(Path(__file__).resolve().parent))
