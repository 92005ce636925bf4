"""The retrain canary on a real endpoint (Ray Serve, HAProxy, the SQLite registry), decided
and ended on every path: too little traffic (inconclusive), worse quality on delayed labels,
another version promoted meanwhile, the coordinator killed, the registry unreachable for the
promotion. After each, the champion answers all traffic, the alias is what it should be and
the history says what happened.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from raymlops.core.config import PipelineConfig
from raymlops.loop.gate_result import GateResult
from raymlops.loop.governance import PromotionError, promote
from raymlops.loop.retrain import ServingCanary, _canary_step, _promote_candidate
from raymlops.registry.store import CHAMPION, Registry
from raymlops.serve.api import (
    prediction_log_root,
    read_prediction_log,
    serve_canary,
    serve_canary_quality,
    serve_rollback,
    serve_status,
)
from tests.integration.test_serve_faults import _actor
from tests.integration.test_serving import (
    MODEL,
    Served,
    _answering_versions,
    _Load,
    _wait_for,
    serving,
)

pytestmark = [pytest.mark.integration, pytest.mark.long]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The serving module's model: v1 champion, v2 the same weights (a healthy candidate),
    v4 slow. Serving rolls back on errors (latency is noise on a shared 2-CPU box) and, for a
    canary with labels, on quality, checked every 2 s."""
    canary = {
        "min_requests": 20,
        "error_rate_margin": 0.05,
        "p95_latency_margin_ms": 1e6,
        "quality_interval_s": 2,
    }
    with serving(tmp_path_factory, "canary-home", cpus_per_replica=0.25, canary=canary) as app:
        yield app


@pytest.fixture(autouse=True)
def _champion_alone(app: Served) -> Iterator[None]:
    """Every test starts and ends with v1 champion alone on traffic."""
    yield
    if serve_status(app.config, home=app.home).challenger is not None:
        serve_rollback(app.config, home=app.home, reason="test cleanup")
    if app.registry.alias_target(MODEL, CHAMPION) != 1:
        app.registry.set_alias(MODEL, CHAMPION, 1, action="rollback", reason="test cleanup")
    _wait_for(lambda: _answering_versions(app, 10) == {1}, 60, "v1 alone on traffic")


def _retrain_config(app: Served, **retrain: Any) -> PipelineConfig:
    settings = {"canary_percent": 50.0, "canary_poll_s": 0.2, **retrain}
    return app.config.model_copy(update={"retrain": app.config.retrain.model_copy(update=settings)})


def _consistent(app: Served, champion: int) -> None:
    """Serving routes everything to `champion`, which the alias names too."""

    def routed() -> bool:
        status = serve_status(app.config, home=app.home)
        return (status.champion, status.challenger) == (champion, None)

    _wait_for(routed, 60, f"routing v{champion} alone")
    assert app.registry.alias_target(MODEL, CHAMPION) == champion
    # Replicas take the routing up at their next sync with the coordinator.
    _wait_for(lambda: _answering_versions(app, 20) == {champion}, 30, f"v{champion} answering")


def _recorded(app: Served, *actions: tuple[str, int | None], last: int = 4) -> None:
    """Wait until the history's `last` events hold `actions` (action, to_version; None: any
    version): serving records its own events in the background, so their order with the
    retrain's may vary."""

    def present() -> bool:
        tail = [(e.action, e.to_version) for e in app.registry.alias_history(MODEL)[-last:]]
        return all(
            any(a == action and (version is None or v == version) for a, v in tail)
            for action, version in actions
        )

    try:
        _wait_for(present, 30, f"{actions} in the alias history")
    except AssertionError as exc:
        tail = [(e.action, e.from_version, e.to_version) for e in app.registry.alias_history(MODEL)]
        raise AssertionError(f"{exc}; the history ends {tail[-6:]}") from None


def _gated(registry: Registry, version: int, against: int) -> GateResult:
    """Record a passed gate of `version` against champion `against` on the version (what
    `raymlops gate` leaves), so only the promotion's own checks can refuse it."""
    for key, value in (("status", "passed"), ("champion", f"v{against}"), ("run_id", "test")):
        registry.set_version_tag(MODEL, version, f"raymlops.gate.{key}", value)
    return GateResult(MODEL, version, "passed", "classification", [], {})


def test_a_canary_without_traffic_is_inconclusive_and_keeps_the_champion(app: Served) -> None:
    config = _retrain_config(app, canary_minutes=0.05, canary_requests=20)
    said: list[str] = []
    outcome = _canary_step(
        app.registry, config, ServingCanary(config, home=app.home), 2, 1, "test", said.append
    )
    assert outcome.inconclusive and outcome.requests < 20, outcome
    assert "fewer than the 20 needed" in outcome.reason
    _consistent(app, 1)
    _recorded(app, ("canary-start", 2), ("rollback", 1), ("retrain-inconclusive", 1), last=3)


def test_a_canary_worse_on_delayed_labels_is_rolled_back(
    app: Served, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Labels arrive after the answers: every answer of the champion turns out right, every
    answer of the challenger wrong. Serving's periodic check joins them to its log and rolls
    v2 back; before they arrive, the verdict judges nothing."""
    labels = tmp_path_factory.mktemp("labels") / "labels.parquet"
    serve_canary(app.config, 2, percent=50, home=app.home, reason="quality", labels=str(labels))
    client = app.client()
    prefix = f"q-{uuid.uuid4().hex[:6]}-"
    answered: dict[str, tuple[int, str]] = {}
    flip = {"0": "1", "1": "0"}
    arrived = labels.with_name("arriving.parquet")

    def arrive(ids: list[str]) -> None:
        """The labels of `ids` arrive: the champion's answers right, the challenger's
        wrong; the feed is replaced whole."""
        pd.DataFrame(
            {
                "request_id": ids,
                "label": [p if v == 1 else flip[p] for v, p in (answered[i] for i in ids)],
            }
        ).to_parquet(arrived)
        arrived.rename(labels)

    for i in range(160):
        result = client.predict(app.records(1, i), request_id=f"{prefix}{i}")
        answered[result.request_id] = (result.version, str(result.predictions[0]))
    per_version = pd.Series([v for v, _ in answered.values()]).value_counts()
    assert per_version.get(1, 0) >= 30 and per_version.get(2, 0) >= 30, per_version
    root = prediction_log_root(app.config, app.home)

    def logged() -> int:
        table = read_prediction_log(root)
        ids = table.column("request_id").to_pylist() if table.num_rows else []
        return sum(1 for i in ids if i.startswith(prefix))

    _wait_for(lambda: logged() == len(answered), 30, "the answers in the prediction log")
    arrive(list(answered)[:20])  # the first labels: too few to judge either version
    early = serve_canary_quality(app.config, home=app.home)
    assert early is not None and not early["judged"] and not early["worse"], early
    assert "labelled champion" in early["reason"] and "(each needs 30)" in early["reason"]
    assert early["champion_rows"] + early["challenger_rows"] == 20, early
    assert serve_status(app.config, home=app.home).challenger == 2

    arrive(list(answered))

    _consistent(app, 1)
    verdict = serve_status(app.config, home=app.home).details["quality"]
    assert verdict["judged"] and verdict["worse"], verdict
    assert verdict["metric"] == "log_loss" and verdict["low"] > 0
    assert verdict["champion_rows"] == per_version[1]
    _recorded(app, ("auto-rollback", 1), last=1)
    last = app.registry.alias_history(MODEL)[-1]
    assert last.from_version == 2 and last.reason.startswith("quality: log_loss"), last


def test_another_promotion_during_the_canary_ends_it(app: Served) -> None:
    config = _retrain_config(app, canary_minutes=2.0, canary_requests=20)
    gate = _gated(app.registry, 2, against=1)
    canary = ServingCanary(config, home=app.home)
    with _Load(app, threads=2) as load:
        outcome = _canary_step(app.registry, config, canary, 2, 1, "test", lambda _m: None)
        assert outcome.healthy and not outcome.inconclusive, outcome
        # Someone promotes v4 while the retrain is about to promote v2.
        promote(
            app.registry, MODEL, 4, reason="someone else's release", force=True,
            refresh_cards=False,
        )  # fmt: skip
        with pytest.raises(PromotionError, match=r"now v4: gate it again.*canary was ended"):
            _promote_candidate(app.registry, config, 2, gate, ["test"], canary, "test", print)
    assert not load.failures, load.failures[:3]
    _consistent(app, 4)
    _recorded(app, ("promote", 4), ("rollback", None), ("retrain-promotion-failed", 2))


def test_the_coordinator_killed_during_the_canary_ends_it(app: Served) -> None:
    import ray

    config = _retrain_config(app, canary_minutes=2.0, canary_requests=100_000)
    canary = ServingCanary(config, home=app.home)
    done: dict[str, Any] = {}

    def watch() -> None:
        done["outcome"] = _canary_step(app.registry, config, canary, 2, 1, "test", print)

    with _Load(app, threads=2) as load:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _wait_for(lambda: (canary.canary_requests() or 0) >= 10, 60, "the canary answering")
        ray.kill(_actor(f"SERVE_REPLICA::{MODEL}#Coordinator#"), no_restart=True)
        watcher.join(120)
    assert not watcher.is_alive() and not load.failures, load.failures[:3]
    outcome = done["outcome"]
    assert not outcome.healthy and "coordinator restarted" in outcome.reason, outcome
    _consistent(app, 1)
    _recorded(app, ("rollback", 1), ("retrain-rolled-back", 1), last=3)


def test_an_unreachable_registry_at_promotion_ends_the_canary(app: Served) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        stopped = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once closed
    config = _retrain_config(app)
    gate = _gated(app.registry, 2, against=1)
    canary = ServingCanary(config, home=app.home)
    canary.start_canary(2, 50.0)
    assert serve_status(app.config, home=app.home).challenger == 2
    _recorded(app, ("canary-start", 2), last=1)
    before = len(app.registry.alias_history(MODEL))
    with pytest.raises(PromotionError, match=r"does not answer.*canary was ended"):
        _promote_candidate(Registry(stopped), config, 2, gate, ["test"], canary, "test", print)
    _consistent(app, 1)
    _recorded(app, ("rollback", 1), last=1)
    actions = [e.action for e in app.registry.alias_history(MODEL)[before - 1 :]]
    assert actions == ["canary-start", "rollback"]  # nothing half-recorded
