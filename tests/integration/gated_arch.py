"""Test architectures for the live-tracking tests, imported by name
('tests.integration.gated_arch:…') in the driver and in every Ray worker (the repository
root must be on PYTHONPATH).

- `gated`: an MLP whose training holds at the start of its third epoch until the file named
  by $RAYMLOPS_TEST_GATE exists, so a test sees a search mid-way: two epochs reported, the
  trial still running.
- `by_dropout`: an MLP whose `dropout` picks how its trial ends under ASHA: 0.9 cannot be
  built (the trial fails), 0.5 predicts the first class with full confidence (far worse
  than any trained model: ASHA stops it at its first rung), any other value trains.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from raymlops.model.architectures import MLP, MLPParams, register_architecture

GATE_ENV = "RAYMLOPS_TEST_GATE"
GATED = "tests.integration.gated_arch:gated"
BY_DROPOUT = "tests.integration.gated_arch:by_dropout"
#: How long a gated trial waits before it gives up (fails) rather than hang a test run.
GATE_TIMEOUT_S = 300.0


@register_architecture(GATED, MLPParams)
class Gated(MLP):
    """An MLP whose third `train()` call (the start of epoch 3) waits for the gate file."""

    def __init__(self, in_features: int, out_features: int, **params: object) -> None:
        super().__init__(in_features, out_features, **params)  # type: ignore[arg-type]
        self.epochs_started = 0

    def train(self, mode: bool = True) -> Gated:
        if mode and hasattr(self, "epochs_started"):
            self.epochs_started += 1
            if self.epochs_started == 3:
                _wait_for_gate()
        return super().train(mode)  # type: ignore[return-value]


def _wait_for_gate() -> None:
    gate = os.environ.get(GATE_ENV)
    if not gate:
        raise RuntimeError(f"${GATE_ENV} is not set in this process")
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gated_arch: {gate} did not appear within {GATE_TIMEOUT_S:g} s")
        time.sleep(0.05)


@register_architecture(BY_DROPOUT, MLPParams)
class ByDropout(MLP):
    """An MLP that fails to build (dropout 0.9), predicts nonsense (0.5) or trains."""

    def __init__(self, in_features: int, out_features: int, **params: object) -> None:
        if params.get("dropout") == 0.9:
            raise RuntimeError("gated_arch: this trial fails by design")
        super().__init__(in_features, out_features, **params)  # type: ignore[arg-type]
        self.nonsense = params.get("dropout") == 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if not self.nonsense:
            return out
        wrong = torch.full_like(out, -10.0)
        wrong[:, 0] = 10.0
        return out * 0.0 + wrong  # still a function of the weights: backward() works
