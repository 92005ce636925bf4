"""Config sections of the decisions on a version: gate, promotion, model card, retrain policy."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from raymlops.core.config_base import _Section

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
    """Candidate against the current champion: on fresh labelled rows neither model trained
    on (retrain's recent rows) with a paired test, else on the candidate's held-out rows."""

    metric: str = Field(
        "auto",
        description="Metric compared (higher is better for accuracy/f1_macro/roc_auc/r2, lower "
        "for loss/log_loss/rmse/mae); 'auto' = log_loss for binary classification, f1_macro "
        "for several classes, rmse for regression.",
    )
    max_regression: float | None = Field(
        None,
        ge=0,
        description="The margin: the candidate may be worse than the champion by at most this "
        "(metric units; for rmse and mae a share of the champion's value, 0.01 = 1%). Default "
        "0.01 when min_improvement is unset.",
    )
    min_improvement: float | None = Field(
        None,
        description="The candidate must beat the champion by at least this (units as "
        "max_regression); excludes max_regression.",
    )
    alias: str = Field("champion", description="Alias of the version to compare against.")
    confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1,
        description="Fresh rows: the paired test's two-sided confidence; the candidate passes "
        "when the lower end of that interval of (candidate − champion, better > 0) is at least "
        "−max_regression (or at least min_improvement) — the held-out rule too, so a candidate "
        "identical to the champion passes a margin of 0 on either path.",
    )
    test: Literal["auto", "bootstrap", "mcnemar"] = Field(
        "auto",
        description="Fresh rows: the paired test; 'auto' = McNemar for accuracy, a paired "
        "bootstrap of the metric difference otherwise ('mcnemar' needs metric accuracy).",
    )
    resamples: int = Field(
        2000, ge=100, le=100_000, description="Paired bootstrap resamples (seeded by gate.seed)."
    )
    fresh_share: float = Field(
        0.3,
        ge=0,
        lt=1,
        description="Retraining: the share of the recent labelled rows held out of the new "
        "training set, on which candidate and champion are compared (0 = none).",
    )
    min_fresh_rows: int = Field(
        30,
        ge=1,
        description="Fewer held-out fresh rows than this are not held out (they train): the "
        "comparison then uses the candidate's held-out split, and the gate record says so. "
        "Also the floor for `gate --fresh`: fewer labelled rows of classes both models know "
        "fall back to the held-out comparison, with a note.",
    )

    guard: str = Field(
        "auto",
        description="Fresh rows: a second metric the candidate must not be worse on beyond "
        "guard_margin (McNemar for accuracy, else a paired bootstrap; same confidence), "
        "besides passing on `metric`; "
        "'auto' = roc_auc when a binary classifier is compared on log_loss or loss (with "
        "noisy labels a less confident candidate wins on log loss though it ranks worse; "
        "ROC AUC's order survives symmetric label noise), none otherwise; 'none' = off.",
    )
    guard_margin: float = Field(
        0.05,
        ge=0,
        description="How much worse than the champion on the guard metric the candidate may "
        "be: the lower end of the guard's interval (better > 0) must be at least −this (for "
        "rmse/mae a share of the champion's value). A binary guard on ROC AUC needs 10 fresh "
        "rows of each class; with fewer the check fails as inconclusive.",
    )
    min_rows: int = Field(
        30,
        ge=1,
        description="A comparison on fewer rows than this is not made: fewer usable fresh "
        "rows fall back to the held-out split (as below min_fresh_rows), and fewer held-out "
        "rows fail the check as inconclusive (too few rows, champion kept).",
    )

    @model_validator(mode="after")
    def _test_fits(self) -> ChampionComparison:
        if self.test == "mcnemar" and self.metric != "accuracy":
            raise ValueError(f"test 'mcnemar' compares accuracy, not '{self.metric}'")
        if self.guard not in ("auto", "none") and self.guard == self.metric:
            # said before a search runs; 'auto' metrics are resolved at the gate
            raise ValueError(f"guard '{self.guard}' is the compared metric itself")
        return self

    @field_validator("guard")
    @classmethod
    def _known_guard(cls, value: str) -> str:
        if value == "none":
            return value
        return _check_metric_name(value, allow_auto=True)

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
        description="Comparison with the current champion (on fresh labelled rows with a "
        "paired test when retraining held some out, else on the same held-out rows); null "
        "disables it. Skipped when there is no champion, the candidate is the champion, or "
        "for a model's first version (thresholds only).",
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
        200,
        ge=1,
        description="The canary is judged after this many of its requests (at least "
        "serve.canary.min_requests)…",
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
    watch_retry_s: float = Field(
        30.0,
        gt=0,
        description="`raymlops watch`: wait after a failed pass before the next try; doubles "
        "with each failure in a row, up to watch_retry_max_s.",
    )
    watch_retry_max_s: float = Field(
        3600.0, gt=0, description="`raymlops watch`: the longest wait after failed passes."
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
