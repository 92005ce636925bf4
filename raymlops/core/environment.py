"""The training environment recorded on every model version."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = ("raymlops", "torch", "ray", "mlflow", "numpy", "pandas", "pyarrow")


def environment() -> dict[str, str]:
    """Python and key library versions of this process."""
    env = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = "unknown"
    return env


def code_version() -> str:
    """raymlops version plus the git commit of the working directory, when there is one."""
    version = environment()["raymlops"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path.cwd(),
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+git.{sha}" if sha else version
