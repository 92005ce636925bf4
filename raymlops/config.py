"""The pipeline spec: one YAML file, validated by pydantic models whose descriptions are the docs.

A config is the single source of truth for a pipeline run. Every section forbids unknown keys,
so a typo is an error that names the key and the file instead of a silently ignored setting.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raymlops.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "DataConfig",
    "FeaturesConfig",
    "ModelConfig",
    "PipelineConfig",
    "RegistryConfig",
    "SearchSpec",
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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(_Section):
    """How rows are divided into train/validation/test; deterministic for a given seed."""

    validation: float = Field(0.15, gt=0, lt=1, description="Fraction of rows for validation.")
    test: float = Field(0.15, gt=0, lt=1, description="Fraction of rows held out for testing.")
    seed: int = Field(42, description="Seed of the shuffle; the same seed gives the same split.")
    stratify: bool = Field(
        True, description="Keep class proportions equal across splits (classification only)."
    )

    @model_validator(mode="after")
    def _leave_rows_for_training(self) -> SplitConfig:
        if self.validation + self.test >= 0.9:
            raise ValueError("validation + test must leave at least 10% of rows for training")
        return self


class DataConfig(_Section):
    """Where the training data lives and how to read it."""

    path: str = Field(
        description=(
            "A Parquet or CSV file, a folder of them, a URI (file://, s3://, gs://) or a "
            "bundled dataset such as 'sklearn:breast_cancer'."
        )
    )
    format: Literal["auto", "parquet", "csv"] = Field(
        "auto", description="File format; 'auto' decides from the file extension."
    )
    label: str = Field(description="Name of the column to predict.")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto",
        description=(
            "Learning task; 'auto' picks classification for string, boolean or few-valued "
            "integer labels and regression otherwise."
        ),
    )
    id_columns: list[str] = Field(
        default_factory=list,
        description="Columns passed through to predictions (ids) but never learned from.",
    )
    drop_columns: list[str] = Field(default_factory=list, description="Columns ignored entirely.")
    split: SplitConfig = Field(
        default_factory=lambda: SplitConfig(), description="Train/validation/test split."
    )


class FeaturesConfig(_Section):
    """Preprocessing fitted on the training split and shipped with the model."""

    numeric: list[str] | None = Field(
        None, description="Numeric feature columns; inferred from the column types when unset."
    )
    categorical: list[str] | None = Field(
        None,
        description="Categorical feature columns; inferred (string columns) when unset.",
    )
    numeric_impute: Literal["median", "mean", "zero"] = Field(
        "median", description="Value that replaces a missing numeric value."
    )
    scale: bool = Field(True, description="Standardise numeric features to mean 0, std 1.")
    missing_indicators: bool = Field(
        True,
        description="Add a 0/1 column for each numeric feature that had missing training values.",
    )
    max_categories: int = Field(
        50, ge=1, description="Most frequent categories kept per column; the rest share 'unknown'."
    )
    min_frequency: int = Field(
        1, ge=1, description="Categories seen fewer times than this in training become 'unknown'."
    )


class ModelConfig(_Section):
    """The torch architecture; `params` are checked against the architecture's own schema."""

    architecture: str = Field(
        "mlp",
        description=(
            "Registered architecture name (see raymlops.models.list_architectures) or "
            "'package.module:Class' for a user architecture registered on import."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the architecture (depth, width…)."
    )

    @model_validator(mode="after")
    def _check_params(self) -> ModelConfig:
        from raymlops.models import validate_params

        self.__dict__["params"] = validate_params(self.architecture, self.params)
        return self


class TrainConfig(_Section):
    """One trial's torch training loop."""

    epochs: int = Field(20, ge=1, le=100_000, description="Maximum number of epochs.")
    batch_size: int = Field(64, ge=1, description="Rows per optimisation step.")
    learning_rate: float = Field(1e-3, gt=0, lt=10, description="Optimiser learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (decoupled for AdamW).")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adamw", description="Optimiser.")
    early_stopping_patience: int | None = Field(
        5,
        ge=1,
        description="Stop after this many epochs without improvement of the tune metric; "
        "null disables early stopping.",
    )
    seed: int = Field(0, description="Seed of weight initialisation and batch shuffling.")
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads; unset = the CPUs given to the trial."
    )
    checkpoint_every: int = Field(
        5,
        ge=1,
        description="Save a Tune checkpoint every N epochs, for resuming after a crash; the "
        "epochs where a trial can stop (the last, early stopping, ASHA's rungs) always "
        "checkpoint, so the registered weights are always the best epoch's.",
    )


class SearchSpec(_Section):
    """One dimension of the search space."""

    type: Literal["choice", "grid", "uniform", "loguniform", "randint"] = Field(
        description="choice/grid take `values`; uniform/loguniform/randint take `low` and `high`."
    )
    values: list[Any] | None = Field(None, description="Candidates for choice and grid.")
    low: float | None = Field(None, description="Lower bound (inclusive).")
    high: float | None = Field(
        None, description="Upper bound (exclusive for randint, inclusive otherwise)."
    )

    @model_validator(mode="after")
    def _check_shape(self) -> SearchSpec:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"a '{self.type}' dimension needs a non-empty 'values' list")
            if self.low is not None or self.high is not None:
                raise ValueError(f"a '{self.type}' dimension takes 'values', not low/high")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"a '{self.type}' dimension needs 'low' and 'high'")
            if self.values is not None:
                raise ValueError(f"a '{self.type}' dimension takes low/high, not 'values'")
            if not self.low < self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError("loguniform needs low > 0")
            if self.type == "randint" and (
                self.low != math.floor(self.low) or self.high != math.floor(self.high)
            ):
                raise ValueError("randint needs integer low and high")
        return self

    def candidate_values(self) -> list[Any]:
        """Values worth validating against the base config (all choices, or the bounds)."""
        if self.values is not None:
            return list(self.values)
        assert self.low is not None and self.high is not None
        if self.type == "randint":
            return [int(self.low), int(self.high) - 1]
        return [self.low, self.high]


SEARCHABLE_SECTIONS = ("model", "train")


class TuneConfig(_Section):
    """The hyperparameter search on Ray Tune."""

    search_space: dict[str, SearchSpec] = Field(
        default_factory=dict,
        description=(
            "Dotted path -> dimension, e.g. 'train.learning_rate' or 'model.params.width'. "
            "Paths under model.* and train.* only."
        ),
    )
    num_samples: int = Field(
        8, ge=1, description="Configurations sampled (each grid point is repeated this often)."
    )
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="ASHA stops weak trials early; FIFO runs every trial to the end."
    )
    metric: str | None = Field(
        None,
        description="Validation metric that ranks trials; default val_loss "
        "(log loss for classification, MSE for regression).",
    )
    mode: Literal["min", "max"] | None = Field(
        None, description="Whether the metric is minimised or maximised; inferred from its name."
    )
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial runs at least.")
    reduction_factor: float = Field(
        3.0, gt=1, description="ASHA: 1/reduction_factor of trials advance to each next rung."
    )
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="Upper bound on trials at once; the cluster's CPUs/GPUs cap it too."
    )
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs reserved for each trial.")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs reserved for each trial.")
    max_failures: int = Field(
        1, ge=0, description="Times a crashed trial is retried from its last checkpoint."
    )
    reuse_actors: bool = Field(
        True, description="Reuse trial processes between trials (much less per-trial overhead)."
    )
    keep_checkpoints: int | None = Field(
        None,
        ge=1,
        description="Checkpoints kept per trial; null keeps all (cheapest for small models).",
    )
    storage: str | None = Field(
        None,
        description="Where experiments and checkpoints are stored (path or URI); "
        "default $RAYMLOPS_TUNE_STORAGE, else <RAYMLOPS_HOME>/tune.",
    )
    experiment_name: str | None = Field(
        None, description="Name of the Tune experiment folder; default the pipeline name."
    )
    seed: int | None = Field(0, description="Seed of the random search; null = unseeded.")

    @field_validator("search_space")
    @classmethod
    def _check_paths(cls, value: dict[str, SearchSpec]) -> dict[str, SearchSpec]:
        for path in value:
            if path.split(".", 1)[0] not in SEARCHABLE_SECTIONS or "." not in path:
                raise ValueError(
                    f"search_space key '{path}' must be a dotted path under "
                    f"{' or '.join(SEARCHABLE_SECTIONS)}, e.g. 'train.learning_rate'"
                )
        return value

    @model_validator(mode="after")
    def _check_mode(self) -> TuneConfig:
        if self.mode is not None and self.metric is None:
            raise ValueError("'mode' is set but 'metric' is not")
        return self

    def resolved_metric(self) -> tuple[str, Literal["min", "max"]]:
        """The metric and mode that rank trials, defaults applied."""
        metric = self.metric or "val_loss"
        if self.mode is not None:
            return metric, self.mode
        minimised = ("loss", "rmse", "mae", "mse", "error")
        return metric, "min" if any(part in metric for part in minimised) else "max"


class RegistryConfig(_Section):
    """Where runs and model versions are recorded (MLflow)."""

    model_name: str = Field(
        description="Registered model name in the MLflow model registry.",
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else a SQLite file "
        "under RAYMLOPS_HOME.",
    )
    experiment: str = Field("raymlops", description="MLflow experiment that holds the runs.")


class PipelineConfig(_Section):
    """A whole pipeline: data, features, model, training, tuning and registry."""

    name: str = Field(
        description="Pipeline name; names the Tune experiment.",
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
    )
    description: str = Field("", description="What this model is for (shown in model cards).")
    data: DataConfig = Field(description="Training data.")
    features: FeaturesConfig = Field(
        default_factory=lambda: FeaturesConfig(), description="Preprocessing."
    )
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(), description="Architecture.")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(), description="Training loop.")
    tune: TuneConfig = Field(default_factory=lambda: TuneConfig(), description="Search.")
    registry: RegistryConfig = Field(description="Tracking and model registry.")

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
