"""Torch architectures for tabular data, behind a small registry of names.

An architecture is a `torch.nn.Module` class plus a pydantic schema of its keyword
arguments; registering both under a name lets configs, search spaces and saved artifacts
refer to it by that name. Saved models record only the name and the JSON parameters, so
loading one never runs code stored in an artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from raymlops.core.architecture_params import (
    MLPParams,
    architecture_names,
    params_schema,
    register_params,
    validate_params,
)

__all__ = [
    "MLP",
    "MLPParams",
    "build_model",
    "list_architectures",
    "register_architecture",
    "validate_params",
]


_MODULES: dict[str, type[nn.Module]] = {}

ModuleT = type[nn.Module]


def register_architecture(name: str, params: type[BaseModel]) -> Callable[[ModuleT], ModuleT]:
    """Class decorator: make `cls(in_features, out_features, **params)` available as `name`.

    `params` is a pydantic model (use `extra="forbid"`) describing the keyword arguments;
    config values are validated against it before any training starts.
    """

    def decorator(cls: ModuleT) -> ModuleT:
        _MODULES[name] = cls
        register_params(name, params)
        return cls

    return decorator


def list_architectures() -> list[str]:
    """Names of the registered architectures."""
    return architecture_names()


def build_model(
    name: str, params: dict[str, Any], in_features: int, out_features: int
) -> nn.Module:
    """Instantiate a registered architecture with validated parameters."""
    checked = params_schema(name).model_validate(params).model_dump()
    return _MODULES[name](in_features, out_features, **checked)


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


@register_architecture("mlp", MLPParams)
class MLP(nn.Module):
    """A multi-layer perceptron: [Linear → (BatchNorm) → activation → Dropout] × depth → Linear."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        depth: int = 2,
        width: int = 64,
        dropout: float = 0.1,
        activation: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = in_features
        for _ in range(depth):
            layers.append(nn.Linear(size, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size = width
        layers.append(nn.Linear(size, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]
