"""Live tracking of a search in MLflow, on a real local Ray and a real SQLite store: trial
runs and their per-epoch metrics are readable while the trials still run (two at once),
a locked store delays the writes without losing any, each run ends as its trial did
(FINISHED, KILLED by ASHA, FAILED), and an interrupted search resumed continues the same
runs under the same parent.

Trials of the `gated` test architecture hold at the start of their third epoch until the
test opens the gate (a file), so what MLflow shows mid-search is deterministic.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from raymlops.core.errors import TrainingError
from raymlops.loop.training import TrainResult, train_and_register
from raymlops.registry.store import Registry
from tests.integration.gated_arch import BY_DROPOUT, GATE_ENV, GATED
from tests.integration.ray_support import local_ray
from tests.integration.shared_nothing import mlflow_server
from tests.integration.test_training import classification_data as classification_data
from tests.integration.test_training import make_config

pytestmark = [pytest.mark.integration, pytest.mark.long]

USER = "ada-live"


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file gated trials wait for (absent: they hold after two epochs)."""
    return tmp_path_factory.mktemp("gate") / "open"


@pytest.fixture(scope="module")
def ray_cluster(gate: Path) -> Iterator[dict[str, float]]:
    """The module's Ray; its workers learn the gate's path from the environment."""
    with local_ray(env={GATE_ENV: str(gate)}) as resources:
        yield resources


@pytest.fixture(autouse=True)
def _setup(ray_cluster: dict[str, float], gate: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate.unlink(missing_ok=True)
    monkeypatch.setenv("RAYMLOPS_USER", USER)


def _live_view(home: Path, experiment: str) -> dict[str, Any] | None:
    """What MLflow shows of the search in `experiment` now: its parent run and each trial's
    run status and val_loss steps; None before the parent run exists."""
    registry = Registry(home=home)
    found = registry.client.get_experiment_by_name(experiment)
    if found is None:
        return None
    parents = [
        run
        for run in registry.client.search_runs([found.experiment_id])
        if "mlflow.parentRunId" not in run.data.tags
    ]
    if len(parents) != 1:
        return None
    parent = parents[0]
    trials = {
        trial_id: {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "steps": sorted(
                m.step for m in registry.client.get_metric_history(run.info.run_id, "val_loss")
            ),
        }
        for trial_id, run in registry.trial_runs(parent.info.run_id, found.experiment_id).items()
    }
    return {"parent": parent, "trials": trials}


def _wait_for_view(
    home: Path, experiment: str, ready: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """Poll MLflow until `ready(view)`; the last view seen (maybe not ready) at timeout."""
    deadline = time.monotonic() + timeout_s
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = _live_view(home, experiment) or {}
        if view and ready(view):
            return view
        time.sleep(0.2)
    return view


def _two_epochs_each(view: dict[str, Any]) -> bool:
    trials = view["trials"]
    return len(trials) == 2 and all(t["steps"] == [1, 2] for t in trials.values())


@contextmanager
def _exclusive_lock(db: Path) -> Iterator[None]:
    """Hold SQLite's exclusive lock on `db`: every other connection waits, then fails with
    'database is locked'."""
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


class _Flag(logging.Handler):
    """Sets `event` when a log record mentions `text`."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text, self.event = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def _children(registry: Registry, result: TrainResult) -> dict[str, Any]:
    experiment = registry.client.get_run(result.run_id).info.experiment_id
    return registry.trial_runs(result.run_id, experiment)


def _steps(registry: Registry, run: Any) -> list[int]:
    return sorted(m.step for m in registry.client.get_metric_history(run.info.run_id, "val_loss"))


# --------------------------------------------------------------------------- tests


def test_trial_metrics_are_in_mlflow_while_the_search_runs(
    tmp_path: Path, classification_data: Path, gate: Path
) -> None:
    config = make_config(
        "live-metrics", classification_data, num_samples=2, epochs=4, architecture=GATED
    )
    locked = _Flag("database is locked")
    logging.getLogger("raymlops.train.tracking").addHandler(locked)
    seen: dict[str, Any] = {}

    def watch() -> None:
        """Read the search mid-way; then lock the store while the trials finish, until the
        tracker has met the lock and retried."""
        try:
            seen.update(_wait_for_view(tmp_path, "live-metrics", _two_epochs_each, 240))
            with _exclusive_lock(tmp_path / "mlflow.db"):
                gate.touch()
                seen["locked_and_retried"] = locked.event.wait(120)
        finally:
            gate.touch()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = train_and_register(config, home=tmp_path, echo=False)
    finally:
        gate.touch()
        watcher.join(180)
        logging.getLogger("raymlops.train.tracking").removeHandler(locked)

    # Mid-search: both trials (running at once) had a run under the parent, RUNNING, with
    # epochs 1 and 2 — and could not have gone further, the gate being shut.
    assert seen.get("trials") and _two_epochs_each(seen), seen
    assert {t["status"] for t in seen["trials"].values()} == {"RUNNING"}
    parent = seen["parent"]
    assert parent.info.status == "RUNNING"
    assert parent.data.tags["raymlops.search.state"] == "running"
    assert parent.data.tags["raymlops.search.trials_running"] == "2"
    assert parent.data.tags["raymlops.search.trials_total"] == "2"
    assert parent.data.tags["mlflow.user"] == USER
    assert parent.data.tags["raymlops.tune_experiment"] == result.experiment_path
    assert seen["locked_and_retried"], "the tracker never met the locked store"

    # After: the same runs, completed, no duplicate run or epoch, the locked epochs written.
    registry = Registry(home=tmp_path)
    children = _children(registry, result)
    assert {k: c.info.run_id for k, c in children.items()} == {
        k: t["run_id"] for k, t in seen["trials"].items()
    }
    assert parent.info.run_id == result.run_id
    for child in children.values():
        assert child.info.status == "FINISHED"
        assert child.data.tags["raymlops.trial_status"] == "TERMINATED"
        assert child.data.tags["raymlops.trial_outcome"] == "completed"
        assert child.data.tags["mlflow.user"] == USER
        assert "train.learning_rate" in child.data.params
        assert _steps(registry, child) == [1, 2, 3, 4]
    final = registry.client.get_run(result.run_id)
    assert final.info.status == "FINISHED"
    tags = final.data.tags
    assert tags["raymlops.search.state"] == "finished"
    assert (tags["raymlops.search.trials_completed"], tags["raymlops.search.trials_running"]) == (
        "2",
        "0",
    )
    assert tags["raymlops.search.best_trial"] in children
    metric, _ = config.tune.resolved_metric()
    assert final.data.metrics[f"search.best_{metric}"] == pytest.approx(
        result.validation_metrics[metric]
    )


def test_each_trial_run_ends_as_its_trial_did_on_a_tracking_server(
    tmp_path: Path, classification_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One trial at a time, in grid order: a good one, one ASHA stops at its first rung (far
    # worse than the first), one that cannot start. The store is an MLflow server, which the
    # driver alone talks to: the module's Ray workers were started without its URI.
    config = make_config(
        "live-ends",
        classification_data,
        num_samples=1,
        epochs=3,
        architecture=BY_DROPOUT,
        scheduler="asha",
        grace_period=1,
        reduction_factor=2,
        max_concurrent_trials=1,
        max_failures=0,
        search_space={"model.params.dropout": {"type": "grid", "values": [0.0, 0.5, 0.9]}},
    )
    (tmp_path / "server").mkdir()
    with mlflow_server(tmp_path / "server", str(tmp_path / "artifacts")) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        result = train_and_register(config, home=tmp_path / "home", echo=False)
        assert result.tracking_uri == uri
        assert (result.trials, result.failed_trials) == (3, 1)
        registry = Registry(home=tmp_path / "home")
        children = _children(registry, result).values()
        history = registry.client.get_metric_history(
            next(c for c in children if c.info.status == "FINISHED").info.run_id, "val_loss"
        )
        tags = registry.client.get_run(result.run_id).data.tags
        ends = {
            c.data.params["model.params.dropout"]: (
                c.info.status,
                c.data.tags["raymlops.trial_outcome"],
                _steps(registry, c),
            )
            for c in children
        }
    # Each epoch was written when it was reported (the end-of-search reconciliation writes
    # a whole history with one timestamp).
    assert len({m.timestamp for m in history}) == 3

    by_dropout = {c.data.params["model.params.dropout"]: c for c in children}
    assert ends == {
        "0.0": ("FINISHED", "completed", [1, 2, 3]),
        "0.5": ("KILLED", "stopped", [1]),
        "0.9": ("FAILED", "error", []),
    }
    assert "fails by design" in by_dropout["0.9"].data.tags["raymlops.trial_error"]
    counts = {k: tags[f"raymlops.search.trials_{k}"] for k in ("completed", "stopped", "error")}
    assert counts == {"completed": "1", "stopped": "1", "error": "1"}


def test_a_resumed_search_continues_the_same_runs(
    tmp_path: Path, classification_data: Path, gate: Path
) -> None:
    config = make_config(
        "live-resume", classification_data, num_samples=2, epochs=4, architecture=GATED
    )
    seen: dict[str, Any] = {}

    def interrupt() -> None:
        """Ctrl-C the search once both trials hold after two epochs (no checkpoint yet)."""
        seen.update(_wait_for_view(tmp_path, "live-resume", _two_epochs_each, 240))
        if seen.get("trials") and _two_epochs_each(seen):
            os.kill(os.getpid(), signal.SIGINT)  # Tune's handler: the search stops
        else:
            gate.touch()  # let it finish; the assertions below say what was seen

    watcher = threading.Thread(target=interrupt, daemon=True)
    watcher.start()
    with pytest.raises(TrainingError):
        train_and_register(config, home=tmp_path, echo=False)
    watcher.join(60)
    assert seen.get("trials") and _two_epochs_each(seen), seen

    registry = Registry(home=tmp_path)
    parent_id = seen["parent"].info.run_id
    interrupted = registry.client.get_run(parent_id)
    assert interrupted.info.status == "FAILED"
    assert interrupted.data.tags["raymlops.search.state"] == "interrupted"
    experiment = interrupted.info.experiment_id
    for run in registry.trial_runs(parent_id, experiment).values():
        assert (run.info.status, run.data.tags["raymlops.trial_status"]) == (
            "KILLED",
            "INTERRUPTED",
        )

    gate.touch()
    result = train_and_register(config, home=tmp_path, echo=False, resume=True)

    assert result.run_id == parent_id  # the interrupted search's parent run, continued
    children = _children(registry, result)
    assert {k: c.info.run_id for k, c in children.items()} == {
        k: t["run_id"] for k, t in seen["trials"].items()
    }
    for child in children.values():
        assert child.info.status == "FINISHED"
        assert _steps(registry, child) == [1, 2, 3, 4]  # epochs 1-2 again: not logged twice
    assert registry.client.get_run(parent_id).info.status == "FINISHED"
    parents = [
        r
        for r in registry.client.search_runs([experiment])
        if "mlflow.parentRunId" not in r.data.tags
    ]
    assert [r.info.run_id for r in parents] == [parent_id]
