"""A local Ray for a test module, started the way raymlops starts its own."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Environment that would point raymlops somewhere other than the test's own home.
SCRUBBED_ENV = (
    "MLFLOW_TRACKING_URI",
    "RAY_ADDRESS",
    "RAYMLOPS_TUNE_STORAGE",
    "RAYMLOPS_DEBUG",
    "RAYMLOPS_HOME",
    "RAYMLOPS_SERVE_TOKEN",
)
#: What `raymlops.core.ray_session.ray_session` sets before it starts a Ray of its own.
RAY_SESSION_ENV = {
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@contextmanager
def local_ray(
    env: dict[str, str] | None = None, num_cpus: int = 2, **init: Any
) -> Iterator[dict[str, float]]:
    """A local Ray (no dashboard, quiet) for the block; yields its resources. Workers inherit
    this process's environment at `ray.init`: the scrubbed settings are gone, the repository
    root is on PYTHONPATH (test architectures are imported as tests.integration.*), and
    `env` is set."""
    import ray

    mp = pytest.MonkeyPatch()
    try:
        for name in SCRUBBED_ENV:
            mp.delenv(name, raising=False)
        pythonpath = os.environ.get("PYTHONPATH")
        mp.setenv("PYTHONPATH", str(REPO_ROOT) + (os.pathsep + pythonpath if pythonpath else ""))
        mp.syspath_prepend(str(REPO_ROOT))
        for name, value in {**RAY_SESSION_ENV, **(env or {})}.items():
            mp.setenv(name, value)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
            **init,
        )
        try:
            yield {k: float(v) for k, v in ray.cluster_resources().items()}
        finally:
            ray.shutdown()
    finally:
        mp.undo()


def wait_until_nothing_is_held(cpus: float, timeout_s: float = 60.0) -> None:
    """Wait until no placement group holds or waits for resources and `cpus` CPUs are free;
    fail naming what is still held after `timeout_s`."""
    import ray
    from ray.util.placement_group import placement_group_table

    deadline = time.monotonic() + timeout_s
    while True:
        live = {
            k: e["state"] for k, e in placement_group_table().items() if e["state"] != "REMOVED"
        }
        free = ray.available_resources().get("CPU", 0.0)
        if not live and free >= cpus:
            return
        assert time.monotonic() < deadline, f"still held: {live}, {free} CPUs free"
        time.sleep(0.5)
