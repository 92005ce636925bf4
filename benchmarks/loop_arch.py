"""Candidates that train and gate well but misbehave on live traffic, for the canary
scenarios of `benchmarks/loop_decisions.py`.

A user architecture registered under a 'package.module:name' name: the retraining search's
Tune workers, the gate (in the driver) and every Serve replica import this module (the
repository root must be on their PYTHONPATH, and the serving config lists it in
`model.allowed_modules`). Both are the plain MLP everywhere except inside a Ray Serve
replica, so that the fault shows only where the canary can catch it — the offline gate sees
a good model, as it would with a fault that only production inputs or hosts trigger.
"""

from __future__ import annotations

import time

import torch

from raymlops.model.architectures import MLP, MLPParams, register_architecture

ERRORS_IN_SERVING = "benchmarks.loop_arch:errors_in_serving"
SLOW_IN_SERVING = "benchmarks.loop_arch:slow_in_serving"
#: Extra seconds per forward pass of the slow candidate in a replica.
SLOW_SECONDS = 0.5


def _in_serve_replica() -> bool:
    """Whether this process is a Ray Serve replica (its replica context is set)."""
    try:
        from ray import serve

        serve.get_replica_context()
    except Exception:
        return False
    return True


@register_architecture(ERRORS_IN_SERVING, MLPParams)
class ErrorsInServing(MLP):
    """An MLP that, in a Serve replica, fails on every batch holding a row whose first
    (scaled) feature is positive: about half of single-row requests."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and _in_serve_replica() and bool((x[:, 0] > 0).any()):
            raise RuntimeError("loop_arch: this candidate fails on live traffic")
        out: torch.Tensor = super().forward(x)
        return out


@register_architecture(SLOW_IN_SERVING, MLPParams)
class SlowInServing(MLP):
    """An MLP that, in a Serve replica, takes SLOW_SECONDS longer per forward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and _in_serve_replica():
            time.sleep(SLOW_SECONDS)
        out: torch.Tensor = super().forward(x)
        return out
