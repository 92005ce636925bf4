"""Where a model's prediction log lives and how it is partitioned — the one description of
the layout that serving writes and monitoring reads:

    <root>/<model_name>/date=YYYY-MM-DD/version=<N>/part-<uuid>.parquet

`<root>` is `serve.prediction_log.uri` when set (any pyarrow filesystem URI), else
`<storage>/predictions` when the config's shared `storage` is set, else
`<RAYMLOPS_HOME>/predictions`.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from raymlops.core.storage import join, storage_root

if TYPE_CHECKING:
    from raymlops.core.config import PipelineConfig

__all__ = [
    "DEFAULT_FOLDER",
    "configured_log",
    "log_root",
    "model_log_root",
    "parse_partition",
    "partition",
]

#: The log's root under the home folder when no URI is configured.
DEFAULT_FOLDER = "predictions"
_DATE_PART = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})(?:/|$)")
_VERSION_PART = re.compile(r"(?:^|/)version=(\d+)(?:/|$)")


def log_root(uri: str | None, home: Path, storage: str | None = None) -> str:
    """The root every model's log lives under: `uri`, else `<storage>/predictions`, else
    `<home>/predictions`."""
    if uri:
        return uri
    return join(storage, DEFAULT_FOLDER) if storage else str(home / DEFAULT_FOLDER)


def model_log_root(root: str, model_name: str) -> str:
    """The folder or URI of one model's log under the root."""
    return f"{root.rstrip('/')}/{model_name}"


def configured_log(config: PipelineConfig, home: Path) -> str:
    """The folder or URI serving writes this config's model's log to."""
    root = log_root(config.serve.prediction_log.uri, home, storage_root(config.storage))
    return model_log_root(root, config.registry.model_name)


def partition(day: date | str, version: int) -> str:
    """The partition folder (relative to a model's log) of one day and model version."""
    text = day.isoformat() if isinstance(day, date) else day
    return f"date={text}/version={int(version)}"


def parse_partition(path: str) -> tuple[date | None, int | None]:
    """The day and model version a log file's path names (None where it names none)."""
    d = _DATE_PART.search(path)
    v = _VERSION_PART.search(path)
    return (date.fromisoformat(d.group(1)) if d else None, int(v.group(1)) if v else None)
