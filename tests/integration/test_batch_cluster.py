"""Batch inference as a Ray job on a local cluster of two nodes (`ray start --head` and a
second `ray start --address`, 1 CPU each, temp dirs of their own, stopped by their PIDs):
the actor pool spreads over both nodes and the output is still every row exactly once.

The model is batch_support's slow MLP (every forward pass sleeps), so that neither actor can
finish all units before the other one has started: the test then proves the placement."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.integration.batch_support import (  # noqa: E402
    SLOW,
    SLOW_ENV,
    batch_config,
    read_output,
    register_model,
    unit_stats,
)
from tests.integration.test_jobs import (  # noqa: E402
    RAY,
    Node,
    _clean_env,
    _raymlops,
    _start_node,
)
from tests.ports import free_port  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.cluster]

ROWS, FILES = 8_000, 8


def _env() -> dict[str, str]:
    """The nodes' environment, which their workers and job drivers inherit: the repository
    on PYTHONPATH (for the slow architecture) and its delay."""
    env = _clean_env()
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    env[SLOW_ENV] = "0.5"
    return env


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """Two nodes of 1 CPU each; yields the job API address."""
    temp = tempfile.mkdtemp(prefix="rmo-", dir="/tmp")  # short: socket paths are limited
    gcs, dashboard = free_port(), free_port()
    api = f"http://127.0.0.1:{dashboard}"
    args = [
        "--head", "--num-cpus=1", f"--port={gcs}",
        f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]  # fmt: skip
    nodes: list[Node] = [_start_node(args, temp, _env(), api)]
    try:
        # A node joins a token-authenticated cluster with the token (~/.ray/auth_token).
        args = [f"--address=127.0.0.1:{gcs}", "--num-cpus=1",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}"]  # fmt: skip
        worker_temp = tempfile.mkdtemp(prefix="rmo-", dir="/tmp")
        env = {**_env(), "RAY_AUTH_MODE": "token"}
        nodes.append(_start_node(args, worker_temp, env, f"127.0.0.1:{gcs}"))
        yield api
    finally:
        for node in reversed(nodes):
            node.stop()
            shutil.rmtree(node.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A registry home with model 'bc' v1, its config file, and 8 input files."""
    from raymlops.data.dataset import synth_dataset

    root = tmp_path_factory.mktemp("cluster")
    data = root / "rows"
    synth_dataset(str(data), rows=ROWS, features=6, categorical=1, seed=5, chunk_rows=1_000)
    # Two forward passes of 0.5 s per unit: 8 s of work for one actor alone. executor ray:
    # these tests are about the cluster's actor pool; auto would run so small an input in
    # the job's driver.
    config = batch_config("bc", data, architecture=SLOW, batch_size=500, executor="ray")
    home = root / "home"
    register_model(config, home)
    jobdir = root / "job"
    jobdir.mkdir()
    (jobdir / "bc.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return home, jobdir, data


def _check(out: Path) -> set[str]:
    rows = read_output(out)
    assert len(rows) == ROWS and rows["id"].is_unique
    return {str(s["node_id"]) for s in unit_stats(out)}


def test_raymlops_submit_batch_runs_the_actors_on_both_nodes(
    cluster: str, setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    home, jobdir, data = setup
    out = tmp_path / "preds"
    proc = _raymlops(
        "submit", "batch", "-c", str(jobdir / "bc.yaml"), "--address", cluster,
        "--working-dir", str(jobdir), "--", "--input", str(data), "--output", str(out),
        home=home, env={"PYTHONPATH": _env()["PYTHONPATH"]},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "batch: SUCCEEDED" in proc.stdout
    assert f"{ROWS:,} in, {ROWS:,} out" in proc.stdout  # the job's streamed summary
    assert "on 2 node(s)" in proc.stdout, proc.stdout[-1500:]
    assert len(_check(out)) == 2  # units were written by actors on both nodes


def test_ray_job_submit_runs_jobs_batch(
    cluster: str, setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    home, jobdir, data = setup
    out = tmp_path / "preds"
    runtime = json.dumps({"env_vars": {"RAYMLOPS_HOME": str(home)}})
    proc = subprocess.run(
        [
            RAY, "job", "submit", "--address", cluster, "--working-dir", str(REPO),
            "--runtime-env-json", runtime, "--", "python", "jobs/batch.py",
            "-c", str(jobdir / "bc.yaml"), "--input", str(data), "--output", str(out),
        ],
        capture_output=True, text=True, env={**_env(), "RAY_AUTH_MODE": "token"},
        cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"batch bc v1 → {out}" in proc.stdout
    assert len(_check(out)) == 2
