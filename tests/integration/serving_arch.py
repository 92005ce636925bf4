"""Challengers that misbehave when served, for the canary tests.

Imported on demand by `raymlops.model.architectures`
through their 'package.module:name' names, in the
test process and in every Serve replica (the repository root must be on PYTHONPATH). Both
take the MLP's parameters and weights, so a trained champion's state dict loads into them.
"""

from __future__ import annotations

import time

import torch

from raymlops.model.architectures import MLP, MLPParams, register_architecture

RAISING = "tests.integration.serving_arch:raising"
SLOW = "tests.integration.serving_arch:slow"
SLOW_SECONDS = 0.3


@register_architecture(RAISING, MLPParams)
class RaisingMLP(MLP):
    """An MLP whose every forward pass fails."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("serving_arch: this challenger is broken")


@register_architecture(SLOW, MLPParams)
class SlowMLP(MLP):
    """An MLP that takes SLOW_SECONDS longer per forward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SLOW_SECONDS)
        out: torch.Tensor = super().forward(x)
        return out
