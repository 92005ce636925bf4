"""Alias history on a real MLflow SQLite store: every move recorded, compare-and-set refuses
a stale move, and concurrent movers leave a gap-free, ordered history."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from raymlops.core.errors import RegistryError
from raymlops.registry.store import CHAMPION, Registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(home=tmp_path)
    client = reg.client
    client.create_registered_model("m")
    run = client.create_run(reg.experiment_id("runs"))
    for _ in range(3):
        client.create_model_version("m", (tmp_path / "x").as_uri(), run_id=run.info.run_id)
    return reg


def test_moves_and_events_are_recorded_in_order(registry: Registry) -> None:
    registry.set_alias("m", CHAMPION, 1, action="register", reason="first")
    registry.set_alias("m", CHAMPION, 2, action="promote", reason="better", by="alice")
    registry.record_event("m", CHAMPION, "auto-rollback", from_version=3, to_version=2)
    registry.set_alias("m", CHAMPION, None, action="clear", by="bob")

    history = registry.alias_history("m")
    assert [(e.action, e.from_version, e.to_version) for e in history] == [
        ("register", None, 1),
        ("promote", 1, 2),
        ("auto-rollback", 3, 2),
        ("clear", 2, None),
    ]
    assert [e.sequence for e in history] == [1, 2, 3, 4]
    assert history[1].by == "alice" and history[1].reason == "better"
    assert registry.alias_target("m", CHAMPION) is None
    assert registry.alias_history("other") == []


def test_compare_and_set_refuses_a_stale_move(registry: Registry) -> None:
    registry.set_alias("m", CHAMPION, 1, action="register")
    registry.set_alias("m", CHAMPION, 2, action="promote", expected_from=1)
    with pytest.raises(RegistryError, match="moved to v2"):
        registry.set_alias("m", CHAMPION, 3, action="promote", expected_from=1)
    assert registry.alias_target("m", CHAMPION) == 2
    assert len(registry.alias_history("m")) == 2


def test_unknown_version_is_refused_and_not_recorded(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="no version 9"):
        registry.set_alias("m", CHAMPION, 9, action="promote")
    assert registry.alias_history("m") == []


def test_concurrent_moves_leave_a_complete_ordered_history(tmp_path: Path) -> None:
    base = Registry(home=tmp_path)
    client = base.client
    client.create_registered_model("m")
    run = client.create_run(base.experiment_id("runs"))
    for _ in range(2):
        client.create_model_version("m", (tmp_path / "x").as_uri(), run_id=run.info.run_id)
    errors: list[BaseException] = []

    def mover(version: int) -> None:
        reg = Registry(home=tmp_path)  # its own client, as another process would have
        try:
            for _ in range(5):
                reg.set_alias("m", CHAMPION, version, action="promote")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=mover, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    history = base.alias_history("m")
    assert [e.sequence for e in history] == list(range(1, 11))
    # Each event's from_version is the previous event's to_version: no lost update.
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version
    assert base.alias_target("m", CHAMPION) == history[-1].to_version


_KILLED_MOVER = """
import os, signal, sys
from mlflow import MlflowClient
from raymlops.registry.store import CHAMPION, Registry

home, when = sys.argv[1], sys.argv[2]
original = MlflowClient.set_registered_model_alias

def killed(self, *args, **kwargs):
    if when == "after":
        original(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

MlflowClient.set_registered_model_alias = killed
Registry(home=home).set_alias("m", CHAMPION, 2, action="promote", reason="killed")
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_writer_killed_around_the_alias_move_leaves_alias_and_history_agreeing(
    registry: Registry, tmp_path: Path, when: str
) -> None:
    registry.set_alias("m", CHAMPION, 1, action="register")
    died = subprocess.run(
        [sys.executable, "-c", _KILLED_MOVER, str(tmp_path), when],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    moved = when == "after"
    assert registry.alias_target("m", CHAMPION) == (2 if moved else 1)
    history = registry.alias_history("m")
    assert [(e.action, e.to_version) for e in history] == [("register", 1)] + (
        [("promote", 2)] if moved else []
    )
    assert history[-1].to_version == registry.alias_target("m", CHAMPION)
    # The next writer finishes what the killed one left, and the history goes on gap-free.
    registry.set_alias("m", CHAMPION, 3, action="promote")
    history = registry.alias_history("m")
    assert [e.sequence for e in history] == list(range(1, len(history) + 1))
    assert [e.to_version for e in history] == ([1, 2, 3] if moved else [1, 3])
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version
    runs = registry.client.search_runs(
        [registry.client.get_experiment_by_name("raymlops-audit").experiment_id]
    )
    # Nothing is left half-done: every event is finished, the one never carried out aborted.
    assert sorted(r.info.status for r in runs) == ([] if moved else ["FAILED"]) + [
        "FINISHED"
    ] * len(history)
