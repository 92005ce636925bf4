"""Ray's, Serve's and MLflow's own log lines go to a file, so that a command shows only
raymlops' words (`--verbose` shows everything, as before).

Those lines come from several writers that raymlops does not own: Ray's core worker
(C++, written straight to file descriptor 2: e.g. Ray Data's actor pool, which always
hands its actors their transformer by reference, makes every batch run print a
"constructor arguments in the object store" error line), Serve's and Ray's Python
loggers (handlers bound to `sys.stderr`, created whenever Ray sees fit), MLflow's
database-migration notices, Python warnings, and the processes a command starts. One
redirect catches them all: file descriptor 2 becomes the log file, and raymlops' own
reporter writes to a duplicate of the original stderr. Nothing that writes to the
terminal on purpose is lost: the reporter, the command's error line and click's usage
errors (which come before a command runs) all reach it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from raymlops.core.report import Reporter, reporting

__all__ = ["KEEP_LOGS", "RoutedLogs", "route_foreign_logs"]

#: How many log files a home keeps (the oldest are removed when a new one starts).
KEEP_LOGS = 20


class RoutedLogs:
    """Where the foreign log lines of one command go (None: where they always went). Its
    own words go through the current reporter, which the block points at the terminal."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def hint(self) -> str:
        """`" (Ray's and MLflow's log: PATH)"` when the file holds something, else ''."""
        if self.path is None or not self.path.exists() or self.path.stat().st_size == 0:
            return ""
        return f" (Ray's and MLflow's log lines: {self.path})"


def _redirectable() -> bool:
    """Whether this process's stderr is file descriptor 2 itself (a terminal, a pipe, a
    file), not a stream a test harness or a notebook put in its place."""
    try:
        return sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _log_path(folder: Path, name: str) -> Path:
    """A new log file in `folder`, the oldest ones beyond `KEEP_LOGS` removed."""
    folder.mkdir(parents=True, exist_ok=True)
    old = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)
    for stale in old[: max(0, len(old) - KEEP_LOGS + 1)]:
        with contextlib.suppress(OSError):
            stale.unlink()
    return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{os.getpid()}.log"


@contextlib.contextmanager
def route_foreign_logs(folder: Path, name: str, *, verbose: bool = False) -> Iterator[RoutedLogs]:
    """For the block, send everything written to file descriptor 2 to a new log file in
    `folder` (named after the command `name`) and raymlops' reporter to the original
    stderr. Nothing is redirected with `verbose`, or when stderr is not descriptor 2 (a
    test's captured stream, a notebook): Ray's lines then show as they always did."""
    if verbose or not _redirectable():
        yield RoutedLogs(None)
        return
    path = _log_path(folder, name)
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(
        os.dup(saved),
        "w",
        buffering=1,
        encoding=sys.stderr.encoding or "utf-8",
        errors="backslashreplace",
    )
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 2)
        routed = RoutedLogs(path)
        try:
            with reporting(Reporter(stderr=terminal)):
                yield routed
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            terminal.flush()
            terminal.close()
    if path.stat().st_size == 0:
        path.unlink()
