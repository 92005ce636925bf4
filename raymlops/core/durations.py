"""Durations as users type them (`30m`, `2h`, `1d`, `1w`): no heavy imports, so that config
validation can use them."""

from __future__ import annotations

import re
from datetime import timedelta

from raymlops.core.errors import DataError

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d|day|days|w|wk)\s*$", re.I)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
_UNITS.update({"d": 86400, "day": 86400, "days": 86400, "w": 604800, "wk": 604800})


def parse_duration(text: str) -> timedelta:
    """`30m`, `2h`, `1d`, `1w` → a timedelta (DataError naming the value otherwise)."""
    match = DURATION.match(str(text))
    if not match:
        raise DataError(f"invalid duration '{text}' (expected e.g. 30m, 2h, 1d, 1w)")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise DataError(f"invalid duration '{text}': must be positive")
    return timedelta(seconds=seconds)
