"""The alias compare-and-set against a real `mlflow server` (what a cluster's nodes share):
writers in separate processes, with no file in common, keep one champion and a complete,
ordered history; a lock left by a writer that died is taken over once its lease is out."""

from __future__ import annotations

import itertools
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raymlops.registry.lock import LOCK_PREFIX
from raymlops.registry.store import CHAMPION, Registry
from tests.integration.shared_nothing import mlflow_server

pytestmark = [pytest.mark.integration]

MOVERS, MOVES = 4, 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An MLflow tracking server of its own (SQLite behind it: the lock under test is the
    server's, whatever its database)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(folder, str(folder / "artifacts")) as uri:
        yield uri


def _versions(uri: str, home: Path, count: int) -> Registry:
    registry = Registry(uri, home)
    client = registry.client
    client.create_registered_model("m")
    for _ in range(count):
        client.create_model_version("m", *_source(registry))
    return registry


def _source(registry: Registry) -> tuple[str, str]:
    """A model source the server accepts: a run's stored artifact folder, and the run."""
    client = registry.client
    run = client.create_run(registry.experiment_id("runs"))
    client.log_text(run.info.run_id, "weights", "model/weights.txt")
    return f"{run.info.artifact_uri}/model", run.info.run_id


def _mover(uri: str, home: str, version: int) -> None:
    # Its own process, registry client and home: nothing in common but the server.
    registry = Registry(uri, home)
    for _ in range(MOVES):
        registry.set_alias("m", CHAMPION, version, action="promote")


def test_writers_in_separate_processes_lose_no_update(server: str, tmp_path: Path) -> None:
    registry = _versions(server, tmp_path / "laptop", MOVERS)
    context = multiprocessing.get_context("spawn")
    movers = [
        context.Process(target=_mover, args=(server, str(tmp_path / f"node-{v}"), v))
        for v in range(1, MOVERS + 1)
    ]
    for process in movers:
        process.start()
    for process in movers:
        process.join(timeout=300)
    assert [p.exitcode for p in movers] == [0] * MOVERS
    history = registry.alias_history("m")
    assert [e.sequence for e in history] == list(range(1, MOVERS * MOVES + 1))
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version  # no move lost or overtaken
    assert registry.alias_target("m", CHAMPION) == history[-1].to_version
    # No home had a lock file: the lock lived in MLflow, and is gone.
    assert not list(tmp_path.rglob("*.lock"))
    assert [m["name"] for m in registry.list_models()] == ["m"]
    names = [m.name for m in registry.client.search_registered_models()]
    assert not [n for n in names if n.startswith(LOCK_PREFIX)]


def test_a_lock_left_by_a_dead_writer_expires(server: str, tmp_path: Path) -> None:
    registry = Registry(server, tmp_path)
    client = registry.client
    client.create_registered_model("dead")
    client.create_model_version("dead", *_source(registry))
    # What a writer SIGKILLed inside its move leaves: its lock, its lease run out.
    client.create_registered_model(
        LOCK_PREFIX + "dead",
        tags={"raymlops.lock.holder": "gone", "raymlops.lock.expires": repr(time.time() - 1)},
    )
    event = registry.set_alias("dead", CHAMPION, 1, action="promote")
    assert event.sequence == 1 and registry.alias_target("dead", CHAMPION) == 1
    names = [m.name for m in client.search_registered_models()]
    assert LOCK_PREFIX + "dead" not in names
