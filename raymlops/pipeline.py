"""The pipeline steps as functions: `train_and_register` (data → Tune → registry) and
`run_pipeline` (the main job).

The CLI and the `jobs/` entrypoints are thin shells over these two functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from raymlops._private.home import home_dir
from raymlops.config import PipelineConfig, config_hash
from raymlops.data import DatasetVersion, load_dataset
from raymlops.errors import UserInputError
from raymlops.features import Preprocessor
from raymlops.launcher import ray_session
from raymlops.registry import ModelVersionInfo, Registry
from raymlops.train import TrainingArrays, evaluate, load_best_predictor

__all__ = ["RunResult", "TrainResult", "run_pipeline", "train_and_register"]


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
        )


@dataclass
class RunResult:
    """`raymlops run`: the training result plus sample predictions from the registry."""

    train: TrainResult
    champion: int
    sample_predictions: pd.DataFrame = field(repr=False)


def _echo(enabled: bool, message: str) -> None:
    if enabled:
        click.echo(message, err=True)


def train_and_register(
    config: PipelineConfig,
    *,
    address: str | None = None,
    resume: bool | str = False,
    home: str | Path | None = None,
    echo: bool = True,
) -> TrainResult:
    """Load and check the data, tune, evaluate the best trial on the test split, and
    register it. Nothing is registered unless every step succeeds."""
    from raymlops.tune import experiment_storage, latest_experiment, run_search

    started = time.monotonic()
    home_path = home_dir(home)
    registry = Registry.from_config(config, home_path)
    _echo(echo, f"▸ loading {config.data.path}")
    dataset, splits, roles = load_dataset(config.data, config.features)
    _echo(
        echo,
        f"  {dataset.num_rows} rows, {len(roles.features)} features, {roles.task}"
        + (f" ({len(roles.classes or [])} classes)" if roles.classes else "")
        + f", split {dataset.split['train']}/{dataset.split['validation']}/{dataset.split['test']}"
        f", sha256:{dataset.digest[:12]}…",
    )
    prep = Preprocessor.fit(splits.train, roles, config.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
    registry.experiment_id(config.registry.experiment)  # fail fast on a bad tracking URI

    resume_path: str | None = resume if isinstance(resume, str) and resume else None
    if resume is True:
        done = registry.registered_experiments(config.registry.model_name)
        resume_path = latest_experiment(config, home_path, exclude=done)
        if resume_path is None:
            raise UserInputError(
                f"nothing to resume: no unfinished Tune experiment of '{config.name}' under "
                f"{experiment_storage(config, home_path)} (finished ones are registered)"
            )
    with ray_session(address):
        outcome = run_search(config, arrays, home_path, resume=resume_path, echo=echo)

    trial_config = config.apply_trial(outcome.best_params)
    predictor = load_best_predictor(outcome.best_checkpoint, trial_config, arrays.preprocessor)
    test_metrics = evaluate(
        predictor, prep.transform(splits.test), prep.encode_target(splits.test.column(roles.label))
    )
    metrics = {
        **{k: v for k, v in outcome.best_metrics.items() if k.startswith("val_")},
        **{f"test_{k}": v for k, v in test_metrics.items()},
    }
    _echo(echo, f"▸ recording {len(outcome.trials)} trials and the best model in MLflow")
    run_name = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with registry.pipeline_run(
        config, run_name, tags={"raymlops.tune_experiment": outcome.experiment_path}
    ) as run_id:
        registry.log_dataset(run_id, dataset)
        registry.log_trials(run_id, config, outcome.trials)
        info = registry.register(
            trial_config,
            run_id,
            predictor,
            dataset,
            metrics,
            extra_tags={
                "raymlops.config_hash": config_hash(config),
                "raymlops.trial_id": outcome.best_trial_id,
                "raymlops.tune_experiment": outcome.experiment_path,
            },
            extra_files={
                "search.json": {
                    "search_space": {
                        k: v.model_dump(exclude_none=True)
                        for k, v in config.tune.search_space.items()
                    },
                    "scheduler": config.tune.scheduler,
                    "metric": outcome.metric,
                    "mode": outcome.mode,
                    "trials": len(outcome.trials),
                    "best_params": outcome.best_params,
                }
            },
        )
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
    )


def run_pipeline(
    config: PipelineConfig,
    *,
    address: str | None = None,
    home: str | Path | None = None,
    echo: bool = True,
    samples: int = 5,
) -> RunResult:
    """The main job: train and register; the first version becomes champion; then load the
    champion back from the registry and predict a few held-out rows with it."""
    from raymlops.data import load_table

    result = train_and_register(config, address=address, home=home, echo=echo)
    registry = Registry.from_config(config, home)
    predictor = registry.load_predictor(config.registry.model_name, "champion")
    table = load_table(config.data.path, config.data.format)
    rng = np.random.default_rng(config.data.split.seed)
    picked = np.sort(rng.choice(table.num_rows, size=min(samples, table.num_rows), replace=False))
    rows = table.take(picked).to_pandas()
    prediction = predictor.predict(rows).to_frame()
    shown = pd.concat(
        [rows[[*config.data.id_columns, config.data.label]].reset_index(drop=True), prediction],
        axis=1,
    )
    return RunResult(result, int(predictor.metadata["version"]), shown)
