"""Live tracking of a search without Ray: how a trial's end is named, the parent run's view
of the search, the retry on a locked store, the tracker as Tune pickles it, and the
end-of-search `log_trials` completing the runs live tracking made (a real SQLite store)."""

from __future__ import annotations

import pickle
import sqlite3
import threading
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from raymlops.core.config import PipelineConfig
from raymlops.registry.store import Registry, TrialRecord, retry_when_locked
from raymlops.train.tracking import (
    LiveTracking,
    TrialTracker,
    _pause,
    _Writer,
    search_state,
    trial_metrics,
    trial_outcome,
)


def test_a_trial_outcome_says_why_it_ended() -> None:
    assert trial_outcome({"epoch": 10.0, "early_stopped": 0.0}, 10, errored=False) == "completed"
    assert trial_outcome({"epoch": 4.0, "early_stopped": 1.0}, 10, errored=False) == (
        "early_stopped"
    )
    assert trial_outcome({"epoch": 2.0, "early_stopped": 0.0}, 10, errored=False) == "stopped"
    assert trial_outcome({"epoch": 10.0}, 10, errored=True) == "error"
    assert trial_outcome(None, 10, errored=False) == "stopped"  # never reported


def test_trial_records_map_outcomes_to_mlflow_statuses() -> None:
    def status(ray_status: str, outcome: str | None) -> str:
        return TrialRecord("t", {}, [], ray_status, None, outcome).run_status

    assert status("TERMINATED", "completed") == "FINISHED"
    assert status("TERMINATED", "early_stopped") == "FINISHED"
    assert status("TERMINATED", "stopped") == "KILLED"
    assert status("ERROR", "error") == "FAILED"
    assert status("ERROR", None) == "FAILED"
    assert status("TERMINATED", None) == "FINISHED"  # a record made before outcomes


def test_a_report_keeps_metrics_not_tune_bookkeeping() -> None:
    result = {
        "epoch": 3.0,
        "val_loss": 0.5,
        "train_loss": 0.4,
        "best_val_loss": 0.45,
        "val_auc": float("nan"),
        "time_this_iter_s": 0.1,
        "trial_id": "a",
        "node_id": "n",
    }
    assert trial_metrics(result) == {"val_loss": 0.5, "train_loss": 0.4, "best_val_loss": 0.45}


def _trial(trial_id: str, status: str, **last: float) -> Any:
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=last)


def test_search_state_counts_trials_by_state_and_keeps_the_best() -> None:
    trials = [
        _trial("a", "TERMINATED", epoch=5, best_val_loss=0.30),
        _trial("b", "TERMINATED", epoch=2, best_val_loss=0.60),  # stopped by ASHA
        _trial("c", "TERMINATED", epoch=3, early_stopped=1.0, best_val_loss=0.40),
        _trial("d", "ERROR", epoch=1, best_val_loss=0.10),
        _trial("e", "RUNNING", epoch=1, best_val_loss=0.20),
        _trial("f", "PENDING"),
    ]
    state = search_state(trials, 5, "val_loss", "min", now={"f": "RUNNING"})
    assert state["counts"] == {
        "pending": 0,
        "running": 2,
        "completed": 1,
        "early_stopped": 1,
        "stopped": 1,
        "error": 1,
    }
    assert (state["best"], state["best_trial"]) == (0.10, "d")
    best_max = search_state(trials, 5, "val_loss", "max")
    assert (best_max["best"], best_max["best_trial"]) == (0.60, "b")
    assert best_max["counts"]["pending"] == 1


def test_a_locked_store_is_retried_and_other_errors_are_not() -> None:
    waits: list[float] = []
    calls = {"n": 0}

    def locked_twice() -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise sqlite3.OperationalError("database is locked")
        return "written"

    assert retry_when_locked(locked_twice, wait_s=0.5, sleep=waits.append) == "written"
    assert waits == [0.5, 1.0]

    def broken() -> None:
        calls["n"] += 1
        raise ValueError("no such run")

    calls["n"] = 0
    with pytest.raises(ValueError, match="no such run"):
        retry_when_locked(broken, sleep=waits.append)
    assert calls["n"] == 1

    def always_locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    waits.clear()
    with pytest.raises(sqlite3.OperationalError):
        retry_when_locked(always_locked, attempts=3, sleep=waits.append)
    assert waits == [0.5, 1.0]


def test_a_writer_past_its_timeout_drops_what_is_queued_and_applies_none_later() -> None:
    """The end of a search stops waiting for a stuck store: the writes still queued are
    cancelled and counted, a locked write stops retrying, and nothing queued lands after
    `close` returns (it would race with the end-of-search reconciliation)."""
    release, started = threading.Event(), threading.Event()
    applied: list[str] = []
    writer = _Writer()

    def stuck() -> None:  # a request the store takes long to answer
        started.set()
        release.wait(30)
        applied.append("stuck")

    writer.submit(stuck)
    for name in ("a", "b", "c"):
        writer.submit(partial(applied.append, name))
    assert started.wait(30)
    dropped, in_progress = writer.close(timeout_s=0.05, grace_s=0.05)
    assert (dropped, in_progress) == (3, True)  # a, b, c; `stuck` may still land
    release.set()
    writer._thread.join(30)  # type: ignore[union-attr]
    assert applied == ["stuck"] and writer.dropped == 3

    def always_locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    locked = _Writer()  # a write retrying a locked store gives up when cancelled
    locked.submit(partial(retry_when_locked, always_locked, wait_s=3600.0, sleep=_pause))
    locked.submit(partial(applied.append, "late"))
    assert locked.close(timeout_s=0.05, grace_s=30) == (2, False)
    assert locked.failures == 0 and applied == ["stuck"]

    quick = _Writer()
    quick.submit(partial(applied.append, "d"))
    assert quick.close(timeout_s=30) == (0, False) and applied[-1] == "d"


def test_the_tracker_travels_with_its_settings_only() -> None:
    live = LiveTracking("sqlite:////tmp/none.db", "1", "parent")
    tracker = TrialTracker(live, total=4, max_epochs=5, metric="val_loss", mode="min")
    tracker._runs["t1"] = "run-1"  # what a search had recorded before Tune saved it
    restored = pickle.loads(pickle.dumps(tracker))
    assert (restored.live, restored.total, restored.metric) == (live, 4, "val_loss")
    assert restored._runs == {}  # looked up again in MLflow, not trusted from the pickle


def test_a_submitted_job_records_the_submitter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.test_launcher import _offline_launcher

    monkeypatch.setenv("RAYMLOPS_USER", "ada")
    env = _offline_launcher("http://127.0.0.1:8265", tmp_path).runtime_env(None, "x")["env_vars"]
    assert env["RAYMLOPS_USER"] == "ada"


def _config() -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "live",
            "data": {"path": "unused.parquet", "label": "label"},
            "registry": {"model_name": "live", "experiment": "live"},
        }
    )


@pytest.mark.long  # a fresh MLflow SQLite store costs seconds: kept out of the default run
def test_log_trials_completes_the_live_runs_instead_of_duplicating_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYMLOPS_USER", "ada")
    registry = Registry(home=tmp_path)
    config = _config()
    exp = registry.experiment_id("live")
    parent = registry.start_run("search", experiment_id=exp)
    # What live tracking left: trial a's run with epochs 1-2, trial b's not made at all.
    run_a = registry.create_trial_run(exp, parent, "a", {"train.learning_rate": 0.01})
    registry.log(run_a, [("val_loss", 0.9, 1), ("val_loss", 0.8, 2)])
    history = [{"epoch": float(e), "val_loss": 1.0 - e / 10} for e in (1, 2, 3)]
    trials = [
        TrialRecord("a", {"train.learning_rate": 0.01}, history, "TERMINATED", None, "stopped"),
        TrialRecord("b", {"train.learning_rate": 0.02}, history, "ERROR", "boom", "error"),
    ]

    registry.log_trials(parent, config, trials)
    registry.log_trials(parent, config, trials)  # a second pass changes nothing

    runs = registry.trial_runs(parent, exp)
    assert sorted(runs) == ["a", "b"]
    assert len(registry.child_runs(registry.get_run(parent))) == 2
    a, b = runs["a"], runs["b"]
    assert a.info.run_id == run_a
    steps = sorted(m.step for m in registry.client.get_metric_history(run_a, "val_loss"))
    assert steps == [1, 2, 3]
    assert (a.info.status, a.data.tags["raymlops.trial_outcome"]) == ("KILLED", "stopped")
    assert a.data.params == {"train.learning_rate": "0.01"}
    assert (b.info.status, b.data.tags["raymlops.trial_error"]) == ("FAILED", "boom")
    assert {a.data.tags["mlflow.user"], b.data.tags["mlflow.user"]} == {"ada"}


@pytest.mark.long  # a fresh MLflow SQLite store costs seconds
def test_a_trial_run_whose_params_fail_is_not_left_running(tmp_path: Path) -> None:
    registry = Registry(home=tmp_path)
    exp = registry.experiment_id("live")
    parent = registry.start_run("search", experiment_id=exp)
    with pytest.raises(Exception, match=r"(?i)param"):  # MLflow refuses a key this long
        registry.create_trial_run(exp, parent, "a", {"train." + "x" * 300: 1})
    (half,) = registry.trial_runs(parent, exp).values()
    assert half.info.status == "FAILED"
    # What a reopen does next: a second run, the only RUNNING one of the trial.
    run_id = registry.create_trial_run(exp, parent, "a", {"train.hidden": "x"})
    assert registry.get_run(run_id).info.status == "RUNNING"
