"""cli: the `raymlops` command — a thin shell that parses, calls the public API and renders.

Layer 7, the top: may import everything; nothing else imports it (or click).
"""

from raymlops.cli.main import cli, main

__all__ = ["cli", "main"]
