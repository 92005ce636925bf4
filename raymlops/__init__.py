"""raymlops: the machine-learning lifecycle for PyTorch models on Ray.

Public names are imported lazily so that `import raymlops` (and the CLI's `--help`) stays
fast and does not import torch, Ray or MLflow until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AliasEvent": "raymlops.registry.store",
    "ArtifactIntegrityError": "raymlops.core.errors",
    "BatchResult": "raymlops.batch.run",
    "Client": "raymlops.serve.api",
    "ConfigError": "raymlops.core.errors",
    "DataError": "raymlops.core.errors",
    "DatasetVersion": "raymlops.data.dataset",
    "FeatureDrift": "raymlops.monitor.drift",
    "FeatureImportance": "raymlops.model.importance",
    "GateResult": "raymlops.loop.gate_result",
    "JobLauncher": "raymlops.cluster.launcher",
    "ModelVersionInfo": "raymlops.registry.store",
    "MonitorResult": "raymlops.monitor.result",
    "PipelineConfig": "raymlops.core.config",
    "PredictResult": "raymlops.serve.api",
    "Prediction": "raymlops.model.predictor",
    "Predictor": "raymlops.model.predictor",
    "Preprocessor": "raymlops.model.features",
    "PromotionDecision": "raymlops.loop.governance",
    "PromotionError": "raymlops.loop.governance",
    "RaymlopsError": "raymlops.core.errors",
    "Registry": "raymlops.registry.store",
    "RegistryError": "raymlops.core.errors",
    "ResourceError": "raymlops.core.errors",
    "RunResult": "raymlops.loop.pipeline",
    "SearchStalledError": "raymlops.core.errors",
    "ServiceUnreachableError": "raymlops.core.errors",
    "ServeStatus": "raymlops.serve.api",
    "ServingError": "raymlops.serve.api",
    "TrainResult": "raymlops.loop.training",
    "TrainingError": "raymlops.core.errors",
    "UserInputError": "raymlops.core.errors",
    "approve": "raymlops.loop.governance",
    "card": "raymlops.loop.api",
    "compact_prediction_log": "raymlops.serve.prediction_log",
    "describe_path": "raymlops.data.dataset",
    "gate": "raymlops.loop.api",
    "list_architectures": "raymlops.model.architectures",
    "load_config": "raymlops.core.config",
    "load_dataset": "raymlops.data.dataset",
    "load_predictor": "raymlops.registry.store",
    "model_history": "raymlops.loop.governance",
    "promote": "raymlops.loop.governance",
    "promote_if_passed": "raymlops.loop.governance",
    "read_prediction_log": "raymlops.serve.api",
    "register_architecture": "raymlops.model.architectures",
    "render_card": "raymlops.loop.cards",
    "retrain": "raymlops.loop.api",
    "rollback": "raymlops.loop.governance",
    "run_batch": "raymlops.batch.run",
    "run_gate": "raymlops.loop.gate",
    "run_monitor": "raymlops.monitor.run",
    "permutation_importance": "raymlops.model.importance",
    "run_pipeline": "raymlops.loop.pipeline",
    "serve_canary": "raymlops.serve.api",
    "serve_canary_quality": "raymlops.serve.api",
    "serve_config_yaml": "raymlops.serve.api",
    "serve_model": "raymlops.serve.api",
    "serve_promote": "raymlops.serve.api",
    "serve_rollback": "raymlops.serve.api",
    "serve_status": "raymlops.serve.api",
    "serve_statuses": "raymlops.serve.api",
    "serve_stop": "raymlops.serve.api",
    "store_card": "raymlops.loop.cards",
    "synth_dataset": "raymlops.data.dataset",
    "train_and_register": "raymlops.loop.training",
    "watch": "raymlops.loop.api",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from raymlops.batch.run import BatchResult, run_batch
    from raymlops.cluster.launcher import JobLauncher
    from raymlops.core.config import PipelineConfig, load_config
    from raymlops.core.errors import (
        ArtifactIntegrityError,
        ConfigError,
        DataError,
        RaymlopsError,
        RegistryError,
        ResourceError,
        SearchStalledError,
        ServiceUnreachableError,
        TrainingError,
        UserInputError,
    )
    from raymlops.data.dataset import DatasetVersion, describe_path, load_dataset, synth_dataset
    from raymlops.loop.api import card, gate, retrain, watch
    from raymlops.loop.cards import render_card, store_card
    from raymlops.loop.gate import run_gate
    from raymlops.loop.gate_result import GateResult
    from raymlops.loop.governance import (
        PromotionDecision,
        PromotionError,
        approve,
        model_history,
        promote,
        promote_if_passed,
        rollback,
    )
    from raymlops.loop.pipeline import RunResult, run_pipeline
    from raymlops.loop.training import TrainResult, train_and_register
    from raymlops.model.architectures import list_architectures, register_architecture
    from raymlops.model.features import Preprocessor
    from raymlops.model.importance import FeatureImportance, permutation_importance
    from raymlops.model.predictor import Prediction, Predictor
    from raymlops.monitor.drift import FeatureDrift
    from raymlops.monitor.result import MonitorResult
    from raymlops.monitor.run import run_monitor
    from raymlops.registry.store import AliasEvent, ModelVersionInfo, Registry, load_predictor
    from raymlops.serve.api import (
        Client,
        PredictResult,
        ServeStatus,
        ServingError,
        read_prediction_log,
        serve_canary,
        serve_canary_quality,
        serve_config_yaml,
        serve_model,
        serve_promote,
        serve_rollback,
        serve_status,
        serve_statuses,
        serve_stop,
    )
    from raymlops.serve.prediction_log import compact_prediction_log


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raymlops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
