"""What submitting a step as a Ray job costs compared with running it in-process.

(a) `raymlops submit train` to a local head started with `ray start --head` (upload of the
working dir and of raymlops, the job driver's start, log streaming), against
(b) `raymlops train` in-process, which starts and stops a local Ray of its own.
Both train the same quick configuration of the embedded default into their own registry.
The head's start-up is reported separately; it is paid once per cluster, not per job.

    python benchmarks/job_overhead.py            # 3 repetitions
    python benchmarks/job_overhead.py --quick    # 1 repetition, under 3 minutes

The last line is one JSON object with `submit_vs_inprocess` ((a)/(b) wall time, median).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from raymlops.core.processes import stop_session

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
STEP = ["--set", "tune.num_samples=2", "--set", "train.epochs=5"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    env["RAYMLOPS_HOME"] = str(home)
    # As in an activated virtual environment: the job's `python` is this environment's.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _wait_for(address: str, head: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and head.poll() is None:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (401 without a token): the job API is up
        except OSError:
            time.sleep(0.5)
    sys.exit(f"the Ray head at {address} did not come up")


def _timed(command: list[str], home: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=_env(home), cwd=REPO)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="One repetition.")
    parser.add_argument("--repeats", type=int, default=3, help="Repetitions (default 3).")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    temp = tempfile.mkdtemp(prefix="rmo-bench-", dir="/tmp")
    dashboard = _free_port()
    address = f"http://127.0.0.1:{dashboard}"
    start = time.perf_counter()
    # --block in a session of its own: every process of this head can be stopped by
    # session id afterwards, leaving any other Ray on the machine alone.
    head = subprocess.Popen(
        [
            str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2",
            "--disable-usage-stats", f"--temp-dir={temp}", f"--port={_free_port()}",
            f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(Path(temp)),
        start_new_session=True,
    )  # fmt: skip
    submitted: list[float] = []
    inprocess: list[float] = []
    try:
        _wait_for(address, head)
        head_start = time.perf_counter() - start
        for rep in range(repeats):
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                submit = [str(BIN / "raymlops"), "submit", "train", "--address", address, *STEP]
                submitted.append(_timed(submit, Path(a)))
                inprocess.append(_timed([str(BIN / "raymlops"), "train", *STEP], Path(b)))
            print(
                f"rep {rep + 1}: submit {submitted[-1]:.2f}s, in-process {inprocess[-1]:.2f}s, "
                f"ratio {submitted[-1] / inprocess[-1]:.3f}",
                flush=True,
            )
    finally:
        stop_session(head.pid, term_s=5.0)
        shutil.rmtree(temp, ignore_errors=True)
    ratios = [s / i for s, i in zip(submitted, inprocess, strict=True)]
    figures = {
        "benchmark": "job_overhead",
        "submit_s": [round(s, 2) for s in submitted],
        "inprocess_s": [round(s, 2) for s in inprocess],
        "submit_vs_inprocess": round(statistics.median(ratios), 3),
        "submit_vs_inprocess_each": [round(r, 3) for r in ratios],
        "head_start_s": round(head_start, 2),
        "repeats": repeats,
    }
    print(
        f"submit vs in-process wall time, median of {repeats}: {figures['submit_vs_inprocess']}"
        " (goal ≤ 1.3)"
    )
    print(f"head start-up (once per cluster, not in the ratio): {head_start:.2f}s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
