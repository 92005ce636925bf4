"""Tests of the package surface: raymlops.__all__, lazy imports and the ray.init guard."""

from __future__ import annotations

import subprocess
import sys

import pytest

import raymlops
from raymlops.core import errors


def test_every_public_name_resolves() -> None:
    assert len(raymlops.__all__) == len(set(raymlops.__all__))
    for name in raymlops.__all__:
        value = getattr(raymlops, name)
        assert value is not None, name
        if name != "__version__":
            assert value.__name__ == name
            assert value.__module__ == raymlops._EXPORTS[name]


#: The public surface, exactly: a name added or dropped is a change of the API and must be
#: made here too, on purpose.
PUBLIC_NAMES = [
    "__version__",
    "AliasEvent",
    "ArtifactIntegrityError",
    "BatchResult",
    "Client",
    "ConfigError",
    "DataError",
    "DatasetVersion",
    "FeatureDrift",
    "FeatureImportance",
    "GateResult",
    "JobLauncher",
    "ModelVersionInfo",
    "MonitorResult",
    "PipelineConfig",
    "PredictResult",
    "Prediction",
    "Predictor",
    "Preprocessor",
    "PromotionDecision",
    "PromotionError",
    "RaymlopsError",
    "Registry",
    "RegistryError",
    "ResourceError",
    "RunResult",
    "SearchStalledError",
    "ServeStatus",
    "ServiceUnreachableError",
    "ServingError",
    "TrainResult",
    "TrainingError",
    "UserInputError",
    "approve",
    "card",
    "compact_prediction_log",
    "describe_path",
    "gate",
    "list_architectures",
    "load_config",
    "load_dataset",
    "load_predictor",
    "model_history",
    "permutation_importance",
    "promote",
    "promote_if_passed",
    "read_prediction_log",
    "register_architecture",
    "render_card",
    "retrain",
    "rollback",
    "run_batch",
    "run_gate",
    "run_monitor",
    "run_pipeline",
    "serve_canary",
    "serve_canary_quality",
    "serve_config_yaml",
    "serve_model",
    "serve_promote",
    "serve_rollback",
    "serve_status",
    "serve_statuses",
    "serve_stop",
    "store_card",
    "synth_dataset",
    "train_and_register",
    "watch",
]


def test_the_public_surface_is_exactly_the_pinned_list() -> None:
    assert raymlops.__all__ == PUBLIC_NAMES


def test_public_names_are_not_private() -> None:
    offenders = [n for n in raymlops.__all__ if n.startswith("_") and n != "__version__"]
    assert offenders == []
    assert "__version__" in raymlops.__all__
    assert raymlops.__version__ == "0.1.0"


def test_dir_lists_public_names() -> None:
    assert set(raymlops.__all__) <= set(dir(raymlops))


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'not_a_thing'"):
        _ = raymlops.not_a_thing  # type: ignore[attr-defined]
    assert not hasattr(raymlops, "Pipeline")


def test_import_raymlops_is_lazy() -> None:
    code = (
        "import raymlops, sys; "
        "print('torch' in sys.modules, 'ray' in sys.modules, 'mlflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == ["False", "False", "False"]


def test_pipeline_functions_are_not_shadowed_by_submodules() -> None:
    # The pipeline functions must stay callable after the submodules (raymlops.train.loop,
    # raymlops.loop.pipeline) have been imported, in whatever order.
    code = (
        "import raymlops, raymlops.train.loop, raymlops.loop.pipeline, raymlops.loop.training; "
        "print(callable(raymlops.train_and_register), callable(raymlops.run_pipeline), "
        "raymlops.train_and_register.__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == ["True", "True", "raymlops.loop.training"]


def test_error_hierarchy_and_exit_codes() -> None:
    user_errors = [
        raymlops.ConfigError,
        raymlops.DataError,
        raymlops.ResourceError,
        raymlops.RegistryError,
    ]
    for cls in user_errors:
        assert issubclass(cls, raymlops.UserInputError)
        assert cls.exit_code == 2
    for cls in (raymlops.ArtifactIntegrityError, raymlops.TrainingError):
        assert issubclass(cls, raymlops.RaymlopsError)
        assert not issubclass(cls, raymlops.UserInputError)
        assert cls.exit_code == 1
    assert set(errors.__all__) <= set(raymlops.__all__)


def test_ray_init_is_forbidden_in_unit_tests() -> None:
    import ray

    from raymlops.core.ray_session import ray_session

    with pytest.raises(pytest.fail.Exception, match="must not start Ray"):
        ray.init()
    with pytest.raises(pytest.fail.Exception, match="must not start Ray"):  # noqa: SIM117
        with ray_session(num_cpus=1):
            pass
    assert not ray.is_initialized()
