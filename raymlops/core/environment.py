"""The environment recorded on every model version, and who is acting in this process."""

from __future__ import annotations

import getpass
import os
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


def default_actor() -> str:
    """Who is acting when nobody says (recorded on runs, alias moves and audit entries):
    $RAYMLOPS_USER (a submitted job carries its submitter's), else the login name."""
    try:
        return os.environ.get("RAYMLOPS_USER") or getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"
