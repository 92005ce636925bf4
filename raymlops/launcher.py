"""Where the work runs: a local Ray started for the duration of a command, or an existing
cluster (`--address`). Later steps add `ray job submit` here."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["cluster_resources", "ray_session"]


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Connect to Ray for the block: reuse a running session, join `address`, or start a
    local Ray sized to this machine and shut it down afterwards."""
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
        ray.init(
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
