"""The training step of the lifecycle: data → Ray Tune search → the best trial evaluated on
the test split and registered, with its model card. `raymlops train`, the main job and
retraining all go through `train_and_register`."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raymlops.core.config import PipelineConfig, config_hash
from raymlops.core.errors import UserInputError
from raymlops.core.home import home_dir
from raymlops.core.ray_session import ray_session
from raymlops.core.report import say
from raymlops.data.dataset import DatasetVersion, load_dataset
from raymlops.model.features import Preprocessor
from raymlops.model.importance import IMPORTANCE_FILE, FeatureImportance, permutation_importance
from raymlops.model.predictor import Predictor
from raymlops.registry.store import CHALLENGER, CHAMPION, ModelVersionInfo, Registry
from raymlops.train.loop import TrainingArrays, evaluate, load_best_predictor

if TYPE_CHECKING:
    from raymlops.loop.gate_result import GateResult

__all__ = ["TrainResult", "train_and_register"]


@dataclass
class TrainResult:
    """What one training pipeline produced."""

    model_name: str
    version: ModelVersionInfo
    run_id: str
    dataset: DatasetVersion
    best_params: dict[str, Any]
    validation_metrics: dict[str, float]
    test_metrics: dict[str, float]
    trials: int
    failed_trials: int
    experiment_path: str
    tracking_uri: str
    wall_time_s: float
    #: The gate of a version registered with no champion (`gate_first_version`), else None.
    first_gate: GateResult | None = None

    def summary(self) -> str:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in self.test_metrics.items() if k != "loss")
        params = ", ".join(f"{k}={v}" for k, v in self.best_params.items()) or "(no search space)"
        return "\n".join(
            [
                f"registered {self.model_name} v{self.version.version} "
                f"[{', '.join(self.version.aliases) or 'no alias'}]",
                f"  best trial: {params}",
                f"  test:       {metrics}",
                f"  trials:     {self.trials} ({self.failed_trials} failed), "
                f"{self.wall_time_s:.0f}s",
                f"  data:       {self.dataset.source} sha256:{self.dataset.digest[:16]}…",
                f"  MLflow run: {self.run_id}",
            ]
            + ([f"  gate:       {self._first_gate_line()}"] if self.first_gate else [])
        )

    def _first_gate_line(self) -> str:
        gate = self.first_gate
        assert gate is not None
        if gate.passed:
            if CHAMPION in self.version.aliases:
                return "no champion before, thresholds only: passed → champion"
            return "no champion before, thresholds only: passed, champion set meanwhile"
        failed = ", ".join(f"{c.kind} {c.name}" for c in gate.failed_checks[:3])
        return f"no champion before, thresholds only: FAILED ({failed}) → not champion"


def train_and_register(
    config: PipelineConfig,
    *,
    address: str | None = None,
    resume: bool | str = False,
    home: str | Path | None = None,
    echo: bool = True,
    gate_first_version: bool = False,
) -> TrainResult:
    """Load and check the data, tune, evaluate the best trial on the test split, and
    register it. Nothing is registered unless every step succeeds.

    Without `gate_first_version`, a model's very first version becomes champion at
    registration (`Registry.register`; callers that gate next themselves: the job chain,
    retrain). With it (what `raymlops train` and `run --train-only` do), nothing is champion
    before its gate has run: a version registered while the model has no champion — its
    first, or any after its champion was cleared — is registered as challenger, gated at
    once on the gate's thresholds and checks (there is nothing to compare with), and only a
    pass moves `champion` to it (an audited `promote` with its reason). If the gate fails or
    raises, the version stays registered and not champion; `TrainResult.first_gate` holds
    the verdict."""
    from raymlops.core.storage import check_reachable
    from raymlops.train.search import experiment_storage, run_search
    from raymlops.train.tracking import open_search_run

    started = time.monotonic()
    home_path = home_dir(home)
    registry = Registry.from_config(config, home_path)
    say(f"▸ loading {config.data.path}", when=echo)
    dataset, arrays, test_metrics_of, profile_rows = _training_data(config)
    say(
        f"  {dataset.num_rows} rows, {len(dataset.features)} features, {dataset.task}"
        + (f" ({len(dataset.classes or [])} classes)" if dataset.classes else "")
        + f", split {dataset.split['train']}/{dataset.split['validation']}/{dataset.split['test']}"
        f", sha256:{dataset.digest[:12]}…",
        when=echo,
    )
    # Fail fast, before any trial runs: a tracking server or Tune's object store that does
    # not answer is named now, and nothing is registered.
    registry.experiment_id(config.registry.experiment)
    check_reachable(experiment_storage(config, home_path))

    resume_path = _resume_path(registry, config, home_path, resume)
    # The parent MLflow run is open while the search runs: its trials' runs and metrics
    # appear under it live (a resumed search continues the run its first attempt opened).
    run_name = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with open_search_run(registry, config, run_name, resume_path) as live:
        run_id = live.parent_run_id
        registry.log_dataset(run_id, dataset)
        with ray_session(address):
            outcome = run_search(
                config, arrays, home_path, resume=resume_path, echo=echo, live=live
            )

        trial_config = config.apply_trial(outcome.best_params)
        predictor = load_best_predictor(outcome.best_checkpoint, trial_config, arrays.preprocessor)
        test_metrics = test_metrics_of(predictor)
        metrics = {
            **{k: v for k, v in outcome.best_metrics.items() if k.startswith("val_")},
            **{f"test_{k}": v for k, v in test_metrics.items()},
        }
        say("▸ measuring feature importance (permutation, on training rows)", when=echo)
        importance = _importance_and_prediction_profile(predictor, dataset, profile_rows)
        say(f"▸ recording {len(outcome.trials)} trials and the best model in MLflow", when=echo)
        registry.log_trials(run_id, config, outcome.trials)
        info = registry.register(
            trial_config,
            run_id,
            predictor,
            dataset,
            metrics,
            assign_champion=not gate_first_version,
            extra_tags={
                "raymlops.config_hash": config_hash(config),
                "raymlops.trial_id": outcome.best_trial_id,
                "raymlops.tune_experiment": outcome.experiment_path,
            },
            extra_files={
                IMPORTANCE_FILE: importance.to_dict(),
                "search.json": _search_record(config, outcome),
            },
        )
    from raymlops.loop.cards import refresh_card  # every registered version gets a model card

    refresh_card(registry, info.name, info.version, echo=lambda m: say(m, when=echo))
    first_gate = None
    if gate_first_version and registry.alias_target(info.name, CHAMPION) is None:
        first_gate = _gate_then_champion(registry, config, info, echo)
        info = registry.version_info(info.name, info.version)
    return TrainResult(
        model_name=config.registry.model_name,
        version=info,
        run_id=run_id,
        dataset=dataset,
        best_params=outcome.best_params,
        validation_metrics={k: v for k, v in metrics.items() if k.startswith("val_")},
        test_metrics=test_metrics,
        trials=len(outcome.trials),
        failed_trials=sum(1 for t in outcome.trials if t.status == "ERROR"),
        experiment_path=outcome.experiment_path,
        tracking_uri=registry.tracking_uri,
        wall_time_s=time.monotonic() - started,
        first_gate=first_gate,
    )


def _training_data(config: PipelineConfig) -> tuple[Any, Any, Any, Any]:
    """The dataset version, the arrays the trials train on, a function scoring a predictor
    on the test split, and the rows the feature importance is measured on: loaded whole,
    or (`data.streaming`) scanned once and never loaded whole, here or in the trials."""
    if config.data.streaming:
        from raymlops.train.streaming import scan_dataset

        streamed = scan_dataset(config.data, config.features)
        return streamed.version, streamed, streamed.evaluate, streamed
    dataset, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)

    def test_metrics_of(predictor: Any) -> dict[str, float]:
        return evaluate(
            predictor,
            prep.transform(splits.test),
            prep.encode_target(splits.test.column(roles.label)),
        )

    return dataset, arrays, test_metrics_of, splits.train


def _resume_path(
    registry: Registry, config: PipelineConfig, home: Path, resume: bool | str
) -> str | None:
    """The Tune experiment to resume: the one named, the latest unfinished one of this
    pipeline (`resume=True`; UserInputError when there is none), or None for a new search."""
    from raymlops.train.search import experiment_storage, latest_experiment

    if resume is not True:
        return resume if isinstance(resume, str) and resume else None
    done = registry.registered_experiments(config.registry.model_name)
    found = latest_experiment(config, home, exclude=done)
    if found is None:
        raise UserInputError(
            f"nothing to resume: no unfinished Tune experiment of '{config.name}' under "
            f"{experiment_storage(config, home)} (finished ones are registered)"
        )
    return found


def _search_record(config: PipelineConfig, outcome: Any) -> dict[str, Any]:
    """What the search was, stored with the version (search.json): space, scheduler,
    metric, trial count and the best trial's parameters."""
    return {
        "search_space": {
            k: v.model_dump(exclude_none=True) for k, v in config.tune.search_space.items()
        },
        "scheduler": config.tune.scheduler,
        "metric": outcome.metric,
        "mode": outcome.mode,
        "trials": len(outcome.trials),
        "best_params": outcome.best_params,
    }


def _gate_then_champion(
    registry: Registry, config: PipelineConfig, info: ModelVersionInfo, echo: bool
) -> GateResult:
    """Gate `info`, registered while its model has no champion, and make it champion only
    when the gate passes (compare-and-set: a champion someone else set meanwhile stands)."""
    from raymlops.core.errors import RegistryError
    from raymlops.loop.gate import run_gate

    say(f"▸ gating v{info.version}: the model has no champion (thresholds only)", when=echo)
    gate = run_gate(registry, config, info.name, info.version, echo=lambda m: say(m, when=echo))
    if not gate.passed:
        say(f"▸ v{info.version} failed its gate: registered, not champion", when=echo)
        return gate
    try:
        registry.set_alias(
            info.name,
            CHAMPION,
            info.version,
            action="promote",
            reason="passed its gate (thresholds only) while the model had no champion",
            details={"gate_run_id": gate.run_id},
            expected_from=None,
        )
    except RegistryError as exc:
        say(f"▸ v{info.version} not made champion: {exc}", when=echo)
        return gate
    # It was challenger only until its gate: a model's first champion is not also its
    # challenger (compare-and-set: a challenger registered meanwhile stands).
    with contextlib.suppress(RegistryError):
        registry.set_alias(
            info.name,
            CHALLENGER,
            None,
            action="clear",
            reason=f"v{info.version} is champion now",
            expected_from=info.version,
        )
    from raymlops.loop.cards import refresh_card

    refresh_card(registry, info.name, info.version, echo=lambda m: say(m, when=echo))
    return gate


#: Training rows the prediction profile and the permutation importance are measured on.
_PROFILE_SAMPLE_ROWS = 20_000


def _importance_and_prediction_profile(
    predictor: Predictor, dataset: DatasetVersion, train: Any
) -> FeatureImportance:
    """Permutation importance of the features on (a sample of) the training split, and the
    profile of the model's own predictions on it, added to the dataset profile as
    `prediction`: monitoring weighs feature drift by the first and compares the prediction
    with the second (the training labels are a poor reference for predictions: a regression
    model's predictions spread less than its labels). `train` is the training split, or the
    streaming data, whose first batch of training rows is used."""
    import numpy as np
    import pyarrow as pa

    from raymlops.data.dataset import ColumnRoles, Task, profile_table

    if isinstance(train, pa.Table):
        rows = train
    else:
        rows = next(iter(train.batches("train")), None)
        if rows is None:
            return FeatureImportance({})
    if rows.num_rows > _PROFILE_SAMPLE_ROWS:  # a seeded uniform sample
        pick = np.random.default_rng(0).choice(rows.num_rows, _PROFILE_SAMPLE_ROWS, replace=False)
        rows = rows.take(pa.array(np.sort(pick)))
    predictions = predictor.predict(rows).predictions
    task: Task = "classification" if predictor.preprocessor.classes is not None else "regression"
    column = pa.array(predictions.astype(str) if task == "classification" else predictions)
    roles = ColumnRoles(label="prediction", task=task, numeric=[], categorical=[], ids=[])
    profile = profile_table(pa.table({"prediction": column}), roles)
    dataset.profile["prediction"] = {**profile["label"], "rows": rows.num_rows}
    return permutation_importance(predictor, rows, dataset.label)
