"""Config sections of training: data, features, model, train, tune, registry."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from raymlops.core.config_base import _Section


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
    allowed_modules: list[str] = Field(
        default_factory=list,
        description="Modules of user architectures that registered versions may use besides "
        "`architecture` (imported when the config is loaded). A version whose files name any "
        "other 'package.module:Class' is refused: a model never makes raymlops import a "
        "module by itself (RAYMLOPS_ALLOWED_MODULES adds modules for every process).",
    )

    @model_validator(mode="after")
    def _check_params(self) -> ModelConfig:
        from raymlops.core.architecture_params import import_modules, validate_params

        import_modules(self.allowed_modules)
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
        "default $RAYMLOPS_TUNE_STORAGE, else <storage>/tune, else <RAYMLOPS_HOME>/tune.",
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
    input_example: Literal["profile", "rows"] = Field(
        "profile",
        description="The input example stored with every version (MLflow's): 'profile', one "
        "typical row of the training profile (medians, most frequent categories); 'rows', "
        "the first complete rows of the training data, which anyone who can read the "
        "registry then sees.",
    )
