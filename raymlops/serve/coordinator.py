"""The Serve application's one-replica `Coordinator`: the routing table and the canary
figures, automatic rollbacks (on errors and latency, and on quality when the canary has a
labels feed: raymlops.serve.canary_quality), following the `champion` alias, and the
alias-history events of canary, promote and rollback (see raymlops.serve.app)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raymlops.core.config import ServeConfig
from raymlops.data.prediction_log import model_log_root
from raymlops.serve.app_shared import _registry, keep_replica_grpc_on_loopback, logger
from raymlops.serve.canary import (
    CHALLENGER,
    CHAMPION,
    SHADOW,
    RollbackPolicy,
    RoutingTable,
    StatsBook,
    follow_alias,
    rollback_reason,
)
from raymlops.serve.canary_quality import (
    QualityPolicy,
    QualityVerdict,
    judge_quality,
    log_columns,
    read_labels,
)
from raymlops.serve.prediction_log import read_log

__all__ = ["Coordinator"]


# --------------------------------------------------------------------------- coordinator


class Coordinator:
    """Routing table, canary figures, automatic rollback, alias following, events."""

    async def __init__(self, args: dict[str, Any]) -> None:  # type: ignore[misc]
        keep_replica_grpc_on_loopback()
        self.args = args
        self.cfg = ServeConfig.model_validate(args["serve"])
        self.model = str(args["model_name"])
        self.registry = _registry(args)
        self.policy = RollbackPolicy(
            self.cfg.canary.min_requests,
            self.cfg.canary.error_rate_margin,
            self.cfg.canary.p95_latency_margin_ms,
        )
        canary = self.cfg.canary
        self.quality_policy = QualityPolicy(
            canary.quality_margin, canary.quality_confidence, canary.quality_min_rows
        )
        self.label_column = canary.label_column or str(args.get("label_column") or "label")
        root = args.get("log_root")
        self.log_root = None if root is None else model_log_root(str(root), self.model)
        #: The labels feed of the running canary (its own, else serve.canary.labels).
        self.canary_labels: str | None = None
        self.quality: dict[str, Any] | None = None
        #: Set while the registry names no champion (see _apply_alias), shown by status.
        self.alias_warning: str | None = None
        self.state_path = Path(args["home"]) / "serve" / "apps" / f"{args['app_name']}.json"
        self.table = RoutingTable(champion=int(args["version"]))
        self.events: list[dict[str, Any]] = []
        self.total = StatsBook()
        self.window = StatsBook()
        self.window_started = time.time()
        self.replicas: dict[str, dict[str, Any]] = {}
        self.started = time.time()
        self._restore()
        await asyncio.to_thread(self._warm_registry)
        self._tasks: set[asyncio.Task[Any]] = set()
        if self.cfg.follow_champion:
            self._spawn(self._follow_alias())
        self._spawn(self._watch_quality())

    # ------------------------------------------------------------------ replicas
    async def sync(
        self,
        replica_id: str,
        stats: list[dict[str, Any]],
        loaded: list[int],
        load_errors: dict[int, str],
    ) -> dict[str, Any]:
        """A replica's figures since its last call in, the routing table out."""
        delta = StatsBook.from_wire(stats)
        self.total.merge(delta)
        self.window.merge(delta)
        self.replicas[replica_id] = {
            "last_sync": time.time(),
            "loaded": sorted(loaded),
            "load_errors": {int(k): v for k, v in load_errors.items()},
        }
        challenger = self.table.challenger
        if challenger is not None and int(challenger) in {int(k) for k in load_errors}:
            self._auto_rollback(f"v{challenger} failed to load: {load_errors[challenger]}")
        elif challenger is not None and self.cfg.canary.auto_rollback:
            reason = rollback_reason(
                self.window.version(self.table.champion, [CHAMPION]),
                self.window.version(challenger, [CHALLENGER, SHADOW]),
                self.policy,
            )
            if reason is not None:
                self._auto_rollback(reason)
        return self.table.to_dict()

    # ------------------------------------------------------------------ commands
    async def status(self) -> dict[str, Any]:
        now = time.time()
        table = self.table

        def figures(book: StatsBook) -> list[dict[str, Any]]:
            return [
                {"version": v, "role": r, **s.summary()}
                for (v, r), s in sorted(book.entries.items())
            ]

        return {
            "app": self.args["app_name"],
            "model": self.model,
            "proxy": self.args.get("proxy"),
            "url": self.args.get("url"),
            "routing": table.to_dict(),
            "follow_champion": self.cfg.follow_champion,
            "auto_rollback": self.cfg.canary.auto_rollback,
            "policy": {
                "min_requests": self.policy.min_requests,
                "error_rate_margin": self.policy.error_rate_margin,
                "p95_latency_margin_ms": self.policy.p95_latency_margin_ms,
            },
            "since_deploy": figures(self.total),
            "since_canary": figures(self.window),
            "window_started": self.window_started,
            "replicas": {
                rid: {**info, "last_sync_age_s": round(now - info["last_sync"], 2)}
                for rid, info in self.replicas.items()
                if now - info["last_sync"] < 30
            },
            "events": self.events[-20:],
            "started": self.started,
            "canary_labels": self.canary_labels,
            "quality": self.quality,
            "warnings": [self.alias_warning] if self.alias_warning else [],
        }

    async def canary(
        self,
        version: int,
        percent: float,
        shadow_percent: float,
        by: str,
        reason: str,
        labels: str | None = None,
    ) -> dict[str, Any]:
        """Give `version` a share of traffic (answered) and/or of mirrored requests; with
        `labels` (else serve.canary.labels) its quality is compared too."""
        version = int(version)
        if version == self.table.champion:
            return {"ok": False, "error": f"v{version} is already the champion"}
        if not (0 <= percent <= 100 and 0 <= shadow_percent <= 100):
            return {"ok": False, "error": "percent and shadow_percent must be within 0..100"}
        if percent + shadow_percent > 100:
            return {"ok": False, "error": "percent + shadow_percent cannot exceed 100"}
        if percent == 0 and shadow_percent == 0:
            return {"ok": False, "error": "give the challenger a percent or a shadow percent"}
        try:
            await asyncio.to_thread(self.registry.version_info, self.model, version)
        except Exception as exc:
            return {"ok": False, "error": str(exc)}
        old = self.table
        self.table = RoutingTable(
            champion=old.champion,
            challenger=version,
            percent=float(percent),
            shadow_percent=float(shadow_percent),
            previous_champion=old.previous_champion,
            epoch=old.epoch + 1,
        )
        self._reset_window()
        self.canary_labels = labels or self.cfg.canary.labels
        self.quality = None
        self._event(
            "canary-start",
            old.champion,
            version,
            reason or f"{percent:g}% answered, {shadow_percent:g}% shadowed",
            by,
            {"percent": percent, "shadow_percent": shadow_percent, "labels": self.canary_labels},
        )
        self._save()
        return {"ok": True, "routing": self.table.to_dict()}

    async def promote(self, by: str, reason: str) -> dict[str, Any]:
        """Make the challenger the champion: registry alias first, then traffic."""
        old = self.table
        if old.challenger is None:
            return {"ok": False, "error": "no challenger to promote (start one: serve canary)"}
        details = {
            "champion": self.window.version(old.champion, [CHAMPION]).summary(),
            "challenger": self.window.version(old.challenger, [CHALLENGER, SHADOW]).summary(),
        }
        try:
            await asyncio.to_thread(
                self.registry.set_alias,
                self.model,
                CHAMPION,
                old.challenger,
                action="promote",
                reason=reason or "canary promoted by `raymlops serve promote`",
                by=by,
                details=details,
            )
        except Exception as exc:
            return {"ok": False, "error": str(exc)}
        self.table = RoutingTable(
            champion=old.challenger, previous_champion=old.champion, epoch=self.table.epoch + 1
        )
        self._reset_window()
        self._remember("promote", old.champion, old.challenger, reason, by)
        self._save()
        return {"ok": True, "routing": self.table.to_dict()}

    async def rollback(self, by: str, reason: str) -> dict[str, Any]:
        """Stop a canary; without one, return to the previous champion (alias included)."""
        old = self.table
        if old.challenger is not None:
            self.table = RoutingTable(
                champion=old.champion,
                previous_champion=old.previous_champion,
                epoch=old.epoch + 1,
            )
            self._event(
                "rollback",
                old.challenger,
                old.champion,
                reason or "canary stopped by `raymlops serve rollback`",
                by,
                {"challenger": self.window.version(old.challenger, [CHALLENGER, SHADOW]).summary()},
            )
            self._save()
            return {"ok": True, "routing": self.table.to_dict()}
        if old.previous_champion is None:
            return {"ok": False, "error": "nothing to roll back: no canary and no earlier champion"}
        try:
            target = await asyncio.to_thread(self.registry.alias_target, self.model, CHAMPION)
            if target == old.champion:
                await asyncio.to_thread(
                    self.registry.set_alias,
                    self.model,
                    CHAMPION,
                    old.previous_champion,
                    action="rollback",
                    reason=reason or "rolled back by `raymlops serve rollback`",
                    by=by,
                    expected_from=old.champion,
                )
        except Exception as exc:
            return {"ok": False, "error": str(exc)}
        self.table = RoutingTable(champion=old.previous_champion, epoch=old.epoch + 1)
        self._reset_window()
        self._remember("rollback", old.champion, old.previous_champion, reason, by)
        self._save()
        return {"ok": True, "routing": self.table.to_dict()}

    async def judge(self) -> dict[str, Any]:
        """Compare the running canary's quality with the champion's now, on the labelled
        requests each answered since the canary started; a challenger worse beyond the
        margin is rolled back (under canary.auto_rollback). The verdict is None without a
        labels feed; labels that cannot be read give a verdict that judged nothing."""
        table = self.table
        if table.challenger is None:
            return {"ok": False, "error": "no canary is running (start one: serve canary)"}
        labels = self.canary_labels
        if not labels:
            return {"ok": True, "quality": None, "routing": table.to_dict()}
        try:
            verdict = await asyncio.to_thread(
                self._judge_quality, table.champion, table.challenger, labels
            )
            self.quality = verdict.to_dict()
        except Exception as exc:
            logger.warning("raymlops: judging the canary's quality failed: %s", exc)
            self.quality = {"judged": False, "worse": False, "reason": f"quality not judged: {exc}"}
            return {"ok": True, "quality": self.quality, "routing": self.table.to_dict()}
        if verdict.worse and self.cfg.canary.auto_rollback and self.table.epoch == table.epoch:
            self._auto_rollback(f"quality: {verdict.reason}")
        return {"ok": True, "quality": self.quality, "routing": self.table.to_dict()}

    def _judge_quality(self, champion: int, challenger: int, labels: str) -> QualityVerdict:
        if self.log_root is None:
            raise RuntimeError("the prediction log is off (serve.prediction_log.enabled)")
        # Only the columns the losses need, and the labels of the logged requests only:
        # this runs every quality interval beside the routing.
        log = read_log(self.log_root, self.window_started, columns=log_columns)
        keep = (
            pc.unique(log.column("request_id").combine_chunks()).cast(pa.string())
            if "request_id" in log.column_names
            else pa.array([], pa.string())
        )
        return judge_quality(
            log,
            read_labels(labels, self.label_column, keep=keep),
            champion,
            challenger,
            self.quality_policy,
        )

    async def _watch_quality(self) -> None:
        """Judge a labelled canary's quality every canary.quality_interval_s."""
        while True:
            await asyncio.sleep(self.cfg.canary.quality_interval_s)
            if self.table.challenger is None or not self.canary_labels:
                continue
            if not self.cfg.canary.auto_rollback:
                continue
            try:
                await self.judge()
            except Exception:
                logger.exception("raymlops: the canary's quality check failed")

    # ------------------------------------------------------------------ internals
    def _auto_rollback(self, reason: str) -> None:
        old = self.table
        assert old.challenger is not None
        details = {
            "champion": self.window.version(old.champion, [CHAMPION]).summary(),
            "challenger": self.window.version(old.challenger, [CHALLENGER, SHADOW]).summary(),
            "percent": old.percent,
            "shadow_percent": old.shadow_percent,
        }
        self.table = RoutingTable(
            champion=old.champion, previous_champion=old.previous_champion, epoch=old.epoch + 1
        )
        logger.warning("raymlops: challenger v%s rolled back: %s", old.challenger, reason)
        self._event(
            "auto-rollback", old.challenger, old.champion, reason, "raymlops-serve", details
        )
        self._save()

    def _reset_window(self) -> None:
        self.window = StatsBook()
        self.window_started = time.time()

    def _remember(
        self, action: str, from_v: int | None, to_v: int | None, reason: str, by: str
    ) -> None:
        self.events.append(
            {
                "time": time.time(),
                "action": action,
                "from_version": from_v,
                "to_version": to_v,
                "reason": reason,
                "by": by,
            }
        )
        del self.events[:-50]

    def _event(
        self,
        action: str,
        from_v: int | None,
        to_v: int | None,
        reason: str,
        by: str,
        details: dict[str, Any],
    ) -> None:
        """Keep the event for `status` and append it to the registry's alias history."""
        self._remember(action, from_v, to_v, reason, by)

        async def record() -> None:
            try:
                await asyncio.to_thread(
                    self.registry.record_event,
                    self.model,
                    CHALLENGER,
                    action,
                    from_version=from_v,
                    to_version=to_v,
                    reason=reason,
                    by=by,
                    details=details,
                )
            except Exception:
                logger.exception("raymlops: recording %s in the registry failed", action)

        self._spawn(record())

    def _warm_registry(self) -> None:
        """Import MLflow and open the store once, before anything runs in threads: a
        replacement coordinator's alias poll and a command arriving at once each imported
        MLflow in its own thread, and one of them failed on the partially imported module
        ("partially initialized module 'mlflow'"), refusing `serve canary`."""
        try:
            self.registry.alias_target(self.model, CHAMPION)
        except Exception as exc:  # the registry down: the commands will say so
            logger.warning("raymlops: the registry did not answer at start: %s", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_alias(self) -> None:
        """Serve whatever version the registry's `champion` alias points to."""
        while True:
            await asyncio.sleep(self.cfg.alias_poll_interval_s)
            try:
                target = await asyncio.to_thread(self.registry.alias_target, self.model, CHAMPION)
            except Exception as exc:
                logger.warning("raymlops: reading the champion alias failed: %s", exc)
                continue
            await self._apply_alias(target)

    async def _apply_alias(self, target: int | None) -> None:
        """Route to the alias's `target` (raymlops.serve.canary.follow_alias). A cleared
        alias keeps the version serving that it named — stopping would fail every request
        — and `status` warns, with the registry's reason for clearing it, until a version
        is champion again."""
        if target is None:
            if self.alias_warning is None:
                why = await asyncio.to_thread(self._cleared_reason)
                self.alias_warning = (
                    f"champion alias cleared: still serving v{self.table.champion}, which "
                    f"the registry no longer names champion ({why})"
                )
                logger.warning("raymlops: %s", self.alias_warning)
            return
        self.alias_warning = None
        old = self.table
        table = follow_alias(old, target)
        if table is None:
            return
        self.table = table
        self._reset_window()
        self._remember("follow-alias", old.champion, target, "registry alias moved", "registry")
        logger.info("raymlops: champion alias moved v%s -> v%s", old.champion, target)
        self._save()

    def _cleared_reason(self) -> str:
        """Why the registry cleared the champion alias: its last clearing event's reason."""
        try:
            history = self.registry.alias_history(self.model)
        except Exception as exc:
            return f"its history could not be read: {exc}"
        for event in reversed(history):
            if event.alias == CHAMPION and event.to_version is None and event.moved:
                return str(event.reason or event.action)
        return "the registry names no champion"

    def _save(self) -> None:
        state = {
            "deploy_id": self.args["deploy_id"],
            "table": self.table.to_dict(),
            "events": self.events[-50:],
            "canary_labels": self.canary_labels,
        }
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.state_path)
        except OSError as exc:
            logger.warning("raymlops: could not save the routing state: %s", exc)

    def _restore(self) -> None:
        """After a coordinator restart, continue with the routing of this deployment."""
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return
        if state.get("deploy_id") == self.args["deploy_id"]:
            self.table = RoutingTable.from_dict(state["table"])
            self.events = list(state.get("events", []))
            self.canary_labels = state.get("canary_labels")
