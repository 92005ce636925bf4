"""An MLP whose data-parallel worker of rank 1 kills its own process once, mid-epoch, for
the worker-loss test of tests/integration/test_data_parallel.py.

Imported on demand by `raymlops.model.architectures`
through its 'package.module:name' name in every Ray
worker (the repository root must be on PYTHONPATH). The first time rank 1 has run
`KILL_AFTER` training forward passes, it appends `killed <pid>` to the file named by
$RAYMLOPS_TEST_KILL_LOG and sends itself SIGKILL — a real, unannounced worker death. The log
makes it happen once per test, across the restarted worker group.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from raymlops.model.architectures import MLP, MLPParams, register_architecture

KILL_LOG_ENV = "RAYMLOPS_TEST_KILL_LOG"
KILLED_WORKER = "tests.integration.killed_worker_arch:killed_worker"
#: Forward passes before the kill: past the second epoch of the test's data (a checkpoint
#: exists), before the last.
KILL_AFTER = 150


@register_architecture(KILLED_WORKER, MLPParams)
class KilledWorker(MLP):
    """An MLP; rank 1 of a Ray Train run dies once after KILL_AFTER training forwards."""

    def __init__(self, in_features: int, out_features: int, **params: object) -> None:
        super().__init__(in_features, out_features, **params)  # type: ignore[arg-type]
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == KILL_AFTER and _rank() == 1:
                log = Path(os.environ[KILL_LOG_ENV])
                if not log.exists() or not log.read_text().strip():
                    with log.open("a") as fh:
                        fh.write(f"killed {os.getpid()}\n")
                    os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)  # type: ignore[no-any-return]


def _rank() -> int:
    try:
        import ray.train

        return int(ray.train.get_context().get_world_rank())
    except Exception:  # not inside a Ray Train worker
        return -1
