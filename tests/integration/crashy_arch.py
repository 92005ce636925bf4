"""User architectures that crash on construction, for the trial-retry tests.

Imported on demand by `raymlops.model.architectures`
through their 'package.module:name' names, in the
driver and in every Ray worker (the repository root must be on PYTHONPATH). Each
construction appends one line `<kind> <pid>` to the file named by $RAYMLOPS_TEST_CRASH_LOG,
so a test can count attempts across processes.
"""

from __future__ import annotations

import os
from pathlib import Path

from raymlops.model.architectures import MLP, MLPParams, register_architecture

CRASH_LOG_ENV = "RAYMLOPS_TEST_CRASH_LOG"
CRASH_ONCE = "tests.integration.crashy_arch:crash_once"
ALWAYS_CRASH = "tests.integration.crashy_arch:always_crash"


def _record(kind: str) -> int:
    """Append an attempt to the log; return how many attempts were logged before it."""
    log = os.environ.get(CRASH_LOG_ENV)
    if not log:
        raise RuntimeError(f"${CRASH_LOG_ENV} is not set in this process")
    path = Path(log)
    before = len(path.read_text().splitlines()) if path.exists() else 0
    with path.open("a") as fh:
        fh.write(f"{kind} {os.getpid()}\n")
    return before


@register_architecture(CRASH_ONCE, MLPParams)
class CrashOnce(MLP):
    """An MLP whose very first construction (per crash log) raises RuntimeError."""

    def __init__(self, in_features: int, out_features: int, **params: object) -> None:
        if _record("crash_once") == 0:
            raise RuntimeError("crashy_arch: simulated crash on the first attempt")
        super().__init__(in_features, out_features, **params)  # type: ignore[arg-type]


@register_architecture(ALWAYS_CRASH, MLPParams)
class AlwaysCrash(MLP):
    """An MLP that can never be built."""

    def __init__(self, in_features: int, out_features: int, **params: object) -> None:
        _record("always_crash")
        raise RuntimeError("crashy_arch: simulated crash on every attempt")
