"""Traffic split and canary statistics: which version answers a request, per-version
request/error/latency figures that merge across replicas, and the automatic-rollback rule.

Pure Python (no Ray): the Serve ingress records figures per request, ships deltas to the
coordinator, and the coordinator decides; the unit tests exercise the same code.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "LATENCY_BUCKETS_MS",
    "SHADOW",
    "RoleStats",
    "RollbackPolicy",
    "RoutingTable",
    "StatsBook",
    "choose_route",
    "follow_alias",
    "rollback_reason",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
SHADOW = "shadow"

#: Upper bounds (ms) of the latency histogram buckets; the last bucket is open-ended.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500,
    750, 1000, 2000, 5000, 10000,
)  # fmt: skip


@dataclass
class RoleStats:
    """Requests, errors and a latency histogram of one (version, role); mergeable."""

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))

    def record(self, latency_ms: float, error: bool = False, fallback: bool = False) -> None:
        self.requests += 1
        if error:
            self.errors += 1
        if fallback:
            self.fallbacks += 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1

    def merge(self, other: RoleStats) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.fallbacks += other.fallbacks
        for i, count in enumerate(other.buckets):
            self.buckets[i] += count

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """Latency quantile (ms), interpolated inside its bucket; None without data."""
        total = sum(self.buckets)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                low = LATENCY_BUCKETS_MS[i - 1] if i > 0 else 0.0
                high = LATENCY_BUCKETS_MS[i] if i < len(LATENCY_BUCKETS_MS) else low * 2
                return low + (high - low) * max(0.0, rank - seen) / count
            seen += count
        return LATENCY_BUCKETS_MS[-1] * 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoleStats:
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """Figures shown by `raymlops serve status`."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "fallbacks": self.fallbacks,
            "p50_ms": ms(self.quantile(0.5)),
            "p95_ms": ms(self.quantile(0.95)),
            "p99_ms": ms(self.quantile(0.99)),
        }


class StatsBook:
    """RoleStats keyed by (version, role)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, str], RoleStats] = {}

    def get(self, version: int, role: str) -> RoleStats:
        key = (version, role)
        stats = self.entries.get(key)
        if stats is None:
            stats = self.entries[key] = RoleStats()
        return stats

    def record(
        self,
        version: int,
        role: str,
        latency_ms: float,
        error: bool = False,
        fallback: bool = False,
    ) -> None:
        self.get(version, role).record(latency_ms, error, fallback)

    def merge(self, other: StatsBook) -> None:
        for (version, role), stats in other.entries.items():
            self.get(version, role).merge(stats)

    def version(self, version: int, roles: Iterable[str]) -> RoleStats:
        """One version's figures over the given roles combined."""
        out = RoleStats()
        for role in roles:
            if (version, role) in self.entries:
                out.merge(self.entries[(version, role)])
        return out

    def drain(self) -> StatsBook:
        """Hand over the recorded figures and start empty (a delta for the coordinator)."""
        out = StatsBook()
        out.entries, self.entries = self.entries, {}
        return out

    def __bool__(self) -> bool:
        return bool(self.entries)

    def to_wire(self) -> list[dict[str, Any]]:
        return [
            {"version": v, "role": r, **stats.to_dict()} for (v, r), stats in self.entries.items()
        ]

    @classmethod
    def from_wire(cls, rows: list[dict[str, Any]]) -> StatsBook:
        book = cls()
        for row in rows:
            data = dict(row)
            version, role = int(data.pop("version")), str(data.pop("role"))
            book.get(version, role).merge(RoleStats.from_dict(data))
        return book


@dataclass
class RoutingTable:
    """Who answers: the champion; a challenger with a share of answered (`percent`) and of
    mirrored (`shadow_percent`) requests. `epoch` grows with every change."""

    champion: int
    challenger: int | None = None
    percent: float = 0.0
    shadow_percent: float = 0.0
    previous_champion: int | None = None
    epoch: int = 0

    def versions(self) -> list[int]:
        """The versions replicas must hold loaded."""
        return [self.champion] + ([self.challenger] if self.challenger is not None else [])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoutingTable:
        return cls(**data)


def follow_alias(table: RoutingTable, target: int | None) -> RoutingTable | None:
    """The routing once the registry's `champion` alias points to `target`, or None when
    it stays as it is: the alias names the champion already, or it was cleared (None).

    A cleared alias (a first version that failed its gate) leaves the version that held it
    serving: there is no other version to answer, and stopping would fail every request;
    the coordinator says so in `serve status` until a version is champion again. A
    challenger that becomes champion leaves the canary; any other keeps its share."""
    if target is None or target == table.champion:
        return None
    challenger = None if table.challenger == target else table.challenger
    return RoutingTable(
        champion=target,
        challenger=challenger,
        percent=table.percent if challenger is not None else 0.0,
        shadow_percent=table.shadow_percent if challenger is not None else 0.0,
        previous_champion=table.champion,
        epoch=table.epoch + 1,
    )


def choose_route(table: RoutingTable, draw: float | None = None) -> tuple[str, bool]:
    """(role that answers, whether to mirror to the challenger in shadow) for one request.

    One uniform draw in [0, 100): below `percent` the challenger answers; the next
    `shadow_percent` are answered by the champion and mirrored to the challenger.
    """
    if table.challenger is None:
        return CHAMPION, False
    point = random.random() * 100.0 if draw is None else draw
    if point < table.percent:
        return CHALLENGER, False
    return CHAMPION, point < table.percent + table.shadow_percent


@dataclass(frozen=True)
class RollbackPolicy:
    """When a challenger is taken off live traffic (see ServeCanaryConfig)."""

    min_requests: int = 100
    error_rate_margin: float = 0.02
    p95_latency_margin_ms: float = 50.0


def rollback_reason(
    champion: RoleStats, challenger: RoleStats, policy: RollbackPolicy
) -> str | None:
    """Why the challenger must be rolled back, or None while it may stay.

    Decided only after `min_requests` challenger requests; the challenger loses when its
    error rate exceeds the champion's by more than the margin, or its p95 latency does.
    Without champion figures the champion counts as error-free and its p95 as unknown.
    """
    if challenger.requests < policy.min_requests:
        return None
    if challenger.error_rate > champion.error_rate + policy.error_rate_margin:
        return (
            f"error rate {challenger.error_rate:.1%} over {challenger.requests} requests "
            f"exceeds the champion's {champion.error_rate:.1%} by more than "
            f"{policy.error_rate_margin:.1%}"
        )
    challenger_p95 = challenger.quantile(0.95)
    champion_p95 = champion.quantile(0.95)
    if (
        challenger_p95 is not None
        and champion_p95 is not None
        and challenger_p95 > champion_p95 + policy.p95_latency_margin_ms
    ):
        return (
            f"p95 latency {challenger_p95:.1f} ms exceeds the champion's {champion_p95:.1f} ms "
            f"by more than {policy.p95_latency_margin_ms:g} ms"
        )
    return None
