"""A cold model load in a process of its own (kept apart from the test modules so that
the processes a test starts import only the registry)."""

from __future__ import annotations

from raymlops.registry.store import Registry


def cold_load(home: str, name: str, version: int) -> str:
    """Fetch `name` v`version` into `home`'s model cache: "ok", or what went wrong."""
    try:
        folder, _ = Registry(home=home).download(name, version)
        return "ok" if (folder / "config.json").is_file() else f"no config.json in {folder}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
