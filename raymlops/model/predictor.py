"""The Predictor: a model plus its fitted preprocessing — THE way rows become predictions.

Tune's evaluation, `raymlops run`'s sample predictions, and (in later steps) the Serve
replica and the Ray Data actor all call `Predictor.predict`, so training and serving share
one code path. A saved Predictor is a folder of safetensors + JSON files whose SHA-256
digests are checked before anything is loaded; nothing in it is ever executed.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from raymlops.core.errors import ArtifactIntegrityError, RegistryError
from raymlops.core.model_uri import parse_model_uri
from raymlops.model.architectures import build_model, list_architectures
from raymlops.model.artifacts import MANIFEST, verify_folder, write_json, write_manifest
from raymlops.model.features import Preprocessor, TabularInput, to_columns

__all__ = ["Prediction", "Predictor", "PredictorSource"]

WEIGHTS = "weights.safetensors"
ARCHITECTURE = "architecture.json"
PREPROCESSING = "preprocessing.json"


class PredictorSource(Protocol):
    """Where registered Predictors come from: `raymlops.Registry` is one."""

    def load_predictor(self, name: str, ref: str | int = ...) -> Predictor:
        """The verified Predictor of `name`'s version number or alias `ref`."""
        ...


@dataclass
class Prediction:
    """Predictions for a batch of rows.

    `predictions` holds class labels (classification) or values (regression);
    `probabilities` is (rows, classes) for classification and None otherwise.
    """

    predictions: np.ndarray
    probabilities: np.ndarray | None
    classes: list[str] | None

    def to_frame(self) -> pd.DataFrame:
        """One row per input: `prediction` and a `proba_<class>` column per class."""
        frame = pd.DataFrame({"prediction": self.predictions})
        if self.probabilities is not None and self.classes is not None:
            for j, cls in enumerate(self.classes):
                frame[f"proba_{cls}"] = self.probabilities[:, j]
        return frame


class Predictor:
    """A torch model with its fitted Preprocessor and metadata (name, version, metrics)."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessor: Preprocessor,
        architecture: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        device: str = "cpu",
    ) -> None:
        self.model = model.to(device).eval()
        self.preprocessor = preprocessor
        self.architecture = architecture
        self.metadata = dict(metadata or {})
        self.device = device

    # ------------------------------------------------------------------ prediction
    @property
    def task(self) -> str:
        return self.preprocessor.task

    @property
    def feature_names(self) -> list[str]:
        """Raw input columns the model needs."""
        return self.preprocessor.feature_names

    def predict_matrix(self, features: np.ndarray) -> np.ndarray:
        """Preprocessed matrix → probabilities (classification) or values (regression)."""
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
            outputs = self.model(tensor.to(self.device))
            if self.preprocessor.classes is not None:
                return np.asarray(torch.softmax(outputs, dim=1).cpu().numpy())
            values = outputs.squeeze(1).cpu().numpy().astype(np.float64)
            return self.preprocessor.decode_regression(values)

    def predict(self, data: TabularInput) -> Prediction:
        """Predict from a DataFrame, Arrow table/batch, dict of arrays or list of records."""
        columns = to_columns(data)
        outputs = self.predict_matrix(self.preprocessor.transform(columns))
        classes = self.preprocessor.classes
        if classes is None:
            return Prediction(outputs, None, None)
        labels = np.asarray(classes, dtype=object)[outputs.argmax(axis=1)]
        return Prediction(labels, outputs, list(classes))

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path, extra_files: dict[str, Any] | None = None) -> dict[str, str]:
        """Write weights (safetensors), architecture and preprocessing (JSON), and any
        `extra_files` (name → JSON-able data), then a manifest; returns the file digests."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(target / WEIGHTS))
        write_json(target / ARCHITECTURE, self.architecture)
        write_json(target / PREPROCESSING, self.preprocessor.to_dict())
        for name, content in (extra_files or {}).items():
            write_json(target / name, content)
        return write_manifest(target)

    @classmethod
    def load(
        cls,
        folder: str | Path,
        expected_digests: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        device: str = "cpu",
    ) -> Predictor:
        """Load a saved Predictor, verifying every file's SHA-256 first.

        `expected_digests` (from the registry) take precedence over the folder's own
        manifest; a mismatch raises ArtifactIntegrityError before any file is parsed.
        """
        source = Path(folder)
        if expected_digests is None:
            manifest = source / MANIFEST
            if not manifest.is_file():
                raise ArtifactIntegrityError(f"{source} has no {MANIFEST}; cannot verify it")
            expected_digests = json.loads(manifest.read_text())
        for required in (WEIGHTS, ARCHITECTURE, PREPROCESSING):
            if required not in expected_digests:
                raise ArtifactIntegrityError(f"no digest recorded for {required}")
        verify_folder(source, expected_digests)
        architecture = json.loads((source / ARCHITECTURE).read_text())
        where = (
            f"{metadata['name']} v{metadata['version']}"
            if metadata and "version" in metadata
            else str(source)
        )
        _check_architecture(architecture, where)
        preprocessor = Preprocessor.from_dict(json.loads((source / PREPROCESSING).read_text()))
        model = build_model(
            architecture["name"],
            architecture["params"],
            architecture["in_features"],
            architecture["out_features"],
        )
        model.load_state_dict(load_file(str(source / WEIGHTS)))
        return cls(model, preprocessor, architecture, metadata, device=device)

    @classmethod
    def from_uri(cls, uri: str, registry: PredictorSource) -> Predictor:
        """The verified Predictor that `models:/NAME@ALIAS` or `models:/NAME/VERSION` names
        in `registry` (a `raymlops.Registry`), e.g.
        `Predictor.from_uri("models:/breast-cancer@champion", Registry())`.

        The registry is an argument because this layer may not import it (it sits above the
        model); `raymlops.load_predictor(uri)` does the same with the default registry.
        Raises UserInputError on a malformed URI, RegistryError on an unknown model, alias
        or version.
        """
        parsed = parse_model_uri(uri)
        return registry.load_predictor(parsed.name, parsed.ref)

    def __repr__(self) -> str:
        meta = self.metadata
        where = f"{meta.get('name')} v{meta.get('version')}" if "version" in meta else "unsaved"
        return f"Predictor({where}, task={self.task}, features={len(self.feature_names)})"


#: Environment variable: modules (comma-separated) that a model's architecture.json may name
#: for import (`package.module:Name`) when no process has registered that architecture yet.
ENV_ALLOWED_MODULES = "RAYMLOPS_ALLOWED_MODULES"
#: Bounds on a saved model's shape: a tampered architecture.json cannot make a loader
#: allocate without limit.
MAX_IN_FEATURES, MAX_OUT_FEATURES = 1_000_000, 100_000


def _check_architecture(architecture: dict[str, Any], where: str) -> None:
    """RegistryError (exit 2) naming the model and the field unless architecture.json names
    a registered architecture (or one whose module the operator allows, which is then
    imported) and a bounded shape. Registered means: built in, or imported by a config that
    names it; a name in a model's files alone never makes raymlops import a module."""
    name = architecture.get("name")
    if not isinstance(name, str):
        raise RegistryError(f"{where}: architecture.json has no architecture name")
    if name not in list_architectures():
        module = name.split(":", 1)[0] if ":" in name else None
        allowed = {m.strip() for m in os.environ.get(ENV_ALLOWED_MODULES, "").split(",")}
        if module is None or module not in allowed:
            raise RegistryError(
                f"{where}: architecture.json names {name!r}, which no config registered; "
                f"raymlops imports a module a model names only when {ENV_ALLOWED_MODULES} "
                "lists it"
            )
    for field, bound in (("in_features", MAX_IN_FEATURES), ("out_features", MAX_OUT_FEATURES)):
        value = architecture.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= bound:
            raise RegistryError(
                f"{where}: architecture.json {field}={value!r} is outside 1…{bound:,}"
            )


def warn_on_environment_change(recorded: dict[str, str], current: dict[str, str]) -> None:
    """Warn when a model is loaded under other library versions than it was trained with."""
    changed = [
        f"{k} {recorded[k]} → {current[k]}"
        for k in sorted(recorded)
        if k in current and recorded[k] != current[k]
    ]
    if changed:
        warnings.warn(
            "model was trained under a different environment: " + ", ".join(changed),
            RuntimeWarning,
            stacklevel=3,
        )
