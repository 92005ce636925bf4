"""The Ray session of a command: a local Ray of our own, a cluster joined by address, or the
cluster a `ray job submit` driver runs in; and what it has.

Every capability that runs on Ray enters it through `ray_session`, so how Ray is started
(quiet logs, no dashboard, token authentication) is decided once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["cluster_resources", "largest_free_cpus", "ray_session", "use_token_if_available"]


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Connect to Ray for the block: reuse a running session, join `address`, or start a
    local Ray sized to this machine and shut it down afterwards.

    A local Ray runs without its dashboard (faster to start, and a core's tenth less busy).
    Nothing of raymlops needs it: the placement groups of Ray Train trials that Tune
    stopped are freed by raymlops' keeper (`raymlops.train.guard`), not by Ray
    Train's cleaner, which asks the dashboard's state API."""
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kwargs: dict[str, object] = {
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "configure_logging": True,
    }
    if address or os.environ.get("RAY_ADDRESS"):
        # An explicit cluster, or the one a `ray job submit` driver runs in.
        ray.init(address=address, **kwargs)
    else:
        # address="local": always a fresh instance of our own, never a cluster that
        # `ray start` left running on this machine.
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            **kwargs,
        )
    try:
        yield
    finally:
        ray.shutdown()


def cluster_resources() -> dict[str, float]:
    """CPUs, GPUs and memory of the connected Ray cluster."""
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def largest_free_cpus() -> tuple[float, float] | None:
    """The most CPUs free on any one node right now (what one task or one placement-group
    bundle can get) and the most any one node has in all, or None when the cluster's
    resource state cannot be read. The cluster-wide free count can hide fragments: 0.5
    free on each of two nodes is one CPU free, but no 1-CPU trial fits anywhere."""
    import ray

    try:
        from ray.autoscaler.v2.sdk import get_cluster_resource_state

        state = get_cluster_resource_state(ray._private.worker.global_worker.gcs_client)
        alive = [n for n in state.node_states if n.total_resources.get("CPU", 0.0) > 0]
        free = max((float(n.available_resources.get("CPU", 0.0)) for n in alive), default=0.0)
        total = max((float(n.total_resources.get("CPU", 0.0)) for n in alive), default=0.0)
        return free, total
    except Exception:  # an internal API of Ray's: callers fall back to the totals
        return None


def use_token_if_available() -> None:
    """Send the token when one is at hand and RAY_AUTH_MODE is unset: the rule `ray.init`
    follows when it joins a cluster (Ray's job SDK alone sends no token unless
    RAY_AUTH_MODE=token). The token sources are Ray's own: $RAY_AUTH_TOKEN,
    $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    try:
        from ray._private.authentication import authentication_token_setup as setup
    except ImportError:  # a Ray without token authentication
        return
    quiet = logging.getLogger(setup.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "token authentication is enabled" notice
    try:
        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)
