"""Traffic split and canary statistics: the share a challenger gets, figures that merge
across replicas, and the automatic-rollback decision."""

from __future__ import annotations

import random

import pytest

from raymlops.serve.canary import (
    CHALLENGER,
    CHAMPION,
    SHADOW,
    RoleStats,
    RollbackPolicy,
    RoutingTable,
    StatsBook,
    choose_route,
    rollback_reason,
)


def _stats(requests: int, errors: int = 0, latency_ms: float = 2.0) -> RoleStats:
    stats = RoleStats()
    for i in range(requests):
        stats.record(latency_ms, error=i < errors)
    return stats


def test_without_challenger_the_champion_answers_everything() -> None:
    table = RoutingTable(champion=1)
    assert {choose_route(table, draw) for draw in (0.0, 50.0, 99.9)} == {(CHAMPION, False)}


def test_route_bands() -> None:
    table = RoutingTable(champion=1, challenger=2, percent=10, shadow_percent=20)
    assert choose_route(table, 0.0) == (CHALLENGER, False)
    assert choose_route(table, 9.99) == (CHALLENGER, False)
    assert choose_route(table, 10.0) == (CHAMPION, True)
    assert choose_route(table, 29.99) == (CHAMPION, True)
    assert choose_route(table, 30.0) == (CHAMPION, False)


@pytest.mark.parametrize("percent", [5.0, 10.0, 30.0, 50.0])
def test_share_is_close_to_the_configured_percent(percent: float) -> None:
    random.seed(1)
    table = RoutingTable(champion=1, challenger=2, percent=percent)
    n = 20_000
    share = sum(choose_route(table)[0] == CHALLENGER for _ in range(n)) / n
    assert abs(share - percent / 100) < 0.01


def test_quantiles_from_buckets() -> None:
    stats = RoleStats()
    assert stats.quantile(0.95) is None
    for value in [1.0] * 90 + [100.0] * 10:
        stats.record(value)
    assert stats.quantile(0.5) == pytest.approx(1.0, abs=0.5)
    assert 75 <= (stats.quantile(0.95) or 0) <= 100
    assert stats.summary()["requests"] == 100


def test_stats_merge_and_wire_round_trip() -> None:
    a, b = StatsBook(), StatsBook()
    a.record(1, CHAMPION, 2.0)
    a.record(2, CHALLENGER, 3.0, error=True)
    b.record(2, CHALLENGER, 4.0, fallback=True)
    b.record(2, SHADOW, 5.0)
    merged = StatsBook.from_wire(a.to_wire())
    merged.merge(StatsBook.from_wire(b.to_wire()))
    challenger = merged.get(2, CHALLENGER)
    assert (challenger.requests, challenger.errors, challenger.fallbacks) == (2, 1, 1)
    assert merged.version(2, [CHALLENGER, SHADOW]).requests == 3
    drained = merged.drain()
    assert not merged and drained.get(1, CHAMPION).requests == 1


def test_no_decision_before_min_requests() -> None:
    policy = RollbackPolicy(min_requests=50, error_rate_margin=0.01)
    assert rollback_reason(_stats(100), _stats(49, errors=49), policy) is None
    assert rollback_reason(_stats(100), _stats(50, errors=50), policy) is not None


def test_error_rate_margin() -> None:
    policy = RollbackPolicy(min_requests=100, error_rate_margin=0.05)
    champion = _stats(1000, errors=10)  # 1%
    assert rollback_reason(champion, _stats(100, errors=6), policy) is None  # 6% <= 1% + 5%
    reason = rollback_reason(champion, _stats(100, errors=7), policy)
    assert reason is not None and "error rate 7.0%" in reason


def test_latency_margin() -> None:
    policy = RollbackPolicy(min_requests=20, error_rate_margin=1.0, p95_latency_margin_ms=50)
    champion = _stats(200, latency_ms=5.0)
    assert rollback_reason(champion, _stats(20, latency_ms=40.0), policy) is None
    reason = rollback_reason(champion, _stats(20, latency_ms=200.0), policy)
    assert reason is not None and "p95 latency" in reason


def test_without_champion_figures_only_the_error_rate_counts() -> None:
    policy = RollbackPolicy(min_requests=10, error_rate_margin=0.1, p95_latency_margin_ms=1)
    assert rollback_reason(RoleStats(), _stats(10, latency_ms=500.0), policy) is None
    assert rollback_reason(RoleStats(), _stats(10, errors=2), policy) is not None


def test_routing_table_round_trip() -> None:
    table = RoutingTable(champion=3, challenger=4, percent=12.5, previous_champion=2, epoch=7)
    assert RoutingTable.from_dict(table.to_dict()) == table
    assert table.versions() == [3, 4]
    assert RoutingTable(champion=3).versions() == [3]
