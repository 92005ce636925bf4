"""Autoscaling under a real load step (HAProxy ingress, real HTTP, Serve's own autoscaler).

One client runs throughout; 31 more join (32 concurrent), then leave. Serve must raise its
target replica count after `upscale_delay_s` and start replicas, `serve_status` must show
them and the replicas' ongoing requests, and once the step ends the target must fall back to
1 after `downscale_delay_s` and the extra replicas stop. Every request in both transitions
is answered 200 (the Client's retries allowed; first attempts that failed are counted).

Timings are bounded below by the configured delays (Serve times them itself and cannot act
sooner) and above by the delays plus what Serve needs to see the load change, with
raymlops's defaults for it (`serve.autoscaling.metrics_interval_s`, 1 s, and
`look_back_period_s`, 5 s): a replica records its ongoing requests every
min(look_back_period_s / 5, metrics_interval_s) and pushes them to the controller every
metrics_interval_s; the controller averages them over look_back_period_s (which holds a
scale-down back after the load ends) and decides every 0.1 s. ALLOWANCE_S covers the rest on
a loaded 2-CPU machine: polling `serve_status`, a busy replica's or controller's event loop.
Measured figures are printed.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import CliRunner

from raymlops.cli.main import cli
from raymlops.serve.api import ServeStatus, ServingError, serve_status
from tests.integration.test_serving import MODEL, Served, serving

pytestmark = [pytest.mark.integration, pytest.mark.long]

MIN, MAX = 1, 3
TARGET_ONGOING = 2.0
UPSCALE_DELAY_S = 3.0
DOWNSCALE_DELAY_S = 10.0
CLIENTS = 32
#: Slack beyond the metric intervals and look-back (module docstring) for a busy machine.
ALLOWANCE_S = 4.0


def _intervals_s() -> tuple[float, float]:
    """How late a change of load can reach Serve's controller (a replica's record interval
    plus its push interval), and the look-back window the controller averages over; with
    raymlops's defaults, which the app below keeps, and Ray's record-interval factor (read
    from Ray rather than restated)."""
    from ray.serve._private.constants import RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR

    from raymlops.core.config import ServeAutoscalingConfig

    defaults = ServeAutoscalingConfig()
    push_s, look_back_s = defaults.metrics_interval_s, defaults.look_back_period_s
    record_s = min(look_back_s * RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR, push_s)
    return record_s + push_s, look_back_s


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The serving module's model on a Ray of this module's own, autoscaled 1 → 3 replicas
    of 0.25 CPU (0.75 of the 2 CPUs at most)."""
    autoscaling = {
        "min_replicas": MIN,
        "initial_replicas": MIN,
        "max_replicas": MAX,
        "target_ongoing_requests": TARGET_ONGOING,
        "upscale_delay_s": UPSCALE_DELAY_S,
        "downscale_delay_s": DOWNSCALE_DELAY_S,
    }
    with serving(
        tmp_path_factory, "autoscaling-home", cpus_per_replica=0.25, autoscaling=autoscaling
    ) as served:
        yield served


@dataclass
class Load:
    """`clients` threads, each with a Client of its own, sending predictions back to back
    until stopped. Counts answers on the first attempt, answers after retries, and
    requests that failed even so (with their errors)."""

    app: Served
    clients: int
    outcome: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for i in range(self.clients):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> float:
        """Stop the clients (each finishes its request in flight); when they were told to."""
        told = time.monotonic()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in self._threads), "a load client did not stop"
        return told

    def _run(self, i: int) -> None:
        client = self.app.client(max_retries=8)
        n = 0
        while not self._stop.is_set():
            before = client.retries
            try:
                result = client.predict(self.app.records(4, (i * 17 + n) % 500))
                kind = "2xx" if client.retries == before else "retried"
                assert result.version == 1
            except (ServingError, OSError, AssertionError) as exc:
                kind = "failed"
                with self._lock:
                    self.errors.append(repr(exc))
            with self._lock:
                self.outcome[kind] += 1
            n += 1
        client.close()


@dataclass
class Watch:
    """`serve_status` polled: the Ingress deployment's figures, each with when it was read."""

    app: Served
    seen: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    last: ServeStatus | None = None

    def until(self, condition: Callable[[dict[str, Any]], bool], timeout_s: float) -> float:
        """Poll until `condition` holds for the Ingress figures; the monotonic time it did.
        Fails after `timeout_s`, naming the last figures seen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition(self.ingress()):
                return self.seen[-1][0]
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout_s} s; last seen {self.seen[-3:]}")

    def ingress(self) -> dict[str, Any]:
        self.last = serve_status(self.app.config, home=self.app.home)
        ingress = dict(self.last.deployments["Ingress"])
        self.seen.append((time.monotonic(), ingress))
        return ingress


def _shown_while_loaded(app: Served, watch: Watch) -> dict[str, Any]:
    """Once more than one replica runs and requests are ongoing at them, what `serve_status`,
    its summary and `raymlops serve status --json` show (while the load still runs)."""
    busy = watch.until(lambda d: d["running"] > MIN and (d["ongoing_total"] or 0) > 0, 60)
    figures = dict(watch.seen[-1][1], seen_at=busy)
    assert watch.last is not None
    line = next(x for x in watch.last.summary().splitlines() if x.strip().startswith("Ingress"))
    assert f"target {figures['target']} (autoscaling {MIN}-{MAX} at 2 ongoing/replica)" in line
    assert f"; ongoing {figures['ongoing_total']} (" in line, line
    home = ["--app", MODEL, "--home", str(app.home)]
    result = CliRunner().invoke(cli, ["serve", "status", *home, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)["deployments"]["Ingress"]
    assert shown["target"] > MIN and shown["running"] >= 1, shown  # still under load
    assert sum(n or 0 for n in shown["ongoing"].values()) == shown["ongoing_total"], shown
    return figures


def test_load_step_scales_up_and_back_down(app: Served) -> None:
    lag_s, look_back_s = _intervals_s()
    # Once the step's figures have left the window (look_back_s + lag_s after it ended),
    # one downscale delay begun after the step takes the target straight to MIN.
    assert look_back_s + lag_s <= DOWNSCALE_DELAY_S
    watch = Watch(app)
    steady = watch.ingress()
    assert (steady["running"], steady["target"], steady["replicas"]) == (MIN, MIN, {"RUNNING": 1})
    bounds = {"min_replicas": MIN, "max_replicas": MAX, "target_ongoing_requests": TARGET_ONGOING}
    assert steady["autoscaling"] == bounds, steady

    base = Load(app, 1).start()
    burst = Load(app, CLIENTS - 1)
    try:
        # One client alone never asks for more than min_replicas (≤ 1 ongoing < target).
        time.sleep(UPSCALE_DELAY_S + 2)
        assert watch.ingress()["target"] == MIN, watch.seen[-1]

        step = time.monotonic()
        burst.start()
        scaled = watch.until(lambda d: d["target"] > MIN, UPSCALE_DELAY_S + lag_s + 60)
        more = watch.until(lambda d: d["running"] > MIN, 120)
        busy = _shown_while_loaded(app, watch)
        watch.until(lambda d: d["running"] == d["target"], 120)  # the step's replicas all up
        ended = burst.stop()

        back = watch.until(lambda d: d["target"] == MIN, look_back_s + lag_s + 120)
        gone = watch.until(lambda d: d["running"] == MIN and sum(d["replicas"].values()) == 1, 120)
    finally:
        burst.stop()
        base.stop()

    timings = {
        "target_up_s": round(scaled - step, 1),
        "replicas_up_s": round(more - step, 1),
        "target_down_s": round(back - ended, 1),
        "replicas_down_s": round(gone - ended, 1),
        "peak_target": max(d["target"] for _, d in watch.seen),
        "peak_ongoing_total": max(d["ongoing_total"] or 0 for _, d in watch.seen),
        "median_ongoing_total_loaded": statistics.median(
            d["ongoing_total"] or 0 for t, d in watch.seen if step <= t <= ended
        ),
    }
    outcome = base.outcome + burst.outcome
    print(f"\nautoscaling {timings}; requests {dict(outcome)}; while loaded {busy}")

    # Every request in both transitions answered 200 (retries allowed); first attempts that
    # failed and were retried are counted in `outcome["retried"]` (printed above).
    assert outcome["failed"] == 0, (outcome, base.errors[:3] + burst.errors[:3])
    assert outcome["2xx"] + outcome["retried"] > 1000, outcome
    # Up: no sooner than upscale_delay_s after the step (Serve times its decisions), no
    # later than that plus the metrics' lag and the allowance.
    assert UPSCALE_DELAY_S <= scaled - step <= UPSCALE_DELAY_S + lag_s + ALLOWANCE_S, timings
    # Down: no sooner than downscale_delay_s after the step ended (the step kept more
    # requests ongoing than MAX - 1 replicas aim for, so no scale-down was wanted before
    # it ended); no later than the lag and the look-back window emptying of the step's
    # figures, then one delay (asserted above to outlast both, so 3 → 1 in one decision).
    assert timings["median_ongoing_total_loaded"] > TARGET_ONGOING * (MAX - 1), timings
    slowest_down = DOWNSCALE_DELAY_S + look_back_s + lag_s + ALLOWANCE_S
    assert DOWNSCALE_DELAY_S <= back - ended <= slowest_down, timings
    assert busy["replicas"].get("RUNNING", 0) > MIN and len(busy["ongoing"]) == busy["running"]
    assert MIN < busy["target"] <= MAX, busy
