"""The pipeline spec: one YAML file, validated by pydantic models whose descriptions are the docs.

A config is the single source of truth for a pipeline run. Every section forbids unknown keys,
so a typo is an error that names the key and the file instead of a silently ignored setting.
The sections live by what they configure (config_training, config_decisions,
config_operations); this module assembles them into `PipelineConfig` and loads files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from raymlops.core.config_base import _Section
from raymlops.core.config_decisions import (
    GATE_METRICS,
    CardConfig,
    ChampionComparison,
    DirectionalTest,
    FairnessConfig,
    GateConfig,
    InvarianceTest,
    LatencyBudget,
    MetricBound,
    PromotionConfig,
    RetrainConfig,
    SliceMinimum,
)
from raymlops.core.config_operations import (
    BatchConfig,
    MonitorConfig,
    ServeAutoscalingConfig,
    ServeCanaryConfig,
    ServeConfig,
    ServePredictionLogConfig,
)
from raymlops.core.config_training import (
    DataConfig,
    FeaturesConfig,
    ModelConfig,
    RegistryConfig,
    SearchSpec,
    SplitConfig,
    TrainConfig,
    TuneConfig,
)
from raymlops.core.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "GATE_METRICS",
    "BatchConfig",
    "CardConfig",
    "ChampionComparison",
    "DataConfig",
    "DirectionalTest",
    "FairnessConfig",
    "FeaturesConfig",
    "GateConfig",
    "InvarianceTest",
    "LatencyBudget",
    "MetricBound",
    "ModelConfig",
    "MonitorConfig",
    "PipelineConfig",
    "PromotionConfig",
    "RegistryConfig",
    "SearchSpec",
    "ServeAutoscalingConfig",
    "ServeCanaryConfig",
    "ServeConfig",
    "ServePredictionLogConfig",
    "SliceMinimum",
    "SplitConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_overrides",
    "config_hash",
    "config_to_yaml",
    "default_config_path",
    "load_config",
]

DEFAULT_CONFIG_NAME = "breast_cancer.yaml"


class PipelineConfig(_Section):
    """A whole pipeline: data, features, model, training, tuning and registry."""

    name: str = Field(
        description="Pipeline name; names the Tune experiment.",
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
    )
    description: str = Field("", description="What this model is for (shown in model cards).")
    storage: str | None = Field(
        None,
        description="Shared storage root (s3://bucket/prefix, gs://…) for state every node of "
        "a cluster must see: job-chain run folders (<storage>/runs), and the defaults of "
        "tune.storage (<storage>/tune) and serve.prediction_log.uri (<storage>/predictions). "
        "Default $RAYMLOPS_STORAGE; unset: folders under RAYMLOPS_HOME (one machine).",
    )
    data: DataConfig = Field(
        description="Training data: where it is, the label, the task, id and dropped columns, "
        "the split, and streaming for data larger than memory."
    )
    features: FeaturesConfig = Field(
        default_factory=lambda: FeaturesConfig(),
        description="Preprocessing: numeric and categorical columns (inferred from the types "
        "when unset), imputation, scaling, missing-value indicators, and the categories kept "
        "(the rest share an unknown bucket).",
    )
    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig(),
        description="Architecture (a registered name, `mlp` built in, or "
        "`package.module:Name`) and its params, checked against the architecture's schema.",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(),
        description="Training loop; data-parallel trials (README: *Training on several "
        "workers and data larger than memory*).",
    )
    tune: TuneConfig = Field(
        default_factory=lambda: TuneConfig(),
        description="Search (Ray Tune): the search space (dotted paths under `model.`/`train.`), "
        "scheduler, ranking metric, trial resources and retries.",
    )
    registry: RegistryConfig = Field(description="Tracking and model registry (MLflow).")
    gate: GateConfig = Field(
        default_factory=lambda: GateConfig(),
        description="Validation gate before promotion: the checks of `raymlops gate` (README: "
        "*Gate, promotion, history and model cards*).",
    )
    promotion: PromotionConfig = Field(
        default_factory=lambda: PromotionConfig(),
        description="auto or manual promotion (`promotion: manual` needs approvals).",
    )
    card: CardConfig = Field(default_factory=lambda: CardConfig(), description="Model card texts.")
    monitor: MonitorConfig = Field(
        default_factory=lambda: MonitorConfig(),
        description="Drift and KPI monitoring (`raymlops monitor`; README: *Monitoring*).",
    )
    batch: BatchConfig = Field(
        default_factory=lambda: BatchConfig(),
        description="Batch inference (`raymlops batch`; README: *Batch inference*).",
    )
    retrain: RetrainConfig = Field(
        default_factory=lambda: RetrainConfig(),
        description="Automated retraining policy (`raymlops retrain`, `raymlops watch`).",
    )
    serve: ServeConfig = Field(
        default_factory=lambda: ServeConfig(),
        description="Online serving (`raymlops serve`; README: *Serving*).",
    )

    @model_validator(mode="after")
    def _check_search_space(self) -> PipelineConfig:
        base = self.model_dump(mode="json")
        for path, spec in self.tune.search_space.items():
            for candidate in spec.candidate_values():
                trial = copy.deepcopy(base)
                _set_path(trial, path, candidate)
                try:
                    ModelConfig.model_validate(trial["model"])
                    TrainConfig.model_validate(trial["train"])
                except ValidationError as exc:
                    message = exc.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(
                        f"search_space '{path}': value {candidate!r} is invalid: {message}"
                    ) from None
        columns = [self.data.label, *self.data.id_columns]
        for group in (self.features.numeric or [], self.features.categorical or []):
            for col in group:
                if col in columns:
                    raise ValueError(f"column '{col}' is the label or an id, not a feature")
        return self

    def apply_trial(self, overrides: dict[str, Any]) -> PipelineConfig:
        """This config with one trial's sampled values (dotted paths) applied."""
        data = self.model_dump(mode="json")
        for path, value in overrides.items():
            _set_path(data, path, value)
        return PipelineConfig.model_validate(data)


# --------------------------------------------------------------------------- loading


def default_config_path() -> Path:
    """The embedded default pipeline (breast-cancer classification, ships offline)."""
    return Path(str(resources.files("raymlops") / "examples" / DEFAULT_CONFIG_NAME))


def _split_path(data: dict[str, Any], path: str) -> list[str]:
    """Split a dotted override path; search-space keys (themselves dotted) stay whole, so
    `tune.search_space.train.learning_rate.low` addresses the `low` of one dimension."""
    prefix = "tune.search_space."
    if path.startswith(prefix):
        rest = path[len(prefix) :]
        space = (data.get("tune") or {}).get("search_space") or {}
        for dim in sorted(space, key=len, reverse=True):
            if rest == dim or rest.startswith(dim + "."):
                tail = rest[len(dim) + 1 :]
                return ["tune", "search_space", dim, *(tail.split(".") if tail else [])]
        parts = rest.split(".")
        if len(parts) > 2 and parts[-1] in SearchSpec.model_fields:
            return ["tune", "search_space", ".".join(parts[:-1]), parts[-1]]
        return ["tune", "search_space", rest]
    return path.split(".")


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    keys = _split_path(data, path)
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node, dict):
            raise ConfigError(f"'{'.'.join(keys[:i])}' is not a section")
        if key not in node or node[key] is None:
            node[key] = {}
        node = node[key]
    if not isinstance(node, dict):
        raise ConfigError(f"'{'.'.join(keys[:-1])}' is not a section")
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (values parsed as YAML) to a raw config mapping."""
    result = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected KEY=VALUE, e.g. train.epochs=5")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set '{item}': empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_path(result, key, value)
    return result


def _format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"invalid config {source}: " + "; ".join(parts)


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    """Read, override and validate a pipeline config; None loads the embedded default.

    Raises ConfigError with one line naming the file and the offending key.
    """
    file = Path(path) if path is not None else default_config_path()
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {source}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"invalid YAML in {source}{where}: {getattr(exc, 'problem', exc)}"
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping")
    if overrides:
        try:
            raw = apply_overrides(raw, overrides)
        except ConfigError as exc:
            raise ConfigError(f"invalid override for {source}: {exc}") from None
        source = f"{source} (with --set overrides)"
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    except ConfigError as exc:
        raise ConfigError(f"invalid config {source}: {exc}") from None


def config_hash(config: PipelineConfig) -> str:
    """SHA-256 of the effective config (canonical JSON), recorded on runs and versions."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def config_to_yaml(config: PipelineConfig) -> str:
    """The effective config as YAML, defaults filled in."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
