"""Retraining that closes the loop: drift, decay or a schedule start a new training run that
goes through the same gate, canary and promotion as a human-made version, every step recorded
in the model's alias history.

`retrain` is one pass of the `retrain` policy; `watch` runs monitor → retrain on an interval
(the long-running job behind `raymlops watch` and `jobs/lifecycle.py`).

A canary that has started is ended on every path that does not promote it: rolled back by
serving, worse in quality, inconclusive (too few requests), its coordinator restarted, the
promotion refused or the registry unreachable — the champion keeps all traffic.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from raymlops.core.durations import parse_duration
from raymlops.core.errors import DataError, UserInputError
from raymlops.core.home import home_dir
from raymlops.core.report import say as report
from raymlops.registry.store import CHAMPION, Registry

if TYPE_CHECKING:
    from raymlops.core.config import PipelineConfig
    from raymlops.loop.gate_result import GateResult
    from raymlops.loop.governance import PromotionDecision
    from raymlops.loop.training import TrainResult
    from raymlops.monitor.run import MonitorResult

__all__ = [
    "CanaryOutcome",
    "CanaryTarget",
    "RetrainResult",
    "ServingCanary",
    "retrain",
    "retrain_once",
    "retrain_reasons",
    "watch",
]

RETRAIN_ALIAS = CHAMPION
#: How long serving may not answer the canary's watcher before the canary is ended.
UNREACHABLE_GRACE_S = 30.0
#: Passes in a row failing on a DataError after which `watch` stops and raises it.
_DATA_ERROR_PASSES = 3

logger = logging.getLogger(__name__)


class CanaryTarget(Protocol):
    """A live endpoint that can give a candidate a share of traffic and report how it did
    (`ServingCanary` is the one over a raymlops Serve application)."""

    def start_canary(self, version: int, percent: float) -> None:
        """Send `percent` of live requests to `version` next to the champion."""

    def canary_requests(self) -> int | None:
        """Requests the canary has answered so far; None when the endpoint did not answer
        now (no count decides anything then)."""

    def canary_rolled_back(self) -> str | None:
        """Why serving rolled the canary back automatically (or the endpoint stopped
        answering for too long), or None while it is healthy or briefly unreachable."""

    def judge_canary(self) -> dict[str, Any] | None:
        """Compare the canary's quality with the champion's now on delayed labels
        (`QualityVerdict.to_dict()`: `judged`, `worse`, `reason`…); None without labels.
        Raises when the endpoint cannot judge it (the canary no longer runs, no answer)."""

    def end_canary(self, promoted: bool) -> None:
        """After the decision: wait until the endpoint serves the promoted version, or take
        the canary's share of traffic away."""


class ServingCanary:
    """`CanaryTarget` over the raymlops Serve application of a config's model."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        home: str | Path | None = None,
        address: str | None = None,
        by: str = "raymlops-retrain",
        labels: str | None = None,
        on_start: Callable[[], None] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.home = home
        self.address = address
        self.by = by
        #: Delayed labels of the canary's requests; default serve.canary.labels.
        self.labels = labels
        self.version: int | None = None
        self._on_start = on_start
        self._on_end = on_end
        self._coordinator_started: float | None = None
        self._unreachable_since: float | None = None

    @classmethod
    def if_serving(
        cls,
        config: PipelineConfig,
        *,
        home: str | Path | None = None,
        address: str | None = None,
    ) -> ServingCanary | None:
        """A canary over the endpoint that serves the config's model, or None when nothing
        serves it (then retraining promotes straight after the gate)."""
        from raymlops.core.errors import RaymlopsError
        from raymlops.serve.api import serve_status

        try:
            serve_status(config, home=home, address=address)
        except RaymlopsError:
            return None
        return cls(config, home=home, address=address)

    def _status(self) -> Any:
        from raymlops.serve.api import serve_status

        return serve_status(self.config, home=self.home, address=self.address)

    def start_canary(self, version: int, percent: float) -> None:
        from raymlops.serve.api import serve_canary

        status = serve_canary(
            self.config,
            version,
            percent=percent,
            reason="retrained candidate",
            by=self.by,
            labels=self.labels,
            home=self.home,
            address=self.address,
        )
        self.version = version
        self._coordinator_started = status.details.get("started")
        if self._on_start is not None:
            self._on_start()

    def canary_requests(self) -> int | None:
        """The challenger's requests since the canary started; None while serving does not
        answer (an old count must not end the watch as healthy) or no longer routes to the
        canary (a count of a canary serving has ended confirms nothing; canary_rolled_back
        says why it ended)."""
        try:
            status = self._status()
        except Exception:
            return None
        if status.challenger != self.version:
            return None
        rows = status.details.get("since_canary", [])
        return sum(
            int(r["requests"])
            for r in rows
            if r["version"] == self.version and r["role"] == "challenger"
        )

    def canary_rolled_back(self) -> str | None:
        """Why the canary is over: rolled back by serving, its coordinator restarted (the
        figures it was judged on are gone, so it is not judged on half of them), or
        serving not answering for UNREACHABLE_GRACE_S."""
        try:
            status = self._status()
        except Exception as exc:
            now = time.monotonic()
            if self._unreachable_since is None:
                self._unreachable_since = now
            if now - self._unreachable_since < UNREACHABLE_GRACE_S:
                return None
            return f"serving did not answer for {UNREACHABLE_GRACE_S:g} s ({exc})"
        self._unreachable_since = None
        started = status.details.get("started")
        if self._coordinator_started is not None and started != self._coordinator_started:
            return (
                "serving's coordinator restarted during the canary: the canary's figures "
                "were lost, so it cannot be judged"
            )
        if status.challenger == self.version:
            return None
        for event in reversed(status.details.get("events", [])):
            if event["action"] == "auto-rollback" and event["from_version"] == self.version:
                return str(event["reason"])
        return "the canary was stopped"

    def judge_canary(self) -> dict[str, Any] | None:
        """Serving's quality verdict now; its errors (no canary running: serving rolled it
        back meanwhile; serving not answering) are raised: they never count as healthy."""
        from raymlops.serve.api import serve_canary_quality

        return serve_canary_quality(self.config, home=self.home, address=self.address)

    def end_canary(self, promoted: bool) -> None:
        """Wait for the promoted version to serve, or take the canary off traffic — tried
        again while serving does not answer (its coordinator restarting), for
        UNREACHABLE_GRACE_S; then the error is raised."""
        from raymlops.serve.api import serve_rollback

        deadline = time.monotonic() + UNREACHABLE_GRACE_S
        try:
            while True:
                try:
                    if promoted:
                        self._wait_for_champion()
                    elif self._status().challenger == self.version:
                        serve_rollback(
                            self.config,
                            reason="canary ended without a promotion",
                            by=self.by,
                            home=self.home,
                            address=self.address,
                        )
                    return
                except Exception as exc:
                    if time.monotonic() > deadline:
                        raise
                    logger.warning("raymlops: ending the canary failed (%s); trying again", exc)
                    time.sleep(1.0)
        finally:
            if self._on_end is not None:
                self._on_end()

    def _wait_for_champion(self) -> None:
        # The endpoint follows the champion alias; wait until it has.
        deadline = time.monotonic() + 4 * self.config.serve.alias_poll_interval_s + 10
        while self._status().champion != self.version:
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)


@dataclass
class CanaryOutcome:
    """How the canary phase ended."""

    version: int
    requests: int
    seconds: float
    healthy: bool
    reason: str
    #: It ended with fewer than serve.canary.min_requests requests: not judged either way.
    inconclusive: bool = False
    #: The quality comparison on delayed labels (QualityVerdict.to_dict()), if any.
    quality: dict[str, Any] | None = None

    @property
    def quality_unjudged(self) -> bool:
        """The canary has a labels feed but its quality could not be judged (too few
        labelled rows, labels unreadable): inconclusive whatever on_inconclusive says."""
        return self.quality is not None and not self.quality.get("judged", False)

    def promotable(self, on_inconclusive: str) -> bool:
        """Whether the candidate may be promoted after this canary: healthy and judged, or
        inconclusive for too little traffic under serve.canary.on_inconclusive `promote`."""
        if not self.healthy:
            return False
        if not self.inconclusive:
            return True
        return on_inconclusive == "promote" and not self.quality_unjudged

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "healthy": self.healthy,
            "inconclusive": self.inconclusive,
            "reason": self.reason,
            "quality": self.quality,
        }


@dataclass
class RetrainResult:
    """One pass of the retrain policy: whether it retrained, why, and where it ended."""

    model_name: str
    reasons: list[str]
    retrained: bool
    outcome: str  # skipped | rejected | rolled-back | inconclusive | promoted | awaiting-approval
    champion_before: int | None
    champion_after: int | None
    candidate: int | None = None
    gate: GateResult | None = None
    canary: CanaryOutcome | None = None
    training_rows: int | None = None
    training_data: str | None = None
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "reasons": self.reasons,
            "retrained": self.retrained,
            "outcome": self.outcome,
            "champion_before": self.champion_before,
            "champion_after": self.champion_after,
            "candidate": self.candidate,
            "gate": None if self.gate is None else self.gate.to_dict(),
            "canary": None if self.canary is None else self.canary.to_dict(),
            "training_rows": self.training_rows,
            "training_data": self.training_data,
            "steps": self.steps,
        }

    def summary(self) -> str:
        head = {
            "skipped": "no retrain needed",
            "rejected": f"candidate v{self.candidate} rejected by the gate",
            "rolled-back": f"candidate v{self.candidate} rolled back during its canary",
            "inconclusive": f"candidate v{self.candidate} not promoted: its canary was "
            f"inconclusive ({self.canary.reason if self.canary else 'no canary'})",
            "promoted": f"candidate v{self.candidate} promoted to champion",
            "awaiting-approval": f"candidate v{self.candidate} passed; waits for approval",
        }[self.outcome]
        lines = [f"{self.model_name}: {head}"]
        lines.append(
            f"  champion: v{self.champion_before} → v{self.champion_after}"
            if self.champion_before != self.champion_after
            else f"  champion: v{self.champion_after} (unchanged)"
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------- triggers


def retrain_reasons(
    config: PipelineConfig,
    registry: Registry,
    monitored: MonitorResult | None,
    now: float | None = None,
) -> list[str]:
    """Which configured triggers fire: drift (the monitor's dataset verdict, weighted by
    feature importance by default), decay (a labelled
    window's metric fell below the version's test metric by more than allowed), schedule
    (the champion is older than the configured period)."""
    policy = config.retrain
    name = config.registry.model_name
    reasons: list[str] = []
    if "drift" in policy.triggers and monitored is not None and monitored.drift_detected:
        # The monitor's dataset verdict: importance-weighted (and the prediction's own drift)
        # unless monitor.verdict is 'share' or the version stores no importance.
        reasons.append(f"drift ({monitored.dataset.method}): {monitored.dataset.explain()}")
    if "decay" in policy.triggers and monitored is not None and monitored.performance:
        info = registry.version_info(name, monitored.version)
        metric = policy.decay_metric or _default_decay_metric(monitored)
        baseline = info.metrics.get(f"test_{metric}")
        windows = [w for w in monitored.performance_windows if metric in w.metrics]
        latest = windows[-1] if windows else monitored.performance[-1]
        value = latest.metrics.get(metric)
        if baseline is not None and value is not None:
            worse = baseline - value if _higher_is_better(metric) else value - baseline
            if worse > policy.max_decay:
                reasons.append(
                    f"decay: {metric} {value:.4f} on {latest.rows} labelled rows vs "
                    f"{baseline:.4f} at training (allowed drop {policy.max_decay:g})"
                )
    if "schedule" in policy.triggers and policy.schedule:
        period = parse_duration(policy.schedule)
        champion = registry.alias_target(name, RETRAIN_ALIAS)
        if champion is not None:
            age = (now or time.time()) - registry.version_info(name, champion).created
            if age > period.total_seconds():
                reasons.append(f"schedule: champion v{champion} is older than {policy.schedule}")
    return reasons


def _default_decay_metric(monitored: MonitorResult) -> str:
    first = monitored.performance[0].metrics
    for candidate in ("accuracy", "f1_macro", "rmse", "mae"):
        if candidate in first:
            return candidate
    return next(iter(first))


def _higher_is_better(metric: str) -> bool:
    return not any(part in metric for part in ("loss", "rmse", "mae", "mse", "error"))


# --------------------------------------------------------------------------- training data


def build_training_data(config: PipelineConfig, home: Path, recent: str | None) -> tuple[str, int]:
    """The new training set: the reference data (if configured) plus recent labelled rows,
    aligned to the reference's columns, written as one Parquet file under the shared
    `storage` when one is configured (a cluster's trials read it from any node), else under
    home. The reference is copied batch by batch, so data too large for memory
    (`data.streaming`) stays so."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raymlops.core.storage import join, open_location, storage_root
    from raymlops.data.dataset import iter_tables, load_table

    policy = config.retrain
    if not policy.include_reference and not recent:
        raise UserInputError(
            "retrain has no data: set retrain.recent_data or retrain.include_reference"
        )
    root = storage_root(config.storage) or str(home)
    location = join(root, "retrain", config.registry.model_name, time.strftime("%Y%m%d-%H%M%S"))
    fs, folder = open_location(location)
    fs.create_dir(folder, recursive=True)
    target, hidden = f"{folder}/train.parquet", f"{folder}/.train.parquet.tmp"
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        schema = None
        for table in iter_tables(config.data.path, config.data.format):
            schema = table.schema
            if not policy.include_reference:
                break  # only its columns are needed
            if writer is None:
                writer = pq.ParquetWriter(hidden, schema, filesystem=fs)
            writer.write_table(table)
            rows += table.num_rows
        if schema is None:
            raise UserInputError(f"the training data {config.data.path} has no rows")
        if recent:
            fresh = load_table(recent)
            unlearned = {*config.data.id_columns, *config.data.drop_columns}
            missing = [c for c in schema.names if c not in fresh.column_names]
            lacking = [c for c in missing if c not in unlearned]
            if lacking:
                raise UserInputError(
                    f"recent data {recent} lacks column(s) {', '.join(lacking)} of the "
                    "training data"
                )
            for name in missing:  # ids and dropped columns are never learned: left empty
                fresh = fresh.append_column(name, pa.nulls(fresh.num_rows, schema.field(name).type))
            fresh = fresh.select(schema.names).cast(schema, safe=False)
            if writer is None:
                writer = pq.ParquetWriter(hidden, schema, filesystem=fs)
            writer.write_table(fresh)
            rows += fresh.num_rows
    except BaseException:
        if writer is not None:
            writer.close()
        with contextlib.suppress(OSError, pa.ArrowException):
            fs.delete_file(hidden)
        raise
    assert writer is not None  # the reference or the recent rows were written
    writer.close()
    fs.move(hidden, target)  # a rename on disks; on object stores the file appears whole
    return join(location, "train.parquet"), rows


# --------------------------------------------------------------------------- the policy


def _watch_canary(
    target: CanaryTarget,
    version: int,
    percent: float,
    requests: int,
    minutes: float,
    poll_s: float,
    say: Callable[[str], None],
    min_requests: int = 1,
) -> CanaryOutcome:
    """Run the canary until it has answered `requests` requests (at least `min_requests`)
    or `minutes` have passed, or serving rolled it back. Time up with fewer than
    `min_requests` requests is inconclusive: too little traffic to judge it either way.

    A poll that serving does not answer decides nothing, also past the deadline: the
    watch goes on until serving answers or the target gives up on it (ServingCanary:
    after UNREACHABLE_GRACE_S), and ends unhealthy if it never does."""
    started = time.monotonic()
    requests = max(requests, min_requests)
    target.start_canary(version, percent)
    say(f"canary v{version} gets {percent:g}% of traffic; watching {requests} requests")
    deadline = started + minutes * 60
    seen = 0
    while True:
        reason = target.canary_rolled_back()
        count = target.canary_requests()
        if count is not None:
            seen = count
        if reason:
            return CanaryOutcome(version, seen, time.monotonic() - started, False, reason)
        if count is None:
            if time.monotonic() >= deadline + 2 * UNREACHABLE_GRACE_S:
                return CanaryOutcome(
                    version, seen, time.monotonic() - started, False,
                    "serving did not answer the canary's watcher",
                )  # fmt: skip
            time.sleep(poll_s)
            continue
        if seen >= requests:
            return CanaryOutcome(
                version, seen, time.monotonic() - started, True, f"{seen} healthy requests"
            )
        if time.monotonic() >= deadline:
            inconclusive = seen < min_requests
            return CanaryOutcome(
                version,
                seen,
                time.monotonic() - started,
                True,
                f"{minutes:g} min gave {seen} requests, fewer than the {min_requests} needed"
                if inconclusive
                else f"{minutes:g} min without a rollback ({seen} requests)",
                inconclusive=inconclusive,
            )
        time.sleep(poll_s)


def retraining_config(config: PipelineConfig, data_path: str) -> PipelineConfig:
    """The config a retraining search runs with: the retraining set (Parquet) as its data,
    and `retrain.num_samples` trials when set."""
    overrides: dict[str, Any] = {
        "data": {**config.data.model_dump(), "path": data_path, "format": "parquet"}
    }
    if config.retrain.num_samples is not None:
        overrides["tune"] = {**config.tune.model_dump(), "num_samples": config.retrain.num_samples}
    return type(config).model_validate({**config.model_dump(), **overrides})


def _canary_step(
    registry: Registry,
    config: PipelineConfig,
    canary: CanaryTarget,
    candidate: int,
    champion: int,
    by: str,
    say: Callable[[str], None],
) -> CanaryOutcome:
    """Give the candidate its canary share and watch it, then judge its quality on delayed
    labels (when the canary has them). An unhealthy or worse canary is ended and its
    rollback recorded in the alias history; an inconclusive one too, unless it is short of
    traffic only and serve.canary.on_inconclusive is `promote` (quality that a labels feed
    could not judge is never promoted). A failed quality check is unhealthy, and before a
    canary is let through serving must confirm it still runs. Whatever raises meanwhile
    ends the canary before it propagates."""
    policy = config.retrain
    settings = config.serve.canary
    try:
        outcome = _watch_canary(
            canary,
            candidate,
            policy.canary_percent,
            policy.canary_requests,
            policy.canary_minutes,
            policy.canary_poll_s,
            say,
            settings.min_requests,
        )
        if outcome.healthy and not outcome.inconclusive:
            _judge_quality(canary, outcome, say)
        if outcome.promotable(settings.on_inconclusive):
            # Serving may have rolled the canary back since the last poll: never promote
            # a version it rejected, nor one it no longer confirms serving.
            ended = _canary_ended(canary, policy.canary_poll_s)
            if ended is not None:
                outcome.healthy, outcome.inconclusive, outcome.reason = False, False, ended
    except BaseException:
        _end_canary_quietly(canary, say)
        raise
    if outcome.promotable(settings.on_inconclusive) and outcome.inconclusive:
        say(f"canary v{candidate} inconclusive ({outcome.reason}); promoted anyway")
        return outcome
    if outcome.promotable(settings.on_inconclusive):
        say(f"canary v{candidate} healthy: {outcome.reason}")
        return outcome
    _end_canary_quietly(canary, say)
    action = "retrain-inconclusive" if outcome.inconclusive else "retrain-rolled-back"
    say(
        f"canary v{candidate} inconclusive: {outcome.reason}; v{champion} stays champion"
        if outcome.inconclusive
        else f"canary v{candidate} rolled back: {outcome.reason}"
    )
    registry.record_event(
        config.registry.model_name,
        RETRAIN_ALIAS,
        action,
        from_version=candidate,
        to_version=champion,
        reason=outcome.reason,
        by=by,
        details=outcome.to_dict(),
    )
    return outcome


def _judge_quality(
    canary: CanaryTarget, outcome: CanaryOutcome, say: Callable[[str], None]
) -> None:
    """Judge the canary's quality on delayed labels into `outcome`: worse → unhealthy;
    a labels feed that judged nothing (too few labelled rows, unreadable) → inconclusive;
    the check failing (serving rolled the canary back meanwhile, or did not answer) →
    unhealthy, with serving's own reason when it rolled the canary back."""
    try:
        outcome.quality = canary.judge_canary()
    except Exception as exc:
        logger.warning("raymlops: the canary's quality check failed: %s", exc)
        try:
            rolled_back = canary.canary_rolled_back()
        except Exception:
            rolled_back = None
        outcome.healthy = False
        outcome.reason = rolled_back or f"the quality check failed: {exc}"
        return
    if outcome.quality is None:
        return
    verdict = outcome.quality.get("reason")
    say(f"canary v{outcome.version} quality: {verdict}")
    if outcome.quality.get("worse"):
        outcome.healthy = False
        outcome.reason = f"quality: {verdict}"
    elif not outcome.quality.get("judged"):
        outcome.inconclusive = True
        outcome.reason = f"quality: {verdict}"


def _canary_ended(canary: CanaryTarget, poll_s: float) -> str | None:
    """Why the canary is over now, or None once serving has answered that it still runs:
    polled until serving answers or gives up on it (at most 2 × UNREACHABLE_GRACE_S)."""
    deadline = time.monotonic() + 2 * UNREACHABLE_GRACE_S
    while True:
        reason = canary.canary_rolled_back()
        if reason:
            return reason
        if canary.canary_requests() is not None:
            return None
        if time.monotonic() >= deadline:
            return "serving did not answer before the promotion"
        time.sleep(poll_s)


def _end_canary_quietly(canary: CanaryTarget, say: Callable[[str], None]) -> None:
    """Take the canary off traffic on a path that already fails or refuses: its own
    failure is logged with its traceback and said, not raised over the first one."""
    try:
        canary.end_canary(promoted=False)
    except Exception as exc:
        logger.exception("raymlops: ending the canary failed")
        say(f"ending the canary failed ({exc}): check `raymlops serve status`")


def _promote_candidate(
    registry: Registry,
    config: PipelineConfig,
    candidate: int,
    gate: GateResult,
    reasons: list[str],
    canary: CanaryTarget | None,
    by: str,
    say: Callable[[str], None],
) -> PromotionDecision:
    """Promote the gated (and canaried) candidate under the config's promotion policy, then
    end its canary. When the promotion fails — refused (the champion moved meanwhile) or
    the registry unreachable — the canary is ended first, the failure recorded where the
    registry allows, and PromotionError says what happened and that the champion kept
    all traffic."""
    from raymlops.loop.governance import PromotionError, promote_if_passed

    name = config.registry.model_name
    try:
        decision = promote_if_passed(
            registry,
            name,
            candidate,
            gate,
            config=config,
            reason="retrained: " + "; ".join(reasons),
            by=by,
        )
    except Exception as exc:
        if canary is not None:
            _end_canary_quietly(canary, say)
        message = (
            f"candidate v{candidate} was not promoted: {exc}"
            + ("; its canary was ended" if canary is not None else "")
            + "; the champion keeps all traffic"
        )
        say(message)
        try:
            registry.record_event(
                name,
                RETRAIN_ALIAS,
                "retrain-promotion-failed",
                to_version=candidate,
                reason=str(exc),
                by=by,
            )
        except Exception:
            logger.exception("raymlops: recording the failed promotion failed")
        raise PromotionError(message) from exc
    if canary is not None:
        canary.end_canary(promoted=decision.promoted)
    return decision


def retrain(
    config: PipelineConfig,
    *,
    monitored: MonitorResult | None = None,
    force: bool = False,
    canary: CanaryTarget | None = None,
    recent_data: str | None = None,
    home: str | Path | None = None,
    address: str | None = None,
    by: str = "raymlops-retrain",
    echo: bool = True,
) -> RetrainResult:
    """One pass of the retrain policy: decide (drift / decay / schedule, or `force`), build
    the training set, train and register a candidate, gate it against the champion, give it a
    canary share of live traffic when `canary` is an endpoint, then promote or roll back.

    Without a live endpoint the canary step is skipped and the gated candidate is promoted
    directly (under `promotion: auto`). Every decision is appended to the alias history.
    """
    from raymlops.loop.gate import run_gate

    def say(message: str) -> None:
        steps.append(message)
        if echo:
            report(f"▸ {message}")

    steps: list[str] = []
    home_path = home_dir(home)
    registry = Registry.from_config(config, home_path)
    name = config.registry.model_name
    champion_before = registry.alias_target(name, RETRAIN_ALIAS)
    reasons = retrain_reasons(config, registry, monitored)
    if force:
        reasons.append("forced")
    if not reasons:
        verdict = monitored.verdict if monitored is not None else "not monitored"
        say(f"no trigger fired (monitor: {verdict}); nothing to do")
        return RetrainResult(
            name, [], False, "skipped", champion_before, champion_before, steps=steps
        )
    registry.record_event(
        name,
        RETRAIN_ALIAS,
        "retrain-start",
        from_version=champion_before,
        reason="; ".join(reasons),
        by=by,
    )
    say("retraining because " + "; ".join(reasons))

    fresh, trained, data_path, rows = _train_candidate(
        config, home_path, recent_data, address, echo, say
    )
    candidate = trained.version.version
    gate = run_gate(
        registry, config, name, candidate, by=by, fresh=fresh.fresh, fresh_note=fresh.note
    )
    say(f"gate: {'PASSED' if gate.passed else 'FAILED'} ({_gate_line(gate)})")
    result = RetrainResult(
        name,
        reasons,
        True,
        "rejected",
        champion_before,
        champion_before,
        candidate=candidate,
        gate=gate,
        training_rows=rows,
        training_data=data_path,
        steps=steps,
    )
    if not gate.passed:
        registry.record_event(
            name,
            RETRAIN_ALIAS,
            "retrain-rejected",
            from_version=champion_before,
            to_version=candidate,
            reason=_gate_line(gate),
            by=by,
        )
        return result
    return _deploy(registry, config, result, gate, canary, by, say)


def _train_candidate(
    config: PipelineConfig,
    home: Path,
    recent_data: str | None,
    address: str | None,
    echo: bool,
    say: Callable[[str], None],
) -> tuple[Any, TrainResult, str, int]:
    """Hold out the fresh rows, build the training set from the rest and train and register
    a candidate on it: (fresh rows, training result, training data path, its row count).
    The fresh slice the gate compares candidate and champion on never reaches training."""
    from raymlops.loop.fresh import hold_out_fresh
    from raymlops.loop.training import train_and_register

    fresh = hold_out_fresh(
        config, home, recent_data if recent_data is not None else config.retrain.recent_data
    )
    if fresh.fresh is not None:
        say(f"fresh rows for the champion comparison: {fresh.note}")
    data_path, rows = build_training_data(config, home, fresh.train)
    say(f"training set: {rows} rows → {data_path}")
    trained = train_and_register(
        retraining_config(config, data_path), address=address, home=home, echo=echo
    )
    candidate = trained.version.version
    say(f"registered candidate v{candidate} (test {_metrics_line(trained.test_metrics)})")
    return fresh, trained, data_path, rows


def _deploy(
    registry: Registry,
    config: PipelineConfig,
    result: RetrainResult,
    gate: GateResult,
    canary: CanaryTarget | None,
    by: str,
    say: Callable[[str], None],
) -> RetrainResult:
    """After a passed gate: a first version is already champion; otherwise the canary on
    the live endpoint (when there is one) and then the promotion, `result` updated."""
    name, champion_before, reasons = result.model_name, result.champion_before, result.reasons
    candidate = result.candidate
    assert candidate is not None  # set by retrain() before the gate
    if champion_before is None and registry.alias_target(name, RETRAIN_ALIAS) == candidate:
        # No champion before: the candidate became champion as the model's first version
        # and has now passed the thresholds part of the gate.
        result.champion_after, result.outcome = candidate, "promoted"
        say(f"champion is v{candidate}: the first version, gated on thresholds only")
        return result

    if canary is not None and champion_before is not None:
        result.canary = _canary_step(registry, config, canary, candidate, champion_before, by, say)
        if not result.canary.healthy:
            result.outcome = "rolled-back"
            return result
        if not result.canary.promotable(config.serve.canary.on_inconclusive):
            result.outcome = "inconclusive"
            return result
    elif canary is None:
        say("no live endpoint: promotion follows the gate directly")

    decision = _promote_candidate(
        registry,
        config,
        candidate,
        gate,
        reasons,
        canary if champion_before is not None else None,
        by,
        say,
    )
    result.champion_after = registry.alias_target(name, RETRAIN_ALIAS)
    result.outcome = "promoted" if decision.promoted else "awaiting-approval"
    say(
        f"champion is now v{result.champion_after}"
        if decision.promoted
        else f"not promoted: {decision.reason}"
    )
    return result


def _metrics_line(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "loss")


def _gate_line(gate: GateResult) -> str:
    failed = gate.failed_checks
    if not failed:
        return f"{len(gate.checks)} checks passed"
    return "failed: " + ", ".join(f"{c.kind} {c.name}" for c in failed)


def retrain_once(
    config: PipelineConfig,
    *,
    force: bool = False,
    since: str | None = None,
    canary: CanaryTarget | None = None,
    recent_data: str | None = None,
    home: str | Path | None = None,
    address: str | None = None,
    echo: bool = True,
) -> RetrainResult:
    """`raymlops retrain`: monitor the model's traffic (unless `force`), then `retrain`."""
    from raymlops.core.errors import RaymlopsError
    from raymlops.monitor.run import monitor

    monitored: MonitorResult | None = None
    try:
        monitored = monitor(config, since=since, home=home, address=address, echo=echo)
    except RaymlopsError as exc:
        if not force:
            raise
        if echo:
            report(f"▸ monitoring skipped: {exc}")
    return retrain(
        config,
        monitored=monitored,
        force=force,
        canary=canary,
        recent_data=recent_data,
        home=home,
        address=address,
        echo=echo,
    )


def watch(
    config: PipelineConfig,
    *,
    interval: str | None = None,
    iterations: int | None = None,
    canary: CanaryTarget | None = None,
    home: str | Path | None = None,
    address: str | None = None,
    echo: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> list[RetrainResult]:
    """Monitor → retrain every `interval` (default `retrain.watch_interval`), forever or for
    `iterations` passes; each pass monitors only the traffic since the previous successful
    one. A pass that fails is logged with its traceback and tried again after a back-off
    (retrain.watch_retry_s, doubling up to watch_retry_max_s): watching goes on — except
    on a UserInputError (raised at once) or a DataError three passes in a row (raised):
    see `_repeat_passes`."""
    from raymlops.monitor.run import monitor

    policy = config.retrain
    period = parse_duration(interval or policy.watch_interval).total_seconds()
    since: str | None = config.monitor.since

    def one_pass() -> RetrainResult:
        nonlocal since
        started = time.time()
        monitored = monitor(config, since=since, home=home, address=address, echo=echo)
        result = retrain(
            config, monitored=monitored, canary=canary, home=home, address=address, echo=echo
        )
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
        return result

    return _repeat_passes(
        one_pass,
        period,
        retry_s=policy.watch_retry_s,
        retry_max_s=policy.watch_retry_max_s,
        iterations=iterations,
        sleep=sleep,
        echo=echo,
    )


def _repeat_passes(
    one_pass: Callable[[], RetrainResult],
    period_s: float,
    *,
    retry_s: float,
    retry_max_s: float,
    iterations: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    echo: bool = True,
) -> list[RetrainResult]:
    """Run `one_pass` every `period_s` (forever, or `iterations` passes, failed ones
    included) and return what the passes that succeeded returned.

    A pass that raises an Exception is logged with its traceback and the next try comes
    after `retry_s`, doubled for each failure in a row up to `retry_max_s`; a pass that
    succeeds resets the back-off. KeyboardInterrupt and SystemExit still stop it, and so
    does a UserInputError (a config or input only the user can fix: "retrain has no
    data"), raised at once — except a DataError, which is also what a log file removed by a
    compaction mid-read or a log not written yet look like: it is retried, and raised when
    `_DATA_ERROR_PASSES` passes in a row fail on it."""
    results: list[RetrainResult] = []
    passes = failures = data_failures = 0
    while iterations is None or passes < iterations:
        started = time.monotonic()
        try:
            results.append(one_pass())
            failures = data_failures = 0
            wait = max(0.0, period_s - (time.monotonic() - started))
        except DataError:
            data_failures += 1
            if data_failures >= _DATA_ERROR_PASSES:
                raise
            failures, wait = _failed_pass(passes, failures, retry_s, retry_max_s, echo)
        except UserInputError:
            raise
        except Exception:
            data_failures = 0
            failures, wait = _failed_pass(passes, failures, retry_s, retry_max_s, echo)
        passes += 1
        if iterations is None or passes < iterations:
            sleep(wait)
    return results


def _failed_pass(
    passes: int, failures: int, retry_s: float, retry_max_s: float, echo: bool
) -> tuple[int, float]:
    """Log the pass that failed (called inside its `except`, so the traceback is logged)
    and say when the next try comes: (failures in a row, seconds to wait)."""
    exc = sys.exc_info()[1]
    failures += 1
    wait = min(retry_s * 2.0 ** min(failures - 1, 60), retry_max_s)
    logger.exception(
        "raymlops watch: pass %d failed (%d in a row); next try in %g s",
        passes + 1,
        failures,
        wait,
    )
    if echo:
        report(f"▸ watch: pass failed ({exc}); next try in {wait:g} s")
    return failures, wait
