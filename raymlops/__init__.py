"""raymlops: the machine-learning lifecycle for PyTorch models on Ray.

Public names are imported lazily so that `import raymlops` (and the CLI's `--help`) stays
fast and does not import torch, Ray or MLflow until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AliasEvent": "raymlops.registry",
    "ArtifactIntegrityError": "raymlops.errors",
    "BatchResult": "raymlops.batch",
    "Client": "raymlops.serving",
    "ConfigError": "raymlops.errors",
    "DataError": "raymlops.errors",
    "DatasetVersion": "raymlops.data",
    "FeatureDrift": "raymlops.drift",
    "GateResult": "raymlops.gate",
    "ModelVersionInfo": "raymlops.registry",
    "MonitorResult": "raymlops.monitor",
    "PipelineConfig": "raymlops.config",
    "PredictResult": "raymlops.serving",
    "Prediction": "raymlops.predictor",
    "Predictor": "raymlops.predictor",
    "Preprocessor": "raymlops.features",
    "PromotionDecision": "raymlops.governance",
    "PromotionError": "raymlops.governance",
    "RaymlopsError": "raymlops.errors",
    "Registry": "raymlops.registry",
    "RegistryError": "raymlops.errors",
    "ResourceError": "raymlops.errors",
    "RunResult": "raymlops.pipeline",
    "SearchStalledError": "raymlops.errors",
    "ServeStatus": "raymlops.serving",
    "ServingError": "raymlops.serving",
    "TrainResult": "raymlops.pipeline",
    "TrainingError": "raymlops.errors",
    "UserInputError": "raymlops.errors",
    "approve": "raymlops.governance",
    "describe_path": "raymlops.data",
    "list_architectures": "raymlops.models",
    "load_config": "raymlops.config",
    "load_dataset": "raymlops.data",
    "model_history": "raymlops.governance",
    "promote": "raymlops.governance",
    "promote_if_passed": "raymlops.governance",
    "read_prediction_log": "raymlops.serving",
    "register_architecture": "raymlops.models",
    "render_card": "raymlops.cards",
    "rollback": "raymlops.governance",
    "run_batch": "raymlops.batch",
    "run_gate": "raymlops.gate",
    "run_monitor": "raymlops.monitor",
    "run_pipeline": "raymlops.pipeline",
    "serve_model": "raymlops.serving",
    "store_card": "raymlops.cards",
    "synth_dataset": "raymlops.data",
    "train_and_register": "raymlops.pipeline",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from raymlops.batch import BatchResult, run_batch
    from raymlops.cards import render_card, store_card
    from raymlops.config import PipelineConfig, load_config
    from raymlops.data import DatasetVersion, describe_path, load_dataset, synth_dataset
    from raymlops.drift import FeatureDrift
    from raymlops.errors import (
        ArtifactIntegrityError,
        ConfigError,
        DataError,
        RaymlopsError,
        RegistryError,
        ResourceError,
        SearchStalledError,
        TrainingError,
        UserInputError,
    )
    from raymlops.features import Preprocessor
    from raymlops.gate import GateResult, run_gate
    from raymlops.governance import (
        PromotionDecision,
        PromotionError,
        approve,
        model_history,
        promote,
        promote_if_passed,
        rollback,
    )
    from raymlops.models import list_architectures, register_architecture
    from raymlops.monitor import MonitorResult, run_monitor
    from raymlops.pipeline import RunResult, TrainResult, run_pipeline, train_and_register
    from raymlops.predictor import Prediction, Predictor
    from raymlops.registry import AliasEvent, ModelVersionInfo, Registry
    from raymlops.serving import (
        Client,
        PredictResult,
        ServeStatus,
        ServingError,
        read_prediction_log,
        serve_model,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raymlops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
