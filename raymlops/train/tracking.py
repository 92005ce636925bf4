"""Live tracking of a Tune search in MLflow: each trial's run and its per-epoch metrics
appear while the search runs, and the search's parent run shows how far it has got.

The driver writes, not the trials. Every trial report already reaches the driver (Tune's
result stream, for single-process and Ray Train trials alike), so one writer there gives the
same per-epoch liveness with no MLflow client, credentials or tracking URI in any trial
process, no trial processes contending for the embedded SQLite file (a path on the driver's
machine, which trials on other nodes could not open anyway), and no MLflow import in each
trial's start-up. The writes run in order on one background thread, so a slow or locked
store delays tracking, never the search; a locked SQLite store is retried
(`raymlops.registry.store.retry_when_locked`). Whatever live tracking missed, the
end-of-search `Registry.log_trials` adds to the same runs.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from ray.tune import Callback

from raymlops.registry.store import (
    TRIAL_RUN_STATUS,
    Registry,
    default_actor,
    retry_when_locked,
)

if TYPE_CHECKING:
    from raymlops.core.config import PipelineConfig

__all__ = [
    "TRIAL_METRIC_PREFIXES",
    "LiveTracking",
    "TrialTracker",
    "open_search_run",
    "search_state",
    "trial_metrics",
    "trial_outcome",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: The reported metrics a trial's run records: validation and training metrics and the
#: running best of the search metric (not Tune's bookkeeping: times, ids, iterations).
TRIAL_METRIC_PREFIXES = ("val_", "train_", "best_")
#: Tag of the parent run naming its Tune experiment: how `--resume` finds it again.
EXPERIMENT_TAG = "raymlops.tune_experiment"
_SEARCH_TAG = "raymlops.search."
#: How long the end of a search waits for writes still queued (a store that stays locked
#: or a server that does not answer): the end-of-search reconciliation adds what is left.
_FLUSH_TIMEOUT_S = 120.0
#: How long the end of a search then waits for the write in progress to give up or finish,
#: once the writes still queued are cancelled.
_CANCEL_GRACE_S = 10.0


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The metrics of one trial report that its run records (`TRIAL_METRIC_PREFIXES`),
    NaN left out."""
    return {
        k: float(v)
        for k, v in result.items()
        if k.startswith(TRIAL_METRIC_PREFIXES)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and not math.isnan(v)
    }


def trial_outcome(last_result: dict[str, Any] | None, max_epochs: int, errored: bool) -> str:
    """How a trial ended, from its last report (a key of
    `raymlops.registry.store.TRIAL_RUN_STATUS`): 'error'; 'completed' when it trained every
    epoch; 'early_stopped' when its own patience ended it; else 'stopped' (ASHA, or the
    search, stopped it before its last epoch)."""
    if errored:
        return "error"
    last = last_result or {}
    epoch = last.get("epoch", last.get("training_iteration", 0))
    if int(epoch or 0) >= max_epochs:
        return "completed"
    return "early_stopped" if last.get("early_stopped") else "stopped"


def search_state(
    trials: list[Any],
    max_epochs: int,
    metric: str,
    mode: str,
    now: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Counts of a search's trials by state (pending, running and each outcome), the best
    value of `best_<metric>` reported so far and its trial. `now` overrides the status of
    the trials it names (a callback sees the trial it is told about in its old status)."""
    counts = dict.fromkeys(("pending", "running", *TRIAL_RUN_STATUS), 0)
    best: float | None = None
    best_trial = ""
    for trial in trials:
        status = (now or {}).get(trial.trial_id, trial.status)
        if status in ("TERMINATED", "ERROR"):
            counts[trial_outcome(trial.last_result, max_epochs, status == "ERROR")] += 1
        else:
            counts["running" if status == "RUNNING" else "pending"] += 1
        value = (trial.last_result or {}).get("best_" + metric)
        if not isinstance(value, int | float) or math.isnan(value):
            continue
        if best is None or (value < best if mode == "min" else value > best):
            best, best_trial = float(value), str(trial.trial_id)
    return {"counts": counts, "best": best, "best_trial": best_trial}


@dataclass(frozen=True)
class LiveTracking:
    """Where a search is tracked live: the MLflow store (its URI, which the driver uses:
    trials never get it), the experiment and the search's parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def _earlier_search_run(registry: Registry, experiment_id: str, experiment: str) -> str | None:
    """The parent run an interrupted search of Tune experiment `experiment` opened (not a
    finished one: that search's result was registered), or None."""
    if "'" in experiment:  # not expressible in an MLflow filter; a new run it is
        return None
    runs = retry_when_locked(
        lambda: registry.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{EXPERIMENT_TAG}` = '{experiment}'",
            order_by=["attributes.start_time DESC"],
            max_results=10,
        )
    )
    for run in runs:
        if run.info.status != "FINISHED" and "raymlops.trial_id" not in run.data.tags:
            return str(run.info.run_id)
    return None


@contextmanager
def open_search_run(
    registry: Registry, config: PipelineConfig, run_name: str, resume: str | None = None
) -> Iterator[LiveTracking]:
    """The parent MLflow run of one training pipeline, open for the block (FINISHED when it
    ends, FAILED if it raises), recorded as the acting user's. A resumed search (`resume`:
    its Tune experiment's path) continues the run its first attempt opened, so that its
    trial runs stay under one parent; otherwise, or if there is none, a new
    `Registry.pipeline_run`."""
    experiment_id = registry.experiment_id(config.registry.experiment)
    earlier = _earlier_search_run(registry, experiment_id, resume) if resume else None
    if earlier is None:
        tags = {"mlflow.user": default_actor()}
        with registry.pipeline_run(config, run_name, tags=tags) as run_id:
            yield LiveTracking(registry.tracking_uri, experiment_id, run_id)
        return
    retry_when_locked(lambda: registry.client.update_run(earlier, status="RUNNING"))
    try:
        yield LiveTracking(registry.tracking_uri, experiment_id, earlier)
    except BaseException:
        registry.end_run(earlier, succeeded=False)
        raise
    registry.end_run(earlier, succeeded=True)


class _Cancelled(Exception):
    """A write given up because the end of the search stopped waiting for it."""


#: The writer whose thread this is (`_pause` reads its cancel event).
_current = threading.local()


def _pause(seconds: float) -> None:
    """The wait between tries of a locked write (`retry_when_locked`'s `sleep`): on a
    writer's thread it ends early, raising _Cancelled, once that writer is cancelled."""
    writer = getattr(_current, "writer", None)
    if writer is None:
        time.sleep(seconds)
    elif writer.cancelled.wait(seconds):
        raise _Cancelled


class _Writer:
    """MLflow writes applied in order on one daemon thread; a failed write is logged and
    the next one goes on. `close` waits for the queue to drain; past its timeout it cancels
    the writes still queued (none is applied after it returns, so none races with the
    end-of-search reconciliation) and counts them."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.cancelled = threading.Event()
        self._count_lock = threading.Lock()
        self.failures = 0
        self.dropped = 0  # writes cancelled (queued, or given up between retries)

    def submit(self, write: Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="raymlops-live-tracking", daemon=True
            )
            self._thread.start()
        self._queue.put(write)

    def close(self, timeout_s: float, grace_s: float = _CANCEL_GRACE_S) -> tuple[int, bool]:
        """Apply what is queued, waiting at most `timeout_s`, and stop. Past that, cancel:
        the writes still queued are dropped, a locked write stops retrying, and the write
        in progress gets `grace_s` more. Returns (writes dropped, whether a write was still
        in progress after the grace: one request that may yet land)."""
        if self._thread is None:
            return 0, False
        self._queue.put(None)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            return self.dropped, False
        self.cancelled.set()
        while True:  # what the thread has not taken yet is dropped here
            try:
                write = self._queue.get_nowait()
            except queue.Empty:
                break
            if write is not None:
                self._count_dropped()
        self._queue.put(None)  # the thread stops after the write it is in
        self._thread.join(grace_s)
        return self.dropped, self._thread.is_alive()

    def _count_dropped(self) -> None:
        with self._count_lock:
            self.dropped += 1

    def _run(self) -> None:
        _current.writer = self
        while (write := self._queue.get()) is not None:
            if self.cancelled.is_set():
                self._count_dropped()
                continue
            try:
                write()
            except _Cancelled:
                self._count_dropped()
            except Exception as exc:  # tracking is best effort; the end reconciles
                self.failures += 1
                if self.failures == 1:
                    logger.warning(
                        "live tracking in MLflow: a write failed (%s: %s); the search goes "
                        "on, and its trial runs are completed when it ends",
                        type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "",
                    )


def _locked(exc: BaseException, wait: float) -> None:
    logger.warning("MLflow store busy (%s); retrying in %.1f s", str(exc).splitlines()[0], wait)


def _retry(action: Callable[[], _T]) -> _T:
    """`action()` on the writer's thread: retried while the store is locked, said so in the
    log, given up when the writer is cancelled (`_pause`)."""
    return retry_when_locked(action, on_retry=_locked, sleep=_pause)


class TrialTracker(Callback):  # type: ignore[misc]
    """A Tune callback that records a search's trials in MLflow as they run.

    Each trial gets its run under the search's parent run when it starts (the run it already
    has when it restarts after a crash or a `--resume`), each report adds one step (the
    epoch) of metrics, and its end sets the run's status: FINISHED, KILLED when the
    scheduler stopped it, FAILED on error. The parent run's `raymlops.search.*` tags and
    `search.best_<metric>` metric follow the search. Callbacks only queue writes; one
    thread applies them (`_Writer`). Tune pickles this callback with the experiment and
    restores it on resume: only its settings travel."""

    def __init__(
        self, live: LiveTracking, total: int, max_epochs: int, metric: str, mode: str
    ) -> None:
        self.live, self.total, self.max_epochs = live, total, max_epochs
        self.metric, self.mode = metric, mode
        self._reset()

    def _reset(self) -> None:
        self._writer = _Writer()
        self._registry: Registry | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id (writer thread only)
        self._last_step: dict[str, int] = {}  # last step logged per trial (writer thread)
        self._earlier: dict[str, Any] | None = None  # runs the parent already had
        self._started: set[str] = set()  # trials started in this session
        self._closed: set[str] = set()  # trials whose run this session ended
        # Reports not written yet, per trial: one write takes them all (a store slower than
        # the reports falls behind by fewer, larger batches, not by a queue of single rows).
        self._unwritten: dict[str, list[tuple[int, dict[str, float], int]]] = {}
        self._unwritten_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        keep = ("live", "total", "max_epochs", "metric", "mode")
        return {k: v for k, v in self.__dict__.items() if k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(tracking_uri=self.live.tracking_uri)
        return self._registry

    def begin(self, experiment_path: str) -> None:
        """Tag the parent run, before any trial runs: the Tune experiment (what a resume
        looks for), the acting user, the search's size, state 'running'."""
        tags = {
            EXPERIMENT_TAG: experiment_path,
            "mlflow.user": default_actor(),
            f"{_SEARCH_TAG}state": "running",
            f"{_SEARCH_TAG}trials_total": str(self.total),
            f"{_SEARCH_TAG}metric": f"{self.metric} ({self.mode})",
        }
        retry_when_locked(partial(self.registry.log, self.live.parent_run_id, tags=tags))

    # ------------------------------------------------------------------ Tune's hooks
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        trial_id = str(trial.trial_id)
        self._started.add(trial_id)
        self._closed.discard(trial_id)
        self._writer.submit(partial(self._open_trial, trial_id, dict(trial.config or {})))
        self._submit_state(trials, {trial_id: "RUNNING"})

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        metrics = trial_metrics(result)
        step = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        if not metrics or step <= 0:
            return
        trial_id = str(trial.trial_id)
        with self._unwritten_lock:
            waiting = self._unwritten.setdefault(trial_id, [])
            waiting.append((step, metrics, int(time.time() * 1000)))
            if len(waiting) > 1:
                return  # the write already queued for this trial takes this report too
        self._writer.submit(partial(self._log_epochs, trial_id))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        trial_id = str(trial.trial_id)
        outcome = trial_outcome(trial.last_result, self.max_epochs, errored=False)
        self._closed.add(trial_id)
        self._writer.submit(partial(self._close_trial, trial_id, "TERMINATED", outcome))
        self._submit_state(trials, {trial_id: "TERMINATED"})

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        trial_id = str(trial.trial_id)
        self._closed.add(trial_id)
        self._writer.submit(partial(self._close_trial, trial_id, "ERROR", "error", trial))
        self._submit_state(trials, {trial_id: "ERROR"})

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        retries = {"raymlops.trial_retries": str(trial.run_metadata.num_failures)}
        self._writer.submit(partial(self._tag_trial, str(trial.trial_id), retries))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Trials started and not ended when the search stops (interrupted: Ctrl-C, a
        stall) end as KILLED, to be reopened by a resume; then every queued write is
        applied. (Tune has marked such trials TERMINATED by now, without telling its
        callbacks they completed: hence the set of trials this tracker saw end.)"""
        cut = self._started - self._closed
        for trial_id in sorted(cut):
            self._writer.submit(partial(self._close_trial, trial_id, "INTERRUPTED", None))
        done = not cut and all(t.status in ("TERMINATED", "ERROR") for t in trials)
        now = dict.fromkeys(cut, "PENDING")  # to run again when the search is resumed
        self._submit_state(trials, now, "finished" if done else "interrupted")
        dropped, in_progress = self._writer.close(_FLUSH_TIMEOUT_S)
        if dropped or in_progress:
            logger.warning(
                "live tracking in MLflow: %d write(s) still pending after %.0f s were "
                "dropped%s; the end of the search records its trials in full",
                dropped,
                _FLUSH_TIMEOUT_S,
                " (one request still in progress may yet land)" if in_progress else "",
            )
        self._writer = _Writer()  # a later hook (none is expected) starts a new one

    def _submit_state(self, trials: list[Any], now: dict[str, str], state: str = "") -> None:
        snapshot = search_state(trials, self.max_epochs, self.metric, self.mode, now)
        self._writer.submit(partial(self._write_state, snapshot, state))

    # ------------------------------------------------------------------ writes (thread)
    def _open_trial(self, trial_id: str, params: dict[str, Any]) -> None:
        """The trial's run: this session's, the one an earlier attempt made (a resume), or
        a new one; reopened (RUNNING) when it had ended."""
        registry, client = self.registry, self.registry.client
        if self._earlier is None:
            self._earlier = _retry(
                partial(registry.trial_runs, self.live.parent_run_id, self.live.experiment_id)
            )
        run_id = self._runs.get(trial_id)
        earlier = self._earlier.get(trial_id)
        if run_id is None and earlier is not None:
            run_id = str(earlier.info.run_id)
            self._last_step[trial_id] = max(registry.logged_steps(run_id, self.metric), default=0)
        if run_id is None:
            run_id = registry.create_trial_run(
                self.live.experiment_id,
                self.live.parent_run_id,
                trial_id,
                params,
                tags={"raymlops.trial_status": "RUNNING"},
            )
        elif _retry(partial(client.get_run, run_id)).info.status != "RUNNING":
            _retry(partial(client.update_run, run_id, status="RUNNING"))
            self._tag_run(run_id, {"raymlops.trial_status": "RUNNING"})
        self._runs[trial_id] = run_id

    def _log_epochs(self, trial_id: str) -> None:
        """The trial's reports not written yet, each at its epoch as step, in one write;
        a step already logged is skipped (a trial restored from a checkpoint reports again
        the epochs it had passed)."""
        with self._unwritten_lock:
            reports = self._unwritten.pop(trial_id, [])
        run_id = self._runs.get(trial_id)
        last = self._last_step.get(trial_id, 0)
        rows, stamps = [], []
        for step, metrics, stamp in reports:
            if run_id is None or step <= last:
                continue
            rows += [(k, v, step) for k, v in metrics.items()]
            stamps += [stamp] * len(metrics)
            last = step
        if not rows or run_id is None:
            return
        write = partial(self.registry.log, run_id, rows, timestamps=stamps)
        _retry(write)
        self._last_step[trial_id] = last

    def _close_trial(
        self, trial_id: str, status: str, outcome: str | None, errored: Any = None
    ) -> None:
        run_id = self._runs.get(trial_id)
        if run_id is None:
            return
        tags = {"raymlops.trial_status": status}
        if outcome is not None:
            tags["raymlops.trial_outcome"] = outcome
        if errored is not None:
            error = errored.get_error()  # read from the trial's storage, here off Tune's loop
            text = str(error).strip() if error is not None else ""
            if text:
                tags["raymlops.trial_error"] = text.splitlines()[-1][:4000]
        self._tag_run(run_id, tags)
        final = TRIAL_RUN_STATUS[outcome] if outcome is not None else "KILLED"
        client = self.registry.client
        _retry(partial(client.set_terminated, run_id, status=final))

    def _tag_trial(self, trial_id: str, tags: dict[str, str]) -> None:
        run_id = self._runs.get(trial_id)
        if run_id is not None:
            self._tag_run(run_id, tags)

    def _tag_run(self, run_id: str, tags: dict[str, str]) -> None:
        _retry(partial(self.registry.log, run_id, tags=tags))

    def _write_state(self, snapshot: dict[str, Any], state: str) -> None:
        """The parent run's view of the search: trials per state, the best so far."""
        counts: dict[str, int] = snapshot["counts"]
        tags = {f"{_SEARCH_TAG}trials_{k}": str(v) for k, v in counts.items()}
        if snapshot["best_trial"]:
            tags[f"{_SEARCH_TAG}best_trial"] = snapshot["best_trial"]
        if state:
            tags[f"{_SEARCH_TAG}state"] = state
        metrics = []
        if snapshot["best"] is not None:
            ended = sum(counts[k] for k in TRIAL_RUN_STATUS)
            metrics.append((f"search.best_{self.metric}", snapshot["best"], ended))
        stamp = [int(time.time() * 1000)] * len(metrics)
        write = partial(
            self.registry.log, self.live.parent_run_id, metrics, tags=tags, timestamps=stamp
        )
        _retry(write)
