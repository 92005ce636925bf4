"""The library's one reporter (raymlops.core.report): where lines and bars go, and how a
caller takes them over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raymlops.core.logs import KEEP_LOGS, route_foreign_logs
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


def test_say_is_quiet_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    say("hidden", when=False)
    say("shown", when=True)
    assert capsys.readouterr().err == "shown\n"


_ROUTED = """
import logging, os, sys
from pathlib import Path
from raymlops.core.logs import route_foreign_logs
from raymlops.core.report import progress, say

logging.basicConfig()  # a handler bound to sys.stderr, as Ray's and MLflow's are
with route_foreign_logs(Path(sys.argv[1]), "t", verbose=sys.argv[2] == "1") as routed:
    os.write(2, b"[E core_worker.cc:1] a C++ line\\n")
    logging.getLogger("ray.serve").warning("a Python log line")
    say("our own line")
    with progress(3, "our bar") as advance:
        advance(3)
    print(routed.path)
say("after the block")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_foreign_lines_go_to_a_file_and_ours_to_the_terminal(tmp_path: Path, verbose: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _ROUTED, str(tmp_path / "logs"), "1" if verbose else "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ours = ["our own line", "our bar", "after the block"]
    foreign = ["[E core_worker.cc:1] a C++ line", "WARNING:ray.serve:a Python log line"]
    if verbose:  # nothing routed: everything where it always went
        assert done.stdout.strip() == "None"
        assert done.stderr.splitlines() == [*foreign, *ours[:2], ours[2]]
        assert not (tmp_path / "logs").exists()
        return
    assert done.stderr.splitlines() == ours
    log = Path(done.stdout.strip())
    assert log.parent == tmp_path / "logs" and log.name.endswith(".log")
    assert log.read_text().splitlines() == foreign


def test_an_empty_log_is_removed_and_old_ones_are_pruned(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    for n in range(KEEP_LOGS + 5):
        (folder / f"old-{n:02d}.log").write_text("x")
        os.utime(folder / f"old-{n:02d}.log", (n, n))
    script = (
        "import sys; from pathlib import Path; from raymlops.core.logs import "
        "route_foreign_logs\nwith route_foreign_logs(Path(sys.argv[1]), 'quiet'): pass"
    )
    subprocess.run([sys.executable, "-c", script, str(folder)], check=True, timeout=60)
    left = sorted(p.name for p in folder.glob("*.log"))
    # The oldest went to make room for the new log, which was empty and so removed too.
    assert left == [f"old-{n:02d}.log" for n in range(6, KEEP_LOGS + 5)]


def test_under_a_captured_stderr_nothing_is_routed(tmp_path: Path) -> None:
    # pytest's capture (like a notebook's) replaces sys.stderr: no descriptor to redirect.
    with route_foreign_logs(tmp_path / "logs", "t") as routed:
        assert routed.path is None and routed.hint() == ""
    assert not (tmp_path / "logs").exists()
