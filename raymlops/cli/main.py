"""`raymlops …`: a thin shell over the public API; no logic of its own. The commands live in
one module per group (run, config, data, models, governance, predict, monitor, serve,
retrain); importing them here registers them on the `cli` group."""

from __future__ import annotations

import os
import sys

from raymlops.cli import (  # noqa: F401  (imported to register their commands)
    config,
    data,
    governance,
    log,
    models,
    monitor,
    predict,
    retrain,
    run,
    serve,
)
from raymlops.cli.base import _EXIT, cli

__all__ = ["cli", "main"]


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="raymlops")
    except SystemExit as exc:
        if _EXIT["fast"] and not exc.code:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise


if __name__ == "__main__":
    main()
