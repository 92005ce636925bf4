"""raymlops: the machine-learning lifecycle for PyTorch models on Ray.

Public names are imported lazily so that `import raymlops` (and the CLI's `--help`) stays
fast and does not import torch, Ray or MLflow until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "ArtifactIntegrityError": "raymlops.errors",
    "ConfigError": "raymlops.errors",
    "DataError": "raymlops.errors",
    "DatasetVersion": "raymlops.data",
    "ModelVersionInfo": "raymlops.registry",
    "PipelineConfig": "raymlops.config",
    "Prediction": "raymlops.predictor",
    "Predictor": "raymlops.predictor",
    "Preprocessor": "raymlops.features",
    "RaymlopsError": "raymlops.errors",
    "Registry": "raymlops.registry",
    "RegistryError": "raymlops.errors",
    "ResourceError": "raymlops.errors",
    "RunResult": "raymlops.pipeline",
    "TrainResult": "raymlops.pipeline",
    "TrainingError": "raymlops.errors",
    "UserInputError": "raymlops.errors",
    "describe_path": "raymlops.data",
    "list_architectures": "raymlops.models",
    "load_config": "raymlops.config",
    "load_dataset": "raymlops.data",
    "register_architecture": "raymlops.models",
    "run_pipeline": "raymlops.pipeline",
    "synth_dataset": "raymlops.data",
    "train_and_register": "raymlops.pipeline",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from raymlops.config import PipelineConfig, load_config
    from raymlops.data import DatasetVersion, describe_path, load_dataset, synth_dataset
    from raymlops.errors import (
        ArtifactIntegrityError,
        ConfigError,
        DataError,
        RaymlopsError,
        RegistryError,
        ResourceError,
        TrainingError,
        UserInputError,
    )
    from raymlops.features import Preprocessor
    from raymlops.models import list_architectures, register_architecture
    from raymlops.pipeline import RunResult, TrainResult, run_pipeline, train_and_register
    from raymlops.predictor import Prediction, Predictor
    from raymlops.registry import ModelVersionInfo, Registry


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raymlops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
