"""The pipeline steps as functions: `train_and_register` (data → Tune → registry) and
`run_pipeline` (the main job).

The CLI and the `jobs/` entrypoints are thin shells over these two functions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from raymlops.registry import CHAMPION, ModelVersionInfo, Registry
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
    """`raymlops run`: what each step of the main job produced."""

    train: TrainResult
    champion: int
    sample_predictions: pd.DataFrame = field(repr=False)
    gate: Any = None  # GateResult of the trained version
    served_url: str | None = None
    batch: Any = None  # BatchResult
    monitored: Any = None  # MonitorResult
    retrained: Any = None  # RetrainResult
    card_path: Path | None = None
    report_path: Path | None = None
    wall_time_s: float = 0.0
    steps: list[tuple[str, float]] = field(default_factory=list)

    def summary(self) -> str:
        """The closing lines: where each result lives."""
        lines = ["", "summary"]
        lines += [f"  {name:<34} {seconds:6.1f} s" for name, seconds in self.steps]
        lines.append(f"  {'total':<34} {self.wall_time_s:6.1f} s")
        lines.append(f"  champion now: {self.train.model_name} v{self.champion}")
        if self.card_path:
            lines.append(f"  model card:   {self.card_path}")
        if self.report_path:
            lines.append(f"  drift report: {self.report_path}")
        if self.batch is not None:
            lines.append(f"  batch output: {self.batch.output}")
        lines.append(f"  browse runs:  mlflow ui --backend-store-uri {self.train.tracking_uri}")
        return "\n".join(lines)


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
    from raymlops.cards import refresh_card  # every registered version gets a model card

    refresh_card(registry, info.name, info.version, echo=lambda m: _echo(echo, m))
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
    full: bool = True,
    keep_serving: bool = False,
) -> RunResult:
    """The main job. `full=False`: train and register, then predict a few rows with the
    champion loaded back from the registry. `full=True` (what `raymlops run` does): the whole
    lifecycle — train → register → gate → promote → serve and answer HTTP requests → batch
    inference → simulated production traffic with drift → monitor → retrain → gate → canary
    → promote — with every step recorded in MLflow and the alias history."""
    if not full:
        return _train_and_sample(config, address=address, home=home, echo=echo, samples=samples)
    # Bad data fails here, in one line, before a Ray is started for the loop.
    load_dataset(config.data, config.features)
    with ray_session(address):
        return _closed_loop(config, home=home, echo=echo, samples=samples, keep=keep_serving)


def _train_and_sample(
    config: PipelineConfig,
    *,
    address: str | None,
    home: str | Path | None,
    echo: bool,
    samples: int,
) -> RunResult:
    result = train_and_register(config, address=address, home=home, echo=echo)
    registry = Registry.from_config(config, home)
    predictor = registry.load_predictor(config.registry.model_name, "champion")
    rows = _sample_rows(config, samples)
    prediction = predictor.predict(rows).to_frame()
    shown = pd.concat(
        [rows[[*config.data.id_columns, config.data.label]].reset_index(drop=True), prediction],
        axis=1,
    )
    return RunResult(result, int(predictor.metadata["version"]), shown)


def _sample_rows(config: PipelineConfig, samples: int) -> pd.DataFrame:
    from raymlops.data import load_table

    table = load_table(config.data.path, config.data.format)
    rng = np.random.default_rng(config.data.split.seed)
    picked = np.sort(rng.choice(table.num_rows, size=min(samples, table.num_rows), replace=False))
    return table.take(picked).to_pandas()


class _Step:
    """Times and announces one step of the main job."""

    def __init__(self, steps: list[tuple[str, float]], echo: bool) -> None:
        self.steps = steps
        self.echo = echo
        self.count = 0

    @contextmanager
    def __call__(self, title: str) -> Iterator[None]:
        self.count += 1
        _echo(self.echo, f"\n[{self.count}] {title}")
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps.append((title, time.monotonic() - started))


def _closed_loop(
    config: PipelineConfig,
    *,
    home: str | Path | None,
    echo: bool,
    samples: int,
    keep: bool,
) -> RunResult:
    import pyarrow.parquet as pq

    from raymlops._private.simulate import drifted_traffic
    from raymlops.batch import run_batch
    from raymlops.data import load_table
    from raymlops.gate import run_gate
    from raymlops.governance import promote_if_passed
    from raymlops.lifecycle import ServingCanary, retrain
    from raymlops.monitor import monitor
    from raymlops.serving import Client, serve_model, serve_stop

    started = time.monotonic()
    steps: list[tuple[str, float]] = []
    step = _Step(steps, echo)
    home_path = home_dir(home)
    registry = Registry.from_config(config, home_path)
    name = config.registry.model_name
    work = home_path / "runs" / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    by = "raymlops-run"

    with step("train: Ray Tune search, best trial registered"):
        trained = train_and_register(config, home=home_path, echo=echo)
        version = trained.version.version
    with step(f"gate v{version} against thresholds and the champion"):
        gate = run_gate(registry, config, name, version, by=by, echo=lambda m: _echo(echo, m))
        _echo(echo, gate.table())
    with step("promote"):
        if registry.alias_target(name, CHAMPION) == version:
            _echo(echo, f"  v{version} is the first version: already champion")
        else:
            decision = promote_if_passed(
                registry, name, version, gate, config=config, reason="passed the gate", by=by
            )
            _echo(echo, f"  {'promoted' if decision.promoted else 'kept'}: {decision.reason}")
    champion = registry.alias_target(name, CHAMPION)
    table = load_table(config.data.path, config.data.format)
    features = [c for c in table.column_names if c not in (config.data.label,)]

    with step("batch inference on Ray Data"):
        batch_in = work / "batch-input.parquet"
        pq.write_table(table.drop_columns([config.data.label]), batch_in)
        batch = run_batch(config, str(batch_in), str(work / "batch-output"), home=home_path)
        _echo(echo, batch.summary())

    served = False
    try:
        with step("serve the champion on Ray Serve"):
            status = serve_model(_sharing_serve(config), home=home_path, echo=echo)
            served = True
            client = Client(status.url, token=config.serve.token)
            rows = _sample_rows(config, samples)
            answer = client.predict(rows[features])
            shown = pd.concat(
                [rows[[config.data.label]].reset_index(drop=True), answer.to_frame()], axis=1
            )
            _echo(echo, f"  POST {status.url}/predict → v{answer.version} ({answer.role}):")
            _echo(echo, shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

        with step("simulated production traffic with drift"):
            traffic_since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
            traffic = drifted_traffic(
                table,
                config.data.label,
                features,
                rows=600,
                shift_std=1.0,
                share=0.5,
                seed=config.data.split.seed,
            )
            sent = _send(client, traffic.requests, batch_rows=4)
            recent = work / "recent-labelled.parquet"
            traffic.labelled.to_parquet(recent, index=False)
            _echo(
                echo,
                f"  {sent} requests ({len(traffic.requests)} rows); shifted by "
                f"{traffic.shift_std:g} std: {', '.join(traffic.shifted[:6])}"
                + ("…" if len(traffic.shifted) > 6 else ""),
            )
            time.sleep(config.serve.prediction_log.flush_interval_s + 1.0)

        with step("monitor: drift against the training profile"):
            monitored = monitor(
                config, since=traffic_since, home=home_path, report=work / "drift-report.html"
            )
            _echo(echo, monitored.summary())

        with step("retrain → gate → canary → promote"):
            background = _Background(client, traffic.requests)
            canary = ServingCanary(
                config,
                home=home_path,
                by="raymlops-retrain",
                on_start=background.start,
                on_end=background.stop,
            )
            retrained = retrain(
                config,
                monitored=monitored,
                canary=canary,
                recent_data=str(recent),
                home=home_path,
                echo=echo,
            )
            background.stop()
            _echo(echo, retrained.summary())
            # Replicas pick up a routing change within a sync interval: ask until the
            # endpoint answers with the champion (or 30 s have passed).
            expected = registry.alias_target(name, CHAMPION)
            deadline = time.monotonic() + 30
            after = client.predict(rows[features].head(1))
            while after.version != expected and time.monotonic() < deadline:
                time.sleep(0.5)
                after = client.predict(rows[features].head(1))
            _echo(echo, f"  the endpoint now answers with v{after.version}")
    finally:
        if served and not keep:
            serve_stop(config, home=home_path)
    champion = registry.alias_target(name, CHAMPION) or champion
    card = work / "model-card.md"
    if champion is not None:
        from raymlops.cards import render_card

        card.write_text(render_card(registry, name, champion, fmt="md"))
    result = RunResult(
        trained,
        int(champion or version),
        shown,
        gate=gate,
        served_url=status.url,
        batch=batch,
        monitored=monitored,
        retrained=retrained,
        card_path=card if champion is not None else None,
        report_path=monitored.report_path,
        wall_time_s=time.monotonic() - started,
        steps=steps,
    )
    if keep:
        _echo(echo, f"\nserving {status.url} until Ctrl-C")
        _wait_for_interrupt()
        serve_stop(config, home=home_path)
    return result


def _sharing_serve(config: PipelineConfig) -> PipelineConfig:
    """The config with Serve replicas sized to leave one CPU of this Ray to the steps that
    run beside the endpoint (monitoring's Ray Data tasks, the retraining's Tune trials):
    replicas hold their CPUs until Serve scales them down, minutes later."""
    from raymlops.launcher import cluster_resources

    cpus = cluster_resources().get("CPU", 1.0)
    replicas = config.serve.autoscaling.max_replicas
    share = max(0.0, (cpus - 1.0) / replicas)
    if config.serve.cpus_per_replica <= share:
        return config
    serve = config.serve.model_copy(update={"cpus_per_replica": round(share, 3)})
    return config.model_copy(update={"serve": serve})


def _send(client: Any, frame: pd.DataFrame, batch_rows: int) -> int:
    """Send `frame` to the endpoint `batch_rows` rows per request, 8 requests in flight."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [frame.iloc[i : i + batch_rows] for i in range(0, len(frame), batch_rows)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client.predict, chunks))
    return len(chunks)


class _Background:
    """Live traffic while a canary is judged: resampled rows, a few requests at a time."""

    def __init__(self, client: Any, frame: pd.DataFrame) -> None:
        import threading

        self.client = client
        self.frame = frame
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        import threading

        self.stop_event.clear()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self.stop_event.is_set():
            picked = rng.integers(0, len(self.frame), size=32)
            chunk = self.frame.iloc[picked]
            try:
                _send(self.client, chunk, batch_rows=1)
            except Exception:  # a failed request is the canary's figures' business
                time.sleep(0.1)

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            self.thread = None


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
