"""What the library tells a person, through one reporter.

Library code never prints: it calls `say` (a line of progress or a result) and `progress`
(a bar over a known amount of work), and only when its caller asked (`echo=True`). Both go
to the current `Reporter`. The default one writes lines to stderr (results the caller asked
for to stdout, `err=False`) and draws the bar on a terminal, one line in logs — what the
command line shows. `reporting(...)` swaps it for a block: a notebook's, a test's, or
`Reporter()` subclassed to send the lines elsewhere.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Reporter", "aligned", "current", "progress", "reporting", "say"]

#: Seconds between two redraws of a bar on a terminal.
_REDRAW_S = 0.1
_WIDTH = 30


class Reporter:
    """Writes the library's lines and bars to the process's stderr/stdout, or to `stderr`
    when given: the terminal a command's own words go to while Ray's and MLflow's log
    lines are routed to a file (`raymlops.core.logs`)."""

    _stderr: TextIO | None = None  # a subclass need not call __init__

    def __init__(self, stderr: TextIO | None = None) -> None:
        self._stderr = stderr

    @property
    def stderr(self) -> TextIO:
        """Where lines for stderr and bars go."""
        return self._stderr if self._stderr is not None else sys.stderr

    def line(self, message: str, err: bool = True) -> None:
        """One line of text."""
        print(message, file=self.stderr if err else sys.stdout, flush=True)

    @contextmanager
    def bar(
        self, total: int, label: str, show_pos: bool = False
    ) -> Iterator[Callable[[int], None]]:
        """A progress bar over `total` units; yields the function that adds done units."""
        stream = self.stderr
        live = stream.isatty()
        done = 0
        drawn = 0.0

        def draw(final: bool = False) -> None:
            share = done / total if total else 1.0
            filled = round(share * _WIDTH)
            where = f"  {done:,}/{total:,}" if show_pos else f"  {share:4.0%}"
            text = f"\r{label}  [{'#' * filled}{'-' * (_WIDTH - filled)}]{where}"
            stream.write(text + ("\n" if final else ""))
            stream.flush()

        def update(units: int) -> None:
            nonlocal done, drawn
            done += units
            if live and time.monotonic() - drawn >= _REDRAW_S:
                drawn = time.monotonic()
                draw()

        if not live:
            self.line(label)
        try:
            yield update
        finally:
            if live:
                draw(final=True)


_current = Reporter()


def say(message: str, *, err: bool = True, when: bool = True) -> None:
    """Tell the person running raymlops `message` (stderr; stdout with `err=False`), if
    `when`: the `echo` flag of the API that asks, so that it stays quiet unless asked."""
    if when:
        _current.line(message, err)


def current() -> Reporter:
    """The reporter the library's lines go to now."""
    return _current


@contextmanager
def progress(total: int, label: str, *, show_pos: bool = False) -> Iterator[Callable[[int], None]]:
    """A progress bar over `total` units of work; yields `update(units_done)`."""
    with _current.bar(total, label, show_pos) as update:
        yield update


def aligned(
    rows: Sequence[Sequence[str]], *, indent: str = "  ", right: Collection[int] = ()
) -> list[str]:
    """`rows` as lines of columns, each as wide as its widest cell whatever the lengths
    (a fixed width breaks the columns of the row with the long name); the column numbers
    in `right` align right (figures), the others left. The last column is not padded."""
    widths = [
        max((len(row[i]) for row in rows if i < len(row)), default=0)
        for i in range(max((len(row) for row in rows), default=0))
    ]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        if cells and len(row) - 1 not in right:
            cells[-1] = row[-1]
        lines.append((indent + " ".join(cells)).rstrip())
    return lines


@contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Send the library's lines and bars to `reporter` for the block."""
    global _current
    previous, _current = _current, reporter
    try:
        yield reporter
    finally:
        _current = previous
