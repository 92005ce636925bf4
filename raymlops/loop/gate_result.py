"""What a gate decided, as recorded: the `GateResult` and its checks, the `raymlops.gate.*`
tags a gated version carries and the `gate.json` of a gate run. Kept apart from the gate
itself, which model cards (and the gate, refreshing the card) both read.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from raymlops.registry.store import ModelVersionInfo, Registry

__all__ = [
    "GATE_STATUS_TAG",
    "CheckResult",
    "CheckStatus",
    "GateResult",
    "load_gate_result",
    "recorded_gate",
]

CheckStatus = Literal["passed", "failed", "skipped"]

_GATE_TAG = "raymlops.gate."
GATE_STATUS_TAG = f"{_GATE_TAG}status"


# --------------------------------------------------------------------------- results


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.4f}" if 1e-3 <= abs(value) < 1e5 or value == 0 else f"{value:.4g}"


# --------------------------------------------------------------------------- metrics


@dataclass
class CheckResult:
    """One line of the gate table: what was checked, the value seen, the limit, the outcome."""

    kind: str
    name: str
    status: CheckStatus
    value: float | None = None
    limit: str = ""
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GateResult:
    """Everything one gate run found; `status` is 'failed' as soon as one check failed."""

    model: str
    version: int
    status: Literal["passed", "failed"]
    task: str
    checks: list[CheckResult]
    metrics: dict[str, float]
    slices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fairness: dict[str, Any] | None = None
    champion: dict[str, Any] | None = None
    #: What the champion comparison was based on: basis (fresh / held-out / first version /
    #: none / off), a note, the rows and, on fresh rows, the paired test's figures.
    comparison: dict[str, Any] | None = None
    latency: dict[str, float] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    gate_config: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)
    run_id: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.timestamp))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResult:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["checks"] = [CheckResult(**c) for c in data.get("checks", [])]
        return cls(**values)

    def table(self) -> str:
        """The pass/fail table `raymlops gate` prints."""
        data = self.data
        where = (
            f"test split of {data.get('source')}"
            if data.get("split") == "test"
            else str(data.get("source"))
        )
        lines = [
            f"gate {self.model} v{self.version}: {data.get('rows', '?')} rows of {where} "
            f"(sha256:{str(data.get('digest', ''))[:12]}…)"
            + (f", champion v{self.champion['version']}" if self.champion else ""),
        ]
        names = [f"{c.kind} {c.name}" for c in self.checks]
        width = min(max([len(n) for n in names] + [30]), 64)
        limits = max([len(c.limit) for c in self.checks] + [12])
        lines += ["", f"{'CHECK':<{width}} {'VALUE':>10}  {'LIMIT':<{limits}} RESULT"]
        for check, name in zip(self.checks, names, strict=True):
            value = "-" if check.value is None else _fmt(check.value)
            mark = {"passed": "pass", "failed": "FAIL", "skipped": "skip"}[check.status]
            line = f"{name:<{width}.{width}} {value:>10}  {check.limit:<{limits}} {mark}"
            if check.detail and check.status != "passed":
                line += f"  ({check.detail})"
            lines.append(line)
        if not self.checks:
            lines.append("(no checks configured: add a `gate` section to the config)")
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in self.metrics.items() if k != "loss")
        lines += ["", f"metrics: {shown}"]
        compared = self.comparison or {}
        if compared.get("basis") in ("fresh", "held-out", "first version"):
            lines.append(f"champion: {compared.get('summary') or compared.get('note')}")
        if compared.get("cleared"):
            lines.append(f"no champion: {compared['cleared']}")
        if self.latency:
            lines.append(
                f"latency: p50 {self.latency['p50_ms']:.2f} ms, p95 {self.latency['p95_ms']:.2f} "
                f"ms over {int(self.latency['requests'])} single-row predictions"
            )
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("failed", "skipped")}
        lines.append(
            f"{self.status.upper()}: {len(self.checks)} checks, {counts['failed']} failed, "
            f"{counts['skipped']} skipped" + (f" — MLflow run {self.run_id}" if self.run_id else "")
        )
        return "\n".join(lines)


def recorded_gate(info: ModelVersionInfo) -> dict[str, str]:
    """The gate outcome attached to a version: status, run_id, time, champion, … ({} if the
    version was never gated)."""
    return info.tags_under(_GATE_TAG)


def load_gate_result(registry: Registry, run_id: str) -> GateResult | None:
    """The full result of a gate run (its gate.json), or None if it cannot be read."""
    text = registry.run_text(run_id, "gate.json")
    if text is None:
        return None
    try:
        return GateResult.from_dict(json.loads(text))
    except Exception:
        return None
