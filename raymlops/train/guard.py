"""Keeping a search's CPUs from being held for good: the placement-group keeper and the
stall watch.

A trial that is a Ray Train run owns a Train controller, and the controller a placement
group for its workers. When Tune stops the trial (ASHA, or the last epoch reported) it
kills the trial's process; the controller dies with it, but a placement group created by
an actor outlives that actor for as long as the job lives. Ray Train frees it with a
detached cleaner that asks the dashboard's state API whether the controller is alive —
and whose thread dies for good on the first GCS time-out, which on a loaded 2-CPU
machine leaves the finished trial's CPUs reserved and the next trials waiting forever.

raymlops does not depend on that cleaner:

- `PlacementGroupKeeper` is an actor owned by the search's driver. Every Train run of the
  search registers its worker group's placement group with it (`keeper_callback`, a Train
  worker-group callback) together with a handle of the controller. The keeper learns that
  a controller died from the actor call it keeps open on it (Ray's own actor-death signal,
  no dashboard), then removes the placement group. Every step retries on any error, so a
  GCS hiccup delays a removal instead of cancelling it. A trial whose Train run returned
  releases its groups itself (`release`); the driver releases what is left when the search
  ends (`finish`).
- `StallWatch` is the last line: a Tune callback and stopper that ends a search which made
  no progress for `tune.stall_timeout_s` while a placement group waits for resources and
  another one holds resources with nothing running in it, and says which.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.tune import Callback
from ray.tune.stopper import Stopper
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

__all__ = [
    "PlacementGroupKeeper",
    "StallWatch",
    "finish_keeper",
    "keeper_callback",
    "start_keeper",
    "take_stall",
]

logger = logging.getLogger(__name__)

#: Seconds between two sweeps of the keeper.
_SWEEP_S = 1.0
#: How long a placement group must be seen holding resources with nothing in them before
#: the stall watch counts it as stuck (a worker group just created is briefly empty).
_IDLE_CONFIRM_S = 15.0
#: Seconds between two inspections of the cluster once the search has made no progress.
_INSPECT_S = 5.0
_WAITING = ("PENDING", "RESCHEDULING")
#: What the stall watches of this process found, newest last: a resumed search runs the
#: watch Tune restored from the experiment, not the one its driver made.
_STALLS: list[str] = []


@dataclass
class _Held:
    trial_id: str
    controller: Any
    group: PlacementGroup
    probe: Any = None


def _state(group: PlacementGroup) -> str:
    return str(placement_group_table(group).get("state", "REMOVED"))


class PlacementGroupKeeper:
    """Removes each registered placement group once the Train controller that created it
    is gone (see the module docstring). Runs as a threaded actor of the search's driver."""

    def __init__(self, sweep_s: float = _SWEEP_S) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._removed: list[str] = []
        self._stop = threading.Event()
        self._sweep_s = sweep_s
        threading.Thread(target=self._loop, name="raymlops-pg-keeper", daemon=True).start()

    def register(self, trial_id: str, controller: Any, group: PlacementGroup) -> None:
        """Watch `group`, created by the Train controller `controller` of `trial_id`."""
        with self._lock:
            self._held[group.id.hex()] = _Held(trial_id, controller, group)

    def held(self) -> dict[str, str]:
        """Placement groups still watched: id → trial id."""
        with self._lock:
            return {key: held.trial_id for key, held in self._held.items()}

    def removed(self) -> list[str]:
        """Ids of the placement groups this keeper removed."""
        with self._lock:
            return list(self._removed)

    def release(self, trial_id: str) -> list[str]:
        """Remove every group of `trial_id` now: its Train run has returned, so its
        controller starts no other worker group."""
        with self._lock:
            mine = [key for key, held in self._held.items() if held.trial_id == trial_id]
        return [key for key in mine if self._remove(key)]

    def sweep(self) -> list[str]:
        """One pass: forget groups already removed, remove those whose controller died."""
        with self._lock:
            keys = list(self._held)
        return [key for key in keys if self._settle(key)]

    def finish(self, grace_s: float = 10.0) -> list[str]:
        """The search is over: wait up to `grace_s` for the controllers to go, then remove
        every group still held (no trial of the search runs any more)."""
        self._stop.set()
        deadline = time.monotonic() + grace_s
        removed: list[str] = []
        while self.held() and time.monotonic() < deadline:
            removed += self.sweep()
            time.sleep(0.2)
        return removed + [key for key in list(self.held()) if self._remove(key)]

    def _loop(self) -> None:
        while not self._stop.wait(self._sweep_s):
            self.sweep()

    def _settle(self, key: str) -> bool:
        """Whether the group under `key` was removed now because its controller died."""
        with self._lock:
            held = self._held.get(key)
        if held is None:
            return False
        try:
            if _state(held.group) == "REMOVED":
                self._forget(key)
                return False
            if held.probe is None:
                held.probe = held.controller.__ray_ready__.remote()
            ready, _ = ray.wait([held.probe], timeout=0)
            if not ready:
                return False  # the controller is busy: alive
            held.probe = None
            ray.get(ready[0])
            return False  # answered: alive
        except ray.exceptions.ActorUnavailableError:
            return False  # unreachable for now, not known dead: ask again
        except ray.exceptions.RayActorError:
            return self._remove(key)
        except Exception as exc:  # a GCS time-out and the like: try again next sweep
            logger.warning("raymlops: checking placement group %s failed: %s", key, exc)
            return False

    def _remove(self, key: str) -> bool:
        with self._lock:
            held = self._held.get(key)
        if held is None:
            return False
        try:
            if _state(held.group) != "REMOVED":
                remove_placement_group(held.group)
        except Exception as exc:
            logger.warning("raymlops: removing placement group %s failed: %s", key, exc)
            return False
        self._forget(key, removed=True)
        return True

    def _forget(self, key: str, removed: bool = False) -> None:
        with self._lock:
            self._held.pop(key, None)
            if removed:
                self._removed.append(key)


def start_keeper() -> Any:
    """A keeper actor for one search, on the driver's node, reserving no CPU."""
    actor = ray.remote(num_cpus=0, max_concurrency=4)(PlacementGroupKeeper)
    node = ray.get_runtime_context().get_node_id()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return actor.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)
    ).remote()


def finish_keeper(keeper: Any, grace_s: float = 10.0) -> list[str]:
    """End the search's keeper: release what its trials left, then stop the actor."""
    try:
        removed: list[str] = ray.get(keeper.finish.remote(grace_s), timeout=grace_s + 60)
    finally:
        ray.kill(keeper)
    return removed


def keeper_callback(keeper: Any, trial_id: str) -> Any:
    """A Ray Train worker-group callback (it runs in the Train controller) that registers
    each worker group's placement group with `keeper`."""
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    class _Register(WorkerGroupCallback):  # type: ignore[misc]
        def after_worker_group_start(self, worker_group: Any) -> None:
            state = worker_group.get_worker_group_state()
            group = state.placement_group_handle.placement_group
            controller = ray.get_runtime_context().current_actor
            try:
                ray.get(keeper.register.remote(trial_id, controller, group), timeout=60)
            except Exception as exc:  # the stall watch still guards the search
                logger.warning("raymlops: registering placement group %s failed: %s", group.id, exc)

    return _Register()


def _bundles(entry: dict[str, Any]) -> str:
    total: dict[str, float] = {}
    for bundle in entry.get("bundles", {}).values():
        for name, amount in bundle.items():
            total[name] = total.get(name, 0.0) + float(amount)
    return ", ".join(f"{amount:g} {name}" for name, amount in sorted(total.items()))


class StallWatch(Callback):  # type: ignore[misc]
    """Ends a search that cannot go on: no trial reported, started or ended for
    `stall_s` seconds, a placement group waits for resources, and another holds resources
    with nothing running in it. `stopper` stops the search; `message` says what is stuck."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.message: str | None = None
        self.stopper = _StallStopper(self)
        self._progress = time.monotonic()
        self._next_check = 0.0
        self._idle_since: dict[str, float] = {}

    def setup(self, **info: Any) -> None:
        # Also called on resume, where Tune restores this callback from its state.
        self._progress = time.monotonic()
        self._idle_since = {}
        self.message = None

    def _moved(self, *args: Any, **kwargs: Any) -> None:
        self._progress = time.monotonic()
        self._idle_since = {}

    on_trial_start = on_trial_result = on_trial_complete = _moved
    on_trial_error = on_trial_recover = _moved

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if self.message or self.stall_s <= 0 or now - self._progress < self.stall_s:
            return
        if now < self._next_check:
            return
        self._next_check = now + _INSPECT_S
        try:
            self.message = self.inspect(trials, now)
        except Exception as exc:  # inspecting is best effort; the search goes on
            logger.warning("raymlops: inspecting placement groups failed: %s", exc)
        if self.message:
            _STALLS.append(self.message)

    def inspect(self, trials: list[Any], now: float) -> str | None:
        """What is stuck, or None while the cluster does not look stuck."""
        table = placement_group_table()
        free = ray.available_resources()
        idle: dict[str, dict[str, Any]] = {}
        for key, entry in table.items():
            marker = f"bundle_group_{key}"
            if entry.get("state") == "CREATED" and free.get(marker, 0.0) >= 1000.0:
                idle[key] = entry
        self._idle_since = {key: self._idle_since.get(key, now) for key in idle}
        stuck = {k: e for k, e in idle.items() if now - self._idle_since[k] >= _IDLE_CONFIRM_S}
        waiting = _waiting(table) if stuck else []
        if not waiting:
            return None
        running = [str(t.trial_id) for t in trials if t.status == "RUNNING"]
        idle_text = "; ".join(f"{k[:12]}… holds {_bundles(e)}" for k, e in stuck.items())
        return (
            f"the search made no progress for {now - self._progress:.0f} s and is stuck: "
            f"{'; '.join(waiting)} while {len(stuck)} placement group(s) hold resources "
            f"with nothing running in them ({idle_text}); trials waiting: "
            f"{', '.join(running) or 'none'}. Stopped the search "
            "(raise tune.stall_timeout_s if an epoch really takes longer)"
        )


def _waiting(table: dict[str, dict[str, Any]]) -> list[str]:
    """What waits for resources: tasks and actors (from the GCS's resource state, what
    `ray status` shows as pending demand) and placement groups."""
    found: list[str] = []
    try:
        from ray.autoscaler.v2.sdk import get_cluster_resource_state

        state = get_cluster_resource_state(ray._private.worker.global_worker.gcs_client)
        for request in state.pending_resource_requests:
            bundle = ", ".join(
                f"{v:g} {k}" for k, v in sorted(request.request.resources_bundle.items())
            )
            found.append(f"{request.count} task(s) or actor(s) wait for {bundle}")
    except Exception as exc:  # an internal API: the placement groups still tell
        logger.debug("raymlops: reading the pending demand failed: %s", exc)
    found += [
        f"placement group {key[:12]}… waits for {_bundles(entry)}"
        for key, entry in table.items()
        if entry.get("state") in _WAITING
    ]
    return found


def take_stall() -> str | None:
    """The message of the last stall found in this process since the last call, if any."""
    found = _STALLS[-1] if _STALLS else None
    _STALLS.clear()
    return found


class _StallStopper(Stopper):  # type: ignore[misc]
    """Stops the whole search once its `StallWatch` found it stuck."""

    def __init__(self, watch: StallWatch) -> None:
        self.watch = watch

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.watch.message is not None
