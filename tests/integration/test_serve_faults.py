"""Serve's control plane failing under load (200 requests in flight, HAProxy ingress): the
Serve controller killed, and raymlops' coordinator killed in the middle of a canary. Traffic
goes HAProxy → replicas, so neither may cost a request; the controller comes back, and the
coordinator's replacement recovers the routing table and the canary from its state file.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from raymlops.serve.api import ServingError, serve_canary, serve_rollback, serve_status
from tests.integration.test_serving import MODEL, Served, _wait_for, serving

pytestmark = [pytest.mark.integration, pytest.mark.long]

IN_FLIGHT = 200


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The serving module's model and config on a Ray of this module's own. 200 requests in
    flight on 2 CPUs make p95 latency noise: the canary here rolls back on errors only
    (what is under test is its state surviving a fault)."""
    canary = {"min_requests": 40, "error_rate_margin": 0.05, "p95_latency_margin_ms": 1e6}
    with serving(tmp_path_factory, "faults-home", cpus_per_replica=0.25, canary=canary) as app:
        yield app


def _under_load(
    app: Served, fault: Callable[[], None], requests: int = 1500
) -> tuple[Counter[str], Counter[int]]:
    """Send `requests` predictions with IN_FLIGHT at once; run `fault` once 150 are
    answered. Counts first attempts that failed (before the Client's retries) and the
    versions that answered in the end; a request still failing after retries raises."""
    client = app.client(max_retries=8)
    first_try = app.client(max_retries=0)
    outcome: Counter[str] = Counter()
    versions: Counter[int] = Counter()
    lock = threading.Lock()

    def one(i: int) -> None:
        rows = app.records(1, i % 500)
        try:
            result = first_try.predict(rows)
            kind = "2xx"
        except (ServingError, OSError):
            result = client.predict(rows)  # the retries a client is given
            kind = "retried"
        with lock:
            outcome[kind] += 1
            versions[result.version] += 1

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        futures = [pool.submit(one, i) for i in range(requests)]
        _wait_for(lambda: sum(outcome.values()) >= 150, 120, "150 answers before the fault")
        fault()
        for future in futures:
            future.result(timeout=300)
    return outcome, versions


def _actor(prefix: str) -> Any:
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(prefix)
    ]
    assert len(names) == 1, names
    return ray.get_actor(names[0], namespace="serve")


def test_serve_controller_killed_under_load(app: Served) -> None:
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    def kill_controller() -> None:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        ray.kill(controller, no_restart=False)  # Ray restarts it, as after a crash

    outcome, versions = _under_load(app, kill_controller)
    total = sum(outcome.values())
    assert total == 1500 and versions == Counter({1: 1500})  # all 2xx with retries
    assert outcome["2xx"] / total >= 0.99, outcome
    # The controller is back and knows the application.
    _wait_for(
        lambda: str(serve.status().applications[MODEL].status.value) == "RUNNING",
        120,
        "the restarted controller reporting the application RUNNING",
    )
    assert serve_status(app.config, home=app.home).champion == 1


def test_coordinator_killed_during_a_canary(app: Served) -> None:
    import ray

    status = serve_canary(app.config, 2, percent=30, home=app.home, reason="fault test")
    assert (status.challenger, status.percent) == (2, 30.0)
    client = app.client()
    _wait_for(
        lambda: 2 in {client.predict(app.records(1)).version for _ in range(20)},
        60,
        "replicas loading v2",
    )
    killed = _actor(f"SERVE_REPLICA::{MODEL}#Coordinator#")
    try:

        def kill_coordinator() -> None:
            ray.kill(killed, no_restart=True)  # Serve starts a replacement replica

        outcome, versions = _under_load(app, kill_coordinator)
        assert sum(outcome.values()) == 1500 and outcome["retried"] == 0, outcome
        assert set(versions) == {1, 2}, versions  # the split went on during the fault

        seen: list[Any] = []

        def recovered() -> bool:
            try:
                now = serve_status(app.config, home=app.home)
            except Exception as exc:
                seen.append(repr(exc))
                return False
            seen.append((now.champion, now.challenger, now.percent))
            return (now.champion, now.challenger, now.percent) == (1, 2, 30.0)

        try:
            _wait_for(recovered, 120, "the new coordinator holding the canary (v2 at 30 %)")
        except AssertionError as exc:
            history = [(e.action, e.to_version) for e in app.registry.alias_history(MODEL)]
            raise AssertionError(f"{exc}; seen {seen[-3:]}; history {history[-4:]}") from None
        replacement = _actor(f"SERVE_REPLICA::{MODEL}#Coordinator#")
        assert replacement._actor_id != killed._actor_id
        # Routing still splits after the recovery.
        late = Counter(client.predict(app.records(1, i)).version for i in range(200))
        assert late[2] > 20 and late[1] > 80, late
        # The recovered canary is the one `serve rollback` ends (no automatic rollback
        # happened meanwhile: the history's last entry is still the canary's start).
        actions = [e.action for e in app.registry.alias_history(MODEL)]
        assert actions[-1] == "canary-start", actions[-5:]
        ended = serve_rollback(app.config, home=app.home, reason="fault test done")
        assert (ended.champion, ended.challenger) == (1, None)
    finally:
        if serve_status(app.config, home=app.home).challenger is not None:
            serve_rollback(app.config, home=app.home, reason="fault test cleanup")
