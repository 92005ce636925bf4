"""The hyperparameter search on Ray Tune: search space, ASHA/FIFO, resources, resume.

Trials report to Tune only: the driver records them in MLflow while they run
(`raymlops.train.tracking`, when the search is given its parent run) and completes their
runs once the search is over, so trial processes never touch the tracking store.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raymlops.core.config import PipelineConfig, SearchSpec
from raymlops.core.errors import ResourceError, SearchStalledError, TrainingError
from raymlops.core.report import say
from raymlops.core.storage import join, open_location, storage_root
from raymlops.registry.store import TrialRecord
from raymlops.train.loop import CHECKPOINT_STATE, TrainingArrays

if TYPE_CHECKING:
    from raymlops.train.streaming import StreamingData
    from raymlops.train.tracking import LiveTracking, TrialTracker

__all__ = [
    "SearchOutcome",
    "latest_experiment",
    "plan_concurrency",
    "run_search",
    "trial_count",
    "trial_resources",
    "uses_train_run",
]


@dataclass
class SearchOutcome:
    """What a finished search produced: every trial, the best one and its checkpoint."""

    experiment_path: str
    trials: list[TrialRecord]
    best_trial_id: str
    best_params: dict[str, Any]
    best_metrics: dict[str, float]
    best_checkpoint: Path
    metric: str
    mode: str
    wall_time_s: float
    concurrency: int


def _domain(spec: SearchSpec) -> Any:
    from ray import tune

    if spec.type == "choice":
        return tune.choice(spec.values)
    if spec.type == "grid":
        return tune.grid_search(spec.values)
    assert spec.low is not None and spec.high is not None
    if spec.type == "uniform":
        return tune.uniform(spec.low, spec.high)
    if spec.type == "loguniform":
        return tune.loguniform(spec.low, spec.high)
    return tune.randint(int(spec.low), int(spec.high))


def uses_train_run(config: PipelineConfig) -> bool:
    """Whether each trial is a Ray Train run (data-parallel workers fed by Ray Data) rather
    than a loop in the trial's own process: with several workers, or streaming data."""
    return config.train.num_workers > 1 or config.data.streaming


def _trial_demand(config: PipelineConfig) -> tuple[float, float, str, str]:
    """CPUs and GPUs one trial needs, and how to name each demand in an error."""
    t, tr = config.tune, config.train
    if uses_train_run(config):
        from raymlops.train.data_parallel import per_trial_demand

        cpus, gpus = per_trial_demand(config)
        workers = f"train.num_workers={tr.num_workers} × "
        cpu_text = f"{workers}train.cpus_per_worker={tr.cpus_per_worker:g}" + (
            f" + train.ingest_cpus={tr.ingest_cpus:g}" if tr.ingest_cpus else ""
        )
        gpu_text = f"{workers}train.gpus_per_worker={tr.gpus_per_worker:g}"
        return cpus, gpus, f"{cpu_text} = {cpus:g} CPUs", f"{gpu_text} = {gpus:g} GPUs"
    gpus = _single_process_gpus(config)
    gpu_text = (
        f"tune.gpus_per_trial={gpus:g}"
        if gpus == t.gpus_per_trial
        else f"train.use_gpu with train.gpus_per_worker={gpus:g}"
    )
    return t.cpus_per_trial, gpus, f"tune.cpus_per_trial={t.cpus_per_trial:g}", gpu_text


def _single_process_gpus(config: PipelineConfig) -> float:
    """GPUs a single-process trial reserves: tune.gpus_per_trial, at least gpus_per_worker
    when train.use_gpu is set."""
    gpus = config.tune.gpus_per_trial
    if config.train.use_gpu:
        gpus = max(gpus, config.train.gpus_per_worker)
    return gpus


def plan_concurrency(config: PipelineConfig, resources: dict[str, float]) -> int:
    """Trials that can run at once on this cluster; ResourceError if one can never run."""
    t = config.tune
    cpus = resources.get("CPU", 0.0)
    gpus = resources.get("GPU", 0.0)
    need_cpus, need_gpus, cpu_text, gpu_text = _trial_demand(config)
    if need_cpus > cpus + 1e-9:
        raise ResourceError(f"{cpu_text} but the Ray cluster has {cpus:g} CPUs")
    if need_gpus > gpus + 1e-9:
        raise ResourceError(f"{gpu_text} but the Ray cluster has {gpus:g} GPUs")
    limit = math.floor(cpus / need_cpus + 1e-9) if need_cpus > 0 else trial_count(config)
    if need_gpus > 0:
        limit = min(limit, math.floor(gpus / need_gpus + 1e-9))
    if t.max_concurrent_trials is not None:
        limit = min(limit, t.max_concurrent_trials)
    return max(1, min(limit, trial_count(config)))


def _fit_fragments(config: PipelineConfig, echo: bool) -> PipelineConfig:
    """A single-process trial's CPU share, lowered to what one node has free when no node
    has a whole `tune.cpus_per_trial` left: Serve replicas with fractional CPUs on every
    node (a retrain beside the endpoint it will replace) would otherwise leave every trial
    waiting until they scale down. Unchanged when a node has enough free, when none has
    any, and when no node is that large at all (`plan_concurrency` reports that)."""
    need = config.tune.cpus_per_trial
    if uses_train_run(config) or need <= 0:
        return config
    from raymlops.core.ray_session import largest_free_cpus

    found = largest_free_cpus()
    if found is None:
        return config
    free, node_total = found
    # Only fragments left by others: a trial no node could ever hold stays an error.
    if need > node_total or free >= need:
        return config
    if free < 0.1:
        say(
            f"▸ no node has a CPU free now (Serve replicas or other jobs hold them): trials "
            f"of {need:g} CPU wait until one frees up",
            when=echo,
        )
        return config
    share = math.floor(free * 20) / 20  # whole twentieths: what Ray's resource math keeps exact
    say(
        f"▸ no node has {need:g} CPU free (Serve replicas hold fractions of every node): "
        f"trials run with {share:g} CPU each",
        when=echo,
    )
    return config.model_copy(
        update={"tune": config.tune.model_copy(update={"cpus_per_trial": share})}
    )


def trial_count(config: PipelineConfig) -> int:
    """Trials a search runs: num_samples times the number of grid points."""
    t = config.tune
    grid = math.prod(len(s.values or []) for s in t.search_space.values() if s.type == "grid")
    return t.num_samples * max(grid, 1)


def trial_resources(config: PipelineConfig) -> dict[str, float]:
    """The Ray resources one trial reserves (what `tune.with_resources` is given).

    A Ray Train trial's own process only waits for its workers, which reserve their CPUs and
    GPUs themselves: it takes a token amount of memory, the smallest request Tune accepts,
    so that no CPU is held twice (concurrency comes from `plan_concurrency` instead)."""
    if uses_train_run(config):
        return {"cpu": 0.0, "gpu": 0.0, "memory": 1.0}
    return {"cpu": config.tune.cpus_per_trial, "gpu": _single_process_gpus(config)}


def _trainable(
    overrides: dict[str, Any],
    base: dict[str, Any],
    arrays: Any,
    experiment_path: str = "",
    keeper: Any = None,
) -> None:
    """A Tune function trainable: one trial of `raymlops.train.loop.fit`, or of a Ray Train run
    when the trial is data-parallel or streams its data."""
    import tempfile

    import ray
    import torch
    from ray import tune

    from raymlops.train.loop import fit

    config = PipelineConfig.model_validate(base).apply_trial(overrides)
    if uses_train_run(config):
        from raymlops.train.data_parallel import run_trial, trial_storage

        trial_id = tune.get_context().get_trial_id()
        run_trial(config, arrays, trial_storage(experiment_path, trial_id), keeper, trial_id)
        return
    resources = tune.get_context().get_trial_resources().required_resources
    threads = config.train.torch_threads or max(1, int(resources.get("CPU", 1)))
    torch.set_num_threads(threads)
    use_gpu = resources.get("GPU", 0) > 0 and torch.cuda.is_available()
    device = "cuda" if use_gpu else "cpu"
    checkpoint = tune.get_checkpoint()

    # Which Ray node ran the trial (in progress.csv), to see work spread over a cluster.
    node = {"node_id": ray.get_runtime_context().get_node_id()}

    def report(metrics: dict[str, float], folder: Path | None) -> None:
        result: dict[str, Any] = {**metrics, **node}
        if folder is None:
            tune.report(result)
        else:
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(folder)))

    if checkpoint is not None:
        with tempfile.TemporaryDirectory() as tmp:
            restored = Path(checkpoint.to_directory(tmp))
            fit(config, arrays, report, checkpoint_dir=restored, device=device)
    else:
        fit(config, arrays, report, device=device)


def _result_checkpoint(result: Any) -> Path | None:
    """The folder of a trial's latest checkpoint: Tune's own, or for a Ray Train trial the
    rank-0 checkpoint its last report named."""
    from raymlops.train.data_parallel import CHECKPOINT_PATH_KEY

    if result.checkpoint is not None:
        return Path(result.checkpoint.to_directory())
    path = (result.metrics or {}).get(CHECKPOINT_PATH_KEY)
    if isinstance(path, str) and path:
        if "://" in path:
            from ray.train import Checkpoint

            return Path(Checkpoint(path).to_directory())
        return Path(path)
    return None


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


#: How a progress line names each trial outcome (`raymlops.train.tracking.trial_outcome`).
_OUTCOME_NOTES = {
    "error": "error",
    "early_stopped": "early-stopped",
    "stopped": "stopped by ASHA",
    "completed": "finished",
}


class _Progress:
    """A Tune callback printing one line per finished trial and a running best."""

    def __init__(
        self, total: int, max_epochs: int, max_failures: int, metric: str, mode: str, echo: bool
    ) -> None:
        from ray.tune import Callback

        outer = self

        class _CB(Callback):  # type: ignore[misc]
            def setup(self, **info: Any) -> None:
                # Also called on resume, where Tune restores this callback from its state.
                outer.started = time.monotonic()

            def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
                if not outer.counted_earlier:
                    outer.count_earlier(trials)

            def on_trial_complete(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                outer.finished(trial, "done")

            def on_trial_recover(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                outer.recovered(trial)

            def on_trial_error(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                outer.finished(trial, "error")

        self.callback = _CB()
        self.total, self.max_epochs, self.max_failures = total, max_epochs, max_failures
        self.metric, self.mode, self.echo = metric, mode, echo
        self.done = 0
        self.best: float | None = None
        self.started = time.monotonic()
        self.counted_earlier = False

    def recovered(self, trial: Any) -> None:
        if self.echo:
            say(
                f"  trial {trial.trial_id} crashed; retrying from its last checkpoint "
                f"(retry {trial.run_metadata.num_failures} of at most {self.max_failures})"
            )

    def count_earlier(self, trials: list[Any]) -> None:
        """Count the trials a resumed search had finished before it was interrupted, so that
        its lines go on from there (on a new search there are none)."""
        self.counted_earlier = True
        earlier = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        for trial in earlier:
            self._note_best(trial.last_result or {})
        self.done = len(earlier)
        if self.echo and earlier:
            best = f"{self.best:.4g}" if self.best is not None else "-"
            say(
                f"  {len(earlier)} of {self.total} trials finished before the interruption; "
                f"best {self.metric} so far {best}"
            )

    def _note_best(self, last: dict[str, Any]) -> None:
        value = last.get("best_" + self.metric)
        if value is None or value != value:  # missing or NaN
            return
        if self.best is None:
            self.best = float(value)
        elif self.mode == "min":
            self.best = min(self.best, float(value))
        else:
            self.best = max(self.best, float(value))

    def finished(self, trial: Any, how: str) -> None:
        from raymlops.train.tracking import trial_outcome

        self.done += 1
        last = trial.last_result or {}
        self._note_best(last)
        if not self.echo:
            return
        epochs = int(last.get("epoch", last.get("training_iteration", 0)))
        best = f"{self.best:.4g}" if self.best is not None else "-"
        note = _OUTCOME_NOTES[trial_outcome(last, self.max_epochs, how == "error")]
        say(
            f"  trial {self.done:>3}/{self.total} {trial.trial_id} {note:<13} "
            f"epochs {epochs:>3}  best {self.metric} so far {best}  "
            f"[{time.monotonic() - self.started:.0f}s]"
        )


def experiment_storage(config: PipelineConfig, home: Path) -> str:
    """Where Tune experiments of this pipeline live (a path or a URI)."""
    storage = config.tune.storage or os.environ.get("RAYMLOPS_TUNE_STORAGE")
    if storage:
        return storage if "://" in storage else str(Path(storage).expanduser().resolve())
    shared = storage_root(config.storage)
    return join(shared, "tune") if shared else str(home / "tune")


def latest_experiment(
    config: PipelineConfig, home: Path, exclude: frozenset[str] = frozenset()
) -> str | None:
    """The newest restorable experiment of this pipeline under the storage path, skipping
    those in `exclude` (experiments whose result was already registered)."""
    import pyarrow.fs as pafs
    from ray import tune

    storage = experiment_storage(config, home)
    prefix = (config.tune.experiment_name or config.name) + "-"
    # A local folder or an object store alike (a cluster's Tune storage is s3://…).
    fs, root = open_location(storage)
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = [i.base_name for i in found if i.type == pafs.FileType.Directory]
    for name in sorted((n for n in names if n.startswith(prefix)), reverse=True):
        candidate = join(storage, name)
        if candidate in exclude:
            continue
        if tune.Tuner.can_restore(candidate):
            return candidate
    return None


def run_search(
    config: PipelineConfig,
    arrays: TrainingArrays | StreamingData,
    home: Path,
    resume: str | None = None,
    echo: bool = True,
    callbacks: list[Any] | None = None,
    live: LiveTracking | None = None,
) -> SearchOutcome:
    """Run the Tune search (or continue the interrupted experiment at `resume`, a path from
    `latest_experiment`) and pick the best trial. With `live` (the parent MLflow run, see
    `raymlops.train.tracking.open_search_run`), each trial's run and metrics appear in
    MLflow as it trains."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback

    from raymlops.core.ray_session import cluster_resources
    from raymlops.train.guard import StallWatch, finish_keeper, start_keeper, take_stall

    config = _fit_fragments(config, echo)
    t = config.tune
    metric, mode = t.resolved_metric()
    concurrency = plan_concurrency(config, cluster_resources())
    name = f"{t.experiment_name or config.name}-{datetime.now():%Y%m%d-%H%M%S}"
    storage = experiment_storage(config, home)
    experiment_path = resume or f"{storage.rstrip('/')}/{name}"
    # Ray Train trials' placement groups are freed by a keeper of ours, not Ray Train's
    # dashboard-dependent cleaner (see raymlops.train.guard).
    keeper = start_keeper() if uses_train_run(config) else None
    watch = StallWatch(t.stall_timeout_s)
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable,
            base=config.model_dump(mode="json"),
            arrays=arrays,
            experiment_path=experiment_path,
            keeper=keeper,
        ),
        trial_resources(config),
    )
    total = trial_count(config)
    progress = _Progress(total, config.train.epochs, t.max_failures, metric, mode, echo)
    tracker = _live_tracker(live, total, config.train.epochs, metric, mode, experiment_path)
    started = time.monotonic()

    if resume:
        if echo:
            say(f"▸ resuming Tune experiment {resume}")
        tuner = tune.Tuner.restore(
            resume, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        tracking = [tracker] if tracker is not None else []
        callbacks = [progress.callback, CSVLoggerCallback(), watch, *tracking, *(callbacks or [])]
        tuner = _new_tuner(config, trainable, name, storage, concurrency, callbacks, watch)
    if echo:
        need_cpus, need_gpus, _, _ = _trial_demand(config)
        workers = (
            f"{config.train.num_workers} worker{'s' if config.train.num_workers > 1 else ''}, "
            if uses_train_run(config)
            else ""
        )
        say(
            f"▸ tuning {total} trials × ≤{config.train.epochs} epochs, {concurrency} at a time "
            f"({t.scheduler.upper()}, metric {metric} {mode}, {workers}"
            f"{need_cpus:g} CPU{f' + {need_gpus:g} GPU' if need_gpus else ''}"
            " per trial)"
        )
    take_stall()
    try:
        results = tuner.fit()
    finally:
        if keeper is not None:
            finish_keeper(keeper)
    stall = take_stall()
    if stall:
        raise SearchStalledError(stall)
    trials = [_trial_record(result, config.train.epochs) for result in results]
    ok = [r for r in results if r.error is None and _result_checkpoint(r) and r.metrics]
    if not ok:
        first = next((t.error for t in trials if t.error), "no trial reported a metric")
        raise TrainingError(f"every trial failed ({len(trials)} trials); first error: {first}")
    best = _best_result(results, ok, metric, mode)
    best_dir = _result_checkpoint(best)
    assert best_dir is not None
    best_id = str(best.metrics.get("trial_id"))
    state = json.loads((best_dir / CHECKPOINT_STATE).read_text())
    best_metrics = {k: float(v) for k, v in state["best_metrics"].items()}
    return SearchOutcome(
        experiment_path=experiment_path,
        trials=trials,
        best_trial_id=best_id,
        best_params=dict(best.config or {}),
        best_metrics=best_metrics,
        best_checkpoint=best_dir,
        metric=metric,
        mode=mode,
        wall_time_s=time.monotonic() - started,
        concurrency=concurrency,
    )


def _live_tracker(
    live: LiveTracking | None,
    total: int,
    max_epochs: int,
    metric: str,
    mode: str,
    experiment_path: str,
) -> TrialTracker | None:
    """The callback recording the search's trials in MLflow as they run (None without
    `live`), its parent run tagged first. On a resume Tune uses the tracker it saved with
    the experiment; this one only marks the parent run as running again."""
    if live is None:
        return None
    from raymlops.train.tracking import TrialTracker

    tracker = TrialTracker(live, total, max_epochs, metric, mode)
    tracker.begin(experiment_path)
    return tracker


def _trial_record(result: Any, max_epochs: int) -> TrialRecord:
    """One trial of a finished search as the registry records it: its parameters, one
    history row per epoch, its status, outcome and error."""
    from raymlops.train.tracking import TRIAL_METRIC_PREFIXES, trial_outcome

    history: list[dict[str, float]] = []
    frame = result.metrics_dataframe
    if frame is not None:
        keep = [c for c in frame.columns if c.startswith(TRIAL_METRIC_PREFIXES) or c == "epoch"]
        # One row per epoch, the last reported: a trial resumed from a checkpoint
        # reports again the epochs it had trained past it before the crash.
        by_epoch: dict[float, dict[str, float]] = {}
        for i, row in enumerate(frame[keep].to_dict("records")):
            clean = {k: float(v) for k, v in row.items() if v == v}
            by_epoch[clean.get("epoch", float(i + 1))] = clean
        history = [by_epoch[e] for e in sorted(by_epoch)]
    trial_id = str((result.metrics or {}).get("trial_id") or Path(result.path).name)
    params = {k: v for k, v in (result.config or {}).items()}
    error = None
    if result.error:
        text = str(result.error).strip()
        error = text.splitlines()[-1] if text else repr(result.error)
    status = "ERROR" if result.error else "TERMINATED"
    outcome = trial_outcome(result.metrics, max_epochs, errored=bool(result.error))
    return TrialRecord(trial_id, params, history, status, error, outcome)


def _best_result(results: Any, ok: list[Any], metric: str, mode: str) -> Any:
    """The best trial by Tune's ranking, or among the trials with a checkpoint when Tune's
    pick has none (it failed after its best epoch)."""
    best = results.get_best_result(metric=metric, mode=mode, scope="all", filter_nan_and_inf=True)
    if best.error is not None or _result_checkpoint(best) is None:
        best = min(
            ok,
            key=lambda r: r.metrics.get("best_" + metric, math.inf) * (1 if mode == "min" else -1),
        )
    return best


def _new_tuner(
    config: PipelineConfig,
    trainable: Any,
    name: str,
    storage: str,
    concurrency: int,
    callbacks: list[Any],
    watch: Any,
) -> Any:
    """A new Tune search over the config's space: ASHA (rungs counted in epochs) or FIFO,
    seeded, `concurrency` trials at a time, checkpoints kept as configured, stopped by the
    stall watch."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    t = config.tune
    metric, mode = t.resolved_metric()
    scheduler: Any
    if t.scheduler == "asha":
        scheduler = ASHAScheduler(
            # The epoch, not Tune's iteration count: a data-parallel trial resumed from
            # its Ray Train checkpoint counts iterations from 1 again, but its epochs
            # (and so ASHA's rungs, where the loop checkpoints) carry on.
            time_attr="epoch",
            max_t=config.train.epochs,
            grace_period=min(t.grace_period, config.train.epochs),
            reduction_factor=t.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space={path: _domain(spec) for path, spec in t.search_space.items()},
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrency),
            num_samples=t.num_samples,
            # A Ray Train trial owns its controller and workers: a reused trial process
            # would keep a stopped trial's run alive.
            reuse_actors=t.reuse_actors and not uses_train_run(config),
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            # num_to_keep=None: a bound forces an experiment snapshot every few
            # checkpoints, which costs more than the small files it would delete.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            # progress.csv alone gives each trial's metric history (result.json and
            # TensorBoard files would only add per-epoch work to the driver).
            callbacks=callbacks,
            stop=watch.stopper,
            verbose=0,
            log_to_file=False,
        ),
    )
