"""Promotion, approval and rollback of model versions, with an append-only audit history.

MLflow keeps only where an alias points now; every move made here goes through
`Registry.set_alias` — a compare-and-set under the model's lock that appends an event to the
`raymlops-audit` experiment — so `model_history()` answers who moved `champion` from which version
to which, when, why, and with which gate result, even under concurrent callers.

Rules:
- `promote` refuses a version whose latest gate run did not pass, or whose gate compared it
  against a champion that has since been replaced, unless `force=True` (recorded as forced);
- with `promotion: manual` it also needs `approvals` distinct `approve` events recorded
  after the version's latest gate run;
- `rollback` returns the alias to the version it pointed to before the current one, as the
  history records it (repeated rollbacks walk further back, like an undo stack).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raymlops.core.errors import RaymlopsError, RegistryError, UserInputError
from raymlops.registry.store import CHAMPION, AliasEvent

if TYPE_CHECKING:
    from raymlops.core.config import PipelineConfig
    from raymlops.loop.gate_result import GateResult
    from raymlops.registry.store import ModelVersionInfo, Registry

__all__ = [
    "PromotionDecision",
    "PromotionError",
    "approvals_for",
    "approve",
    "model_history",
    "previous_target",
    "promote",
    "promote_if_passed",
    "rollback",
]

#: Actions that move an alias back to an earlier target (an undo of the latest move).
ROLLBACK_ACTIONS = frozenset({"rollback", "auto-rollback"})
#: Actions of events written before `moved` was recorded that did move the alias.
_LEGACY_MOVES = frozenset({"register", "promote", "rollback", "clear"})


class PromotionError(RaymlopsError):
    """A promotion or rollback was refused: ungated, failed or stale gate, missing approval,
    nothing to roll back to, or the alias moved meanwhile. Exit code 1."""


@dataclass
class PromotionDecision:
    """What `promote_if_passed` did with a gated version, and why."""

    promoted: bool
    reason: str
    event: AliasEvent | None = None
    gate: GateResult | None = None


def _policy(
    registry: Registry, name: str, version: int, config: PipelineConfig | None
) -> PipelineConfig:
    """The config whose `promotion` section applies: the given one, else the version's own."""
    if config is not None:
        return config
    from raymlops.loop.gate import recorded_config

    return recorded_config(registry, name, version)


def _moved(event: AliasEvent) -> bool:
    return event.moved or (event.action in _LEGACY_MOVES and "moved" not in event.details)


def model_history(registry: Registry, name: str, alias: str | None = None) -> list[AliasEvent]:
    """Every recorded alias change and lifecycle decision of a model (oldest first),
    optionally only those of one alias."""
    events = registry.alias_history(name)
    if not events:
        # An unknown model has no history; say so instead of printing an empty table.
        registry.list_versions(name)
    return [e for e in events if alias is None or e.alias == alias]


def previous_target(events: Iterable[AliasEvent], alias: str, current: int | None) -> list[int]:
    """Versions a rollback of `alias` may return to, nearest first.

    The history's moves of `alias` are replayed as an undo stack: a move pushes its target,
    a rollback pops the version it left. The entries below the current one (skipping the
    current version and cleared states) are the candidates.
    """
    stack: list[int | None] = []
    for event in sorted(events, key=lambda e: e.sequence):
        if event.alias != alias or not _moved(event):
            continue
        if event.action in ROLLBACK_ACTIONS and stack:
            stack.pop()
            if not stack or stack[-1] != event.to_version:
                stack.append(event.to_version)
        else:
            stack.append(event.to_version)
    if not stack or stack[-1] != current:
        stack.append(current)
    seen: set[int] = set()
    candidates: list[int] = []
    for version in reversed(stack[:-1]):
        if version is None or version == current or version in seen:
            continue
        seen.add(version)
        candidates.append(version)
    return candidates


def approvals_for(events: Iterable[AliasEvent], version: int, alias: str = CHAMPION) -> list[str]:
    """Distinct approvers of `version` for `alias` since the version's latest gate run."""
    ordered = sorted(events, key=lambda e: e.sequence)
    last_gate = max(
        (e.sequence for e in ordered if e.action == "gate" and e.to_version == version),
        default=0,
    )
    approvers: list[str] = []
    for e in ordered:
        if (
            e.action == "approve"
            and e.to_version == version
            and e.alias == alias
            and e.sequence > last_gate
            and e.by not in approvers
        ):
            approvers.append(e.by)
    return approvers


def _gate_problem(info: ModelVersionInfo, alias: str, current: int | None) -> str | None:
    """Why the version's recorded gate result does not allow promotion (None if it does)."""
    from raymlops.loop.gate_result import recorded_gate

    gate = recorded_gate(info)
    status = gate.get("status")
    if status is None:
        return f"v{info.version} has not been gated (run: raymlops gate {info.name} {info.version})"
    if status != "passed":
        return f"v{info.version} failed its latest gate (run {gate.get('run_id', '?')})"
    compared = gate.get("champion", "off")
    if compared != "off" and gate.get("champion_alias", CHAMPION) == alias:
        gated_against = int(compared[1:]) if compared.startswith("v") else None
        if current not in (gated_against, info.version):
            was = f"v{gated_against}" if gated_against is not None else "no champion"
            return (
                f"the gate of v{info.version} compared it with {was}, but '{alias}' is now "
                f"v{current}: gate it again"
            )
    return None


def approve(
    registry: Registry,
    name: str,
    version: int,
    *,
    by: str,
    reason: str = "",
    alias: str = CHAMPION,
) -> AliasEvent:
    """Record `by`'s approval of `version` for `alias` (needed by `promotion: manual`).

    Only a version whose latest gate passed can be approved; a later gate run voids it.
    """
    if not by.strip():
        raise UserInputError("an approval needs the approver's name (--by)")
    info = registry.version_info(name, version)
    from raymlops.loop.gate_result import recorded_gate

    gate = recorded_gate(info)
    if gate.get("status") != "passed":
        state = "has not been gated" if "status" not in gate else "failed its latest gate"
        raise PromotionError(f"{name} v{info.version} {state}; only gated versions are approved")
    return registry.record_event(
        name,
        alias,
        "approve",
        to_version=info.version,
        reason=reason,
        by=by,
        details={"gate_run_id": gate.get("run_id", "")},
    )


def promote(
    registry: Registry,
    name: str,
    version: int,
    *,
    reason: str,
    by: str | None = None,
    alias: str = CHAMPION,
    force: bool = False,
    config: PipelineConfig | None = None,
    refresh_cards: bool = True,
) -> AliasEvent:
    """Point `alias` at `version` and record who, why, the gate result and approvals.

    Refused (PromotionError) when the version's latest gate did not pass or is stale, or —
    under `promotion: manual` (from `config`, default the version's recorded config) — it
    lacks approvals; `force=True` overrides both and is recorded as forced. The move is a
    compare-and-set: if another caller moves the alias between the checks and the move,
    nothing changes and PromotionError says so.
    """
    from raymlops.loop.gate_result import recorded_gate

    if not reason.strip():
        raise UserInputError("a promotion needs a reason (--reason)")
    info = registry.version_info(name, version)
    current = registry.alias_target(name, alias)
    if current == info.version:
        raise PromotionError(f"'{alias}' of {name} already points to v{info.version}")
    policy = _policy(registry, name, info.version, config).promotion
    problems: list[str] = []
    gate_problem = _gate_problem(info, alias, current)
    if gate_problem:
        problems.append(gate_problem)
    approvers: list[str] = []
    if policy.mode == "manual":
        approvers = approvals_for(registry.alias_history(name), info.version, alias)
        if len(approvers) < policy.approvals:
            problems.append(
                f"promotion is manual and v{info.version} has {len(approvers)} of "
                f"{policy.approvals} approval(s) (run: raymlops approve {name} "
                f"{info.version} --by WHO)"
            )
    if problems and not force:
        raise PromotionError("; ".join(problems) + " — or pass --force")
    gate = recorded_gate(info)
    details = {
        "forced": bool(problems) and force,
        "force_overrode": problems if force else [],
        "gate": gate.get("status", "not gated"),
        "gate_run_id": gate.get("run_id", ""),
        "mode": policy.mode,
        "approvals": approvers,
    }
    try:
        event = registry.set_alias(
            name,
            alias,
            info.version,
            action="promote",
            reason=reason,
            by=by,
            details=details,
            expected_from=current,
        )
    except RegistryError as exc:
        raise PromotionError(f"promotion of {name} v{info.version} not done: {exc}") from None
    if refresh_cards:
        _refresh(registry, name, [info.version, current])
    return event


def rollback(
    registry: Registry,
    name: str,
    *,
    reason: str,
    by: str | None = None,
    alias: str = CHAMPION,
    refresh_cards: bool = True,
) -> AliasEvent:
    """Return `alias` to the version it pointed to before the current one (from the
    history; a second rollback goes one further back). Compare-and-set, like `promote`."""
    if not reason.strip():
        raise UserInputError("a rollback needs a reason (--reason)")
    current = registry.alias_target(name, alias)
    candidates = previous_target(registry.alias_history(name), alias, current)
    target: int | None = None
    for candidate in candidates:
        try:
            registry.version_info(name, candidate)
        except RegistryError:
            continue  # that version was deleted since
        target = candidate
        break
    if target is None:
        registry.list_versions(name)  # an unknown model is a RegistryError (exit 2)
        raise PromotionError(f"'{alias}' of {name} has no previous version to roll back to")
    try:
        event = registry.set_alias(
            name,
            alias,
            target,
            action="rollback",
            reason=reason,
            by=by,
            details={"rolled_back": current},
            expected_from=current,
        )
    except RegistryError as exc:
        raise PromotionError(f"rollback of {name} '{alias}' not done: {exc}") from None
    if refresh_cards:
        _refresh(registry, name, [target, current])
    return event


def promote_if_passed(
    registry: Registry,
    name: str,
    version: int,
    gate: GateResult,
    *,
    config: PipelineConfig | None = None,
    reason: str = "passed the gate",
    by: str | None = None,
    alias: str = CHAMPION,
) -> PromotionDecision:
    """The automatic path after a gate run: promote when the gate passed and the config's
    `promotion` is `auto`; otherwise leave the alias alone and say why. A failed gate never
    promotes, whatever the mode. `promote`'s own refusals still raise PromotionError (for
    instance when the champion moved since the gate ran)."""
    if not gate.passed:
        failed = ", ".join(f"{c.kind} {c.name}" for c in gate.failed_checks)
        return PromotionDecision(False, f"gate failed: {failed}", gate=gate)
    policy = _policy(registry, name, version, config).promotion
    if policy.mode != "auto":
        return PromotionDecision(
            False, f"promotion is manual: v{version} waits for `raymlops approve`", gate=gate
        )
    event = promote(registry, name, version, reason=reason, by=by, alias=alias, config=config)
    return PromotionDecision(True, reason, event=event, gate=gate)


def _refresh(registry: Registry, name: str, versions: list[int | None]) -> None:
    from raymlops.loop.cards import refresh_card

    for version in dict.fromkeys(v for v in versions if v is not None):
        refresh_card(registry, name, version)
