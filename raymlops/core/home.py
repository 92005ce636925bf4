"""Where the embedded default keeps its state (MLflow store, artifacts, Tune experiments)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "RAYMLOPS_HOME"


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The raymlops home folder: the argument, else $RAYMLOPS_HOME, else ./.raymlops."""
    chosen = home if home is not None else os.environ.get(ENV_HOME, ".raymlops")
    return Path(chosen).expanduser().resolve()
