"""The library's one reporter (raymlops.core.report): where lines and bars go, and how a
caller takes them over."""

from __future__ import annotations

import pytest

from raymlops.core.report import Reporter, progress, reporting, say


def test_lines_go_to_stderr_and_results_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    say("▸ step one")
    say("the summary", err=False)
    captured = capsys.readouterr()
    assert captured.err == "▸ step one\n"
    assert captured.out == "the summary\n"


def test_a_bar_off_a_terminal_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(10, "predicting 10 rows") as update:
        for _ in range(10):
            update(1)
    assert capsys.readouterr().err == "predicting 10 rows\n"


def test_a_caller_can_take_the_lines_over(capsys: pytest.CaptureFixture[str]) -> None:
    class Collect(Reporter):
        def __init__(self) -> None:
            self.lines: list[tuple[str, bool]] = []

        def line(self, message: str, err: bool = True) -> None:
            self.lines.append((message, err))

    with reporting(Collect()) as collected:
        say("▸ quiet please")
        with progress(3, "working") as update:
            update(3)
    assert collected.lines == [("▸ quiet please", True), ("working", True)]
    say("back to stderr")
    assert capsys.readouterr().err == "back to stderr\n"
