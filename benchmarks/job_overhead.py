"""What submitting a step as a Ray job costs compared with running it in-process.

(a) `raymlops submit train` to a local head started with `ray start --head` (upload of the
working dir and of raymlops, the job driver's start, log streaming), against
(b) `raymlops train` in-process, which starts and stops a local Ray of its own.
Both train the same quick configuration of the embedded default into their own registry.
The head's start-up is reported separately; it is paid once per cluster, not per job.

    python benchmarks/job_overhead.py            # 3 repetitions
    python benchmarks/job_overhead.py --quick    # 1 repetition, under 3 minutes
    python benchmarks/job_overhead.py --shared-nothing   # (a) on the shared-nothing cluster

`--shared-nothing` submits (a) instead to the three-node cluster of the tests
(tests/integration/shared_nothing.py: PostgreSQL behind an MLflow server, S3 on moto, a head
and two workers of 1 CPU each in mount namespaces of their own; root only), with Tune's
storage in S3; (b) stays in-process on the embedded SQLite store and local folders.

The last line is one JSON object with `submit_vs_inprocess` ((a)/(b) wall time, median).
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _timed(command: list[str], home: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env or _env(home), cwd=REPO)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="One repetition.")
    parser.add_argument("--repeats", type=int, default=3, help="Repetitions (default 3).")
    parser.add_argument(
        "--shared-nothing",
        action="store_true",
        help="Submit to the three-node shared-nothing cluster (S3 + PostgreSQL + MLflow server).",
    )
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    start = time.perf_counter()
    with _cluster(args.shared_nothing) as (address, laptop_env):
        head_start = time.perf_counter() - start
        submitted: list[float] = []
        inprocess: list[float] = []
        for rep in range(repeats):
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                submit = [str(BIN / "raymlops"), "submit", "train", "--address", address, *STEP]
                env = laptop_env(Path(a)) if laptop_env else None
                submitted.append(_timed(submit, Path(a), env))
                inprocess.append(_timed([str(BIN / "raymlops"), "train", *STEP], Path(b)))
            print(
                f"rep {rep + 1}: submit {submitted[-1]:.2f}s, in-process {inprocess[-1]:.2f}s, "
                f"ratio {submitted[-1] / inprocess[-1]:.3f}",
                flush=True,
            )
    ratios = [s / i for s, i in zip(submitted, inprocess, strict=True)]
    goal = 1.5 if args.shared_nothing else 1.3
    figures = {
        "benchmark": "job_overhead",
        "mode": "shared-nothing" if args.shared_nothing else "local-head",
        "submit_s": [round(s, 2) for s in submitted],
        "inprocess_s": [round(s, 2) for s in inprocess],
        "submit_vs_inprocess": round(statistics.median(ratios), 3),
        "submit_vs_inprocess_each": [round(r, 3) for r in ratios],
        "cluster_start_s": round(head_start, 2),
        "repeats": repeats,
    }
    print(
        f"submit vs in-process wall time, median of {repeats}: {figures['submit_vs_inprocess']}"
        f" (goal ≤ {goal})"
    )
    print(f"cluster start-up (once per cluster, not in the ratio): {head_start:.2f}s")
    print(json.dumps(figures))


@contextlib.contextmanager
def _cluster(shared_nothing: bool) -> Iterator[tuple[str, Any]]:
    """The job API to submit to, and the laptop's environment for it (None: `_env`)."""
    if shared_nothing:
        sys.path.insert(0, str(REPO))
        from tests.integration.shared_nothing import shared_nothing_cluster

        with shared_nothing_cluster() as cluster:
            storage = cluster.uri("bench")

            def laptop(home: Path) -> dict[str, str]:
                return {**cluster.laptop_env(home), "RAYMLOPS_STORAGE": storage}

            yield cluster.api, laptop
        return
    temp = tempfile.mkdtemp(prefix="rmo-bench-", dir="/tmp")
    dashboard = _free_port()
    address = f"http://127.0.0.1:{dashboard}"
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
    try:
        _wait_for(address, head)
        yield address, None
    finally:
        stop_session(head.pid, term_s=5.0)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
