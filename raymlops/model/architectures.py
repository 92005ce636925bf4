"""Torch architectures for tabular data, behind a small registry of names.

An architecture is a `torch.nn.Module` class plus a pydantic schema of its keyword
arguments; registering both under a name lets configs, search spaces and saved artifacts
refer to it by that name. Saved models record only the name and the JSON parameters, so
loading one never runs code stored in an artifact.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

__all__ = [
    "MLP",
    "MLPParams",
    "build_model",
    "list_architectures",
    "register_architecture",
    "validate_params",
]


@dataclass(frozen=True)
class _Architecture:
    module: type[nn.Module]
    params: type[BaseModel]


_REGISTRY: dict[str, _Architecture] = {}

ModuleT = type[nn.Module]


def register_architecture(name: str, params: type[BaseModel]) -> Callable[[ModuleT], ModuleT]:
    """Class decorator: make `cls(in_features, out_features, **params)` available as `name`.

    `params` is a pydantic model (use `extra="forbid"`) describing the keyword arguments;
    config values are validated against it before any training starts.
    """

    def decorator(cls: ModuleT) -> ModuleT:
        _REGISTRY[name] = _Architecture(cls, params)
        return cls

    return decorator


def list_architectures() -> list[str]:
    """Names of the registered architectures."""
    return sorted(_REGISTRY)


def _resolve(name: str) -> _Architecture:
    if name not in _REGISTRY and ":" in name:
        # 'package.module:Name' -> importing the module registers the architecture.
        module_name = name.split(":", 1)[0]
        try:
            importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cannot import architecture module '{module_name}': {exc}") from None
    if name not in _REGISTRY:
        known = ", ".join(list_architectures())
        raise ValueError(f"unknown architecture '{name}' (registered: {known})")
    return _REGISTRY[name]


def validate_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check `params` against the architecture's schema; return them with defaults filled."""
    arch = _resolve(name)
    try:
        return arch.params.model_validate(params).model_dump(mode="json")
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ValueError(f"params.{loc}: {msg}") from None


def build_model(
    name: str, params: dict[str, Any], in_features: int, out_features: int
) -> nn.Module:
    """Instantiate a registered architecture with validated parameters."""
    arch = _resolve(name)
    checked = arch.params.model_validate(params).model_dump()
    return arch.module(in_features, out_features, **checked)


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


class MLPParams(BaseModel):
    """Hyperparameters of the tabular MLP."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(2, ge=0, le=16, description="Hidden layers (0 = a linear model).")
    width: int = Field(64, ge=1, le=8192, description="Units per hidden layer.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout after each hidden layer.")
    activation: Literal["relu", "gelu", "silu", "tanh", "leaky_relu"] = Field(
        "relu", description="Non-linearity between layers."
    )
    batch_norm: bool = Field(False, description="BatchNorm after each hidden linear layer.")


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
