"""A deliberately useless architecture for the gate tests: it ignores its input and always
outputs zeros (so a classifier always predicts its first class).

Imported on demand by `raymlops.model.architectures` through its 'package.module:name' name, in the
driver and in every Ray worker (the repository root must be on PYTHONPATH).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from raymlops.model.architectures import register_architecture

CONSTANT = "tests.integration.constant_arch:constant"


class ConstantParams(BaseModel):
    """No hyperparameters."""

    model_config = ConfigDict(extra="forbid")


@register_architecture(CONSTANT, ConstantParams)
class Constant(nn.Module):
    """Zeros whatever the input; one (unused) parameter so that an optimiser can be built."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * 0.0 + self.bias * 0.0
