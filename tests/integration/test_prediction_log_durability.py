"""The prediction log when a serving replica ends, on a real local Ray with real Serve and
its HAProxy ingress, real HTTP, and the registry of tests/integration/test_serving.py (its
`served` fixture: this module gets its own Ray and application).

A replica that Serve stops (autoscaler scale-down, redeploy, `serve stop`) or that gets
SIGTERM writes every row it answered: with a 60 s flush interval nothing reaches the log
but through those, and every 200 answer must be in it. A replica killed with
SIGKILL loses at most the rows answered in its last flush window, and a replica on the same
node counts exactly those in the metric raymlops_prediction_log_lost_rows.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from raymlops.core.config import PipelineConfig
from raymlops.serve.api import (
    Client,
    prediction_log_root,
    read_prediction_log,
    serve_model,
    serve_stop,
)
from tests.integration.test_serving import MODEL, TOKEN, Served, _wait_for
from tests.integration.test_serving import served as served  # the module's Ray + registry

# A minute or more with its own application: the `long` pass.
pytestmark = [pytest.mark.integration, pytest.mark.long]

LOST_METRIC = "ray_raymlops_prediction_log_lost_rows_total"
_CLIENTS = 4  # each keeps one 1-row request in flight


class _Traffic:
    """Clients sending 1-row requests with ids of their own until stopped; keeps when each
    200 answer arrived (time.monotonic) by request id."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.answered: dict[str, float] = {}
        self.failures = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(_CLIENTS)
        ]

    def _run(self, i: int) -> None:
        client = Client(self.served.url, token=TOKEN, backoff_s=0.02, max_retries=8)
        n = 0
        while not self._stop.is_set():
            request_id = f"{self.prefix}-{i}-{n}"
            n += 1
            try:
                client.predict(self.served.records(1, (i * 97 + n) % 500), request_id=request_id)
            except Exception:  # refused once the application is gone; only 200s count
                with self._lock:
                    self.failures += 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.answered[request_id] = time.monotonic()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.answered)

    def more(self, n: int, what: str, timeout_s: float = 60) -> None:
        """Wait until `n` more requests were answered."""
        target = self.count + n
        _wait_for(lambda: self.count >= target, timeout_s, f"{n} answers {what}")

    def logged(self) -> set[str]:
        """This traffic's request ids in the prediction log."""
        root = prediction_log_root(self.served.config, self.served.home)
        table = read_prediction_log(root)
        if "request_id" not in table.column_names:
            return set()
        return {r for r in table.column("request_id").to_pylist() if r.startswith(self.prefix)}


@contextmanager
def _traffic(served: Served) -> Iterator[_Traffic]:
    traffic = _Traffic(served)
    for thread in traffic._threads:
        thread.start()
    try:
        yield traffic
    finally:
        traffic._stop.set()
        for thread in traffic._threads:
            thread.join(60)


def _deploy(
    served: Served, flush_interval_s: float, *, fresh: bool = True, **autoscaling: Any
) -> PipelineConfig:
    """Deploy the module's application with this flush interval and replica counts: a new
    one (`fresh`: whatever runs is stopped first), else a redeploy of the running one."""
    config = served.config.model_copy(deep=True)
    serve_cfg = config.serve
    config.serve = serve_cfg.model_copy(
        update={
            "prediction_log": serve_cfg.prediction_log.model_copy(
                update={"flush_interval_s": flush_interval_s}
            ),
            "autoscaling": serve_cfg.autoscaling.model_copy(update=autoscaling),
        }
    )
    if fresh:
        serve_stop(config, home=served.home)
    serve_model(config, home=served.home, echo=False)
    return config


def _replica_names() -> list[str]:
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{MODEL}#Ingress#")
    )


def _running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(MODEL)
    if app is None or "Ingress" not in app.deployments:
        return 0
    states = app.deployments["Ingress"].replica_states
    running = sum(n for s, n in states.items() if str(getattr(s, "value", s)) == "RUNNING")
    others = sum(n for s, n in states.items() if str(getattr(s, "value", s)) != "RUNNING")
    return running if others == 0 else -1  # -1: replicas are still starting or stopping


def _pid(name: str) -> int:
    import ray

    actor = ray.get_actor(name, namespace="serve")
    return int(ray.get(actor.__ray_call__.remote(lambda _: os.getpid()), timeout=30))


def _wait_for_one_replica(gone: list[str], what: str) -> None:
    """Until one replica runs, and none of `gone` is left."""
    _wait_for(lambda: _running_replicas() == 1 and not set(gone) & set(_replica_names()), 90, what)


def _ledgers(served: Served) -> list[Path]:
    return sorted((served.home / "serve" / "log-ledgers").glob("*/*.ledger"))


def _lost_metric() -> float:
    """raymlops_prediction_log_lost_rows for MODEL, summed over the reporting workers, from
    this node's Prometheus export."""
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(LOST_METRIC + "{") and f'model="{MODEL}"' in line
    )


# --------------------------------------------------------------------------- shutdowns


def test_stopped_replicas_write_every_answered_row(served: Served) -> None:
    """Scale-down by the autoscaler, a redeploy, then `serve stop`, each under traffic. The
    flush interval (60 s) never comes round: rows reach the log only when a replica stops."""
    config = _deploy(
        served, 60.0, min_replicas=1, initial_replicas=2, max_replicas=2, downscale_delay_s=10.0
    )
    _wait_for(lambda: _running_replicas() == 2, 60, "two replicas")
    with _traffic(served) as traffic:
        traffic.more(100, "before the scale-down")
        _wait_for_one_replica([], "the autoscaler removing a replica")
        first = traffic.logged()
        assert first and first <= set(traffic.answered)  # the stopped replica wrote its rows
        traffic.more(100, "after the scale-down")

        old = _replica_names()
        _deploy(served, 60.0, fresh=False, min_replicas=1, initial_replicas=1, max_replicas=1)
        _wait_for_one_replica(old, "the redeploy replacing the replica")
        second = traffic.logged()
        assert len(second) > len(first)  # the replaced replica wrote its rows
        traffic.more(100, "after the redeploy")

        assert serve_stop(config, home=served.home) == [f"application {MODEL}"]
    answered = set(traffic.answered)
    missing = answered - traffic.logged()
    assert not missing, f"{len(missing)} of {len(answered)} answered rows are not in the log"
    assert _ledgers(served) == []  # every replica closed its writer: nothing for a count


def test_sigterm_to_a_replica_writes_what_it_holds(served: Served) -> None:
    """SIGTERM to a replica process: the hook chained to Ray's SIGTERM handler writes the
    buffer at once. Ray 2.60 keeps such a replica answering until Serve force-kills it (at
    `serve stop` here), and what it answers meanwhile is written before it is answered."""
    config = _deploy(served, 60.0, min_replicas=2, initial_replicas=2, max_replicas=2)
    _wait_for(lambda: _running_replicas() == 2, 60, "two replicas")
    with _traffic(served) as traffic:
        traffic.more(200, "before the SIGTERM")
        assert traffic.logged() == set()  # nothing written yet: the interval is 60 s
        os.kill(_pid(_replica_names()[0]), signal.SIGTERM)
        _wait_for(lambda: bool(traffic.logged()), 30, "the SIGTERMed replica's rows")
        traffic.more(200, "after the SIGTERM")
        serve_stop(config, home=served.home)
    missing = set(traffic.answered) - traffic.logged()
    assert not missing, f"{len(missing)} of {len(traffic.answered)} answered rows not logged"
    assert _ledgers(served) == []


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.long
def test_sigkill_loses_at_most_the_last_flush_window_and_counts_it(served: Served) -> None:
    interval = 1.0
    config = _deploy(served, interval, min_replicas=2, initial_replicas=2, max_replicas=2)
    _wait_for(lambda: _running_replicas() == 2, 60, "two replicas")
    before = _lost_metric()
    victim = _replica_names()[0]
    pid = _pid(victim)
    with _traffic(served) as traffic:
        traffic.more(300, "before the kill")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        _wait_for(
            lambda: _running_replicas() == 2 and victim not in _replica_names(),
            90,
            "a replacement replica",
        )
        traffic.more(100, "after the replacement")
    time.sleep(3 * interval)  # the live replicas' last rows reach the log
    lost = {r: t for r, t in traffic.answered.items() if r not in traffic.logged()}
    assert lost, "the kill found nothing buffered: this test proved nothing"
    # Only rows answered in the victim's last flush window (+ one write) can be missing.
    early = {r: round(killed_at - t, 2) for r, t in lost.items() if t < killed_at - 2 * interval}
    assert not early, f"rows answered long before the kill are missing: {early}"

    # The replica counting the dead one's ledger reports what it lost: every answered row
    # missing, plus at most the requests in flight at the kill (logged, then never answered:
    # their clients retried elsewhere).
    _wait_for(lambda: _lost_metric() - before >= len(lost), 90, f"{len(lost)} lost rows counted")
    counted = _lost_metric() - before
    assert len(lost) <= counted <= len(lost) + _CLIENTS, (counted, len(lost))
    # The dead replica's ledger is gone; the survivor's stays (the replacement has one only
    # once its writer has started, which traffic may not have caused yet).
    left = _ledgers(served)
    assert not [p for p in left if p.name.startswith(f"{pid}-")], left
    assert 1 <= len(left) <= 2, left
    serve_stop(config, home=served.home)
