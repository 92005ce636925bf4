"""The parameter schemas of model architectures, by name: the part of an architecture that
config validation needs, without torch.

`model.params` in a config is checked against its architecture's schema when the config is
loaded, so a typo fails before anything runs. The schemas live here, below the config, and
the torch modules in `raymlops.model.architectures`, whose `register_architecture`
registers both. A user architecture named 'package.module:Name' is found by importing that
module, which registers it.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "MLPParams",
    "architecture_names",
    "import_modules",
    "params_schema",
    "register_params",
    "validate_params",
]


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


_SCHEMAS: dict[str, type[BaseModel]] = {"mlp": MLPParams}


def register_params(name: str, schema: type[BaseModel]) -> None:
    """Make `schema` the parameter schema of architecture `name`."""
    _SCHEMAS[name] = schema


def architecture_names() -> list[str]:
    """Names of the known architectures."""
    return sorted(_SCHEMAS)


def import_modules(modules: list[str]) -> None:
    """Import the modules of user architectures a config allows (importing one registers
    its architectures); ValueError naming one that cannot be imported."""
    for module_name in modules:
        try:
            importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(
                f"model.allowed_modules: cannot import '{module_name}': {exc}"
            ) from None


def params_schema(name: str) -> type[BaseModel]:
    """The parameter schema of architecture `name`, importing a 'package.module:Name'
    user architecture's module first (importing it registers it)."""
    if name not in _SCHEMAS and ":" in name:
        module_name = name.split(":", 1)[0]
        try:
            importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cannot import architecture module '{module_name}': {exc}") from None
    if name not in _SCHEMAS:
        known = ", ".join(architecture_names())
        raise ValueError(f"unknown architecture '{name}' (registered: {known})")
    return _SCHEMAS[name]


def validate_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check `params` against the architecture's schema; return them with defaults filled."""
    try:
        return params_schema(name).model_validate(params).model_dump(mode="json")
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ValueError(f"params.{loc}: {msg}") from None
