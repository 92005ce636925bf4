"""Steps as Ray jobs against a real head started with `ray start --head` (issue: launcher).

The head runs in its own temp dir on free ports, so no other Ray on this machine finds it,
and is stopped by the PIDs of its own processes when the module ends.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raymlops.cluster.launcher import PIPELINE_STEPS
from raymlops.core.processes import session_processes, stop_session
from raymlops.registry.store import Registry
from tests.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.cluster]

BIN = Path(sys.executable).parent
RAYMLOPS = str(BIN / "raymlops")
RAY = str(BIN / "ray")
REPO = Path(__file__).resolve().parents[2]
QUICK = ["--set", "tune.num_samples=2", "--set", "train.epochs=2"]


def _clean_env() -> dict[str, str]:
    # RAY_AUTH_*: what an in-process test may have left in this process's environment (Ray
    # sets RAY_AUTH_MODE once it finds a token); each test here says what it wants.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "MLFLOW_", "RAY_AUTH_"))
    }
    env.pop("RAYMLOPS_HOME", None)
    env.pop("RAYMLOPS_TUNE_STORAGE", None)
    # As in an activated virtual environment: a job's `python` is this environment's.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class Node:
    """One `ray start --block` process and the session its Ray processes live in."""

    process: subprocess.Popen[bytes]
    temp: str

    def stop(self) -> None:
        """Stop every process of this node by PID (never `ray stop`, which would also stop
        the other Ray instances on this machine)."""
        sid = self.process.pid
        stop_session(sid, term_s=8.0, kill_s=10.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        assert session_processes(sid) == {}, "Ray processes survived"


def _start_node(args: list[str], temp: str, env: dict[str, str], ready: str) -> Node:
    log = open(Path(temp) / f"node-{len(os.listdir(temp))}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={temp}", *args],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    node = Node(process, temp)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError, ValueError):
            if ready.startswith("http"):
                try:
                    with urllib.request.urlopen(f"{ready}/api/version", timeout=2):
                        return node
                except urllib.error.HTTPError:
                    return node  # it answers (401 without a token): the job API is up
            elif (
                subprocess.run(
                    [RAY, "status", f"--address={ready}"], capture_output=True, env=env, timeout=30
                ).stdout.count(b" node_")
                >= 2
            ):
                return node
        time.sleep(0.5)
    node.stop()
    pytest.fail(f"ray start {' '.join(args)} did not come up:\n{Path(log.name).read_text()}")


def _start_head(num_cpus: int) -> tuple[Node, str, str]:
    """A head in a temp dir of its own on free ports; returns (node, GCS, job API)."""
    temp = tempfile.mkdtemp(prefix="rmo-", dir="/tmp")  # short: socket paths are limited
    gcs, dashboard = free_port(), free_port()
    api = f"http://127.0.0.1:{dashboard}"
    args = [
        "--head", f"--num-cpus={num_cpus}", f"--port={gcs}",
        f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]  # fmt: skip
    return _start_node(args, temp, _clean_env(), api), f"127.0.0.1:{gcs}", api


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """A one-node cluster (2 CPUs); yields its job API address."""
    node, _, api = _start_head(num_cpus=2)
    try:
        yield api
    finally:
        node.stop()
        shutil.rmtree(node.temp, ignore_errors=True)


def _raymlops(
    *args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    full_env = {**_clean_env(), "RAYMLOPS_HOME": str(home), **(env or {})}
    return subprocess.run(
        [RAYMLOPS, *args], capture_output=True, text=True, env=full_env, cwd=REPO, timeout=timeout
    )


def test_ray_job_submit_runs_jobs_train_and_registers(head: str, tmp_path: Path) -> None:
    runtime = json.dumps({"env_vars": {"RAYMLOPS_HOME": str(tmp_path)}})
    # Ray's CLI sends the token (~/.ray/auth_token here) once told the cluster uses tokens.
    proc = subprocess.run(
        [
            RAY, "job", "submit", "--address", head, "--working-dir", str(REPO),
            "--runtime-env-json", runtime, "--", "python", "jobs/train.py", *QUICK,
        ],
        capture_output=True, text=True, env={**_clean_env(), "RAY_AUTH_MODE": "token"},
        cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "registered breast-cancer v1" in proc.stdout
    versions = Registry(home=tmp_path).list_versions("breast-cancer")
    assert [v.version for v in versions] == [1]
    assert versions[0].aliases == ["champion"]


def test_raymlops_submit_streams_logs_and_records_the_job(head: str, tmp_path: Path) -> None:
    proc = _raymlops("submit", "train", "--address", head, *QUICK, home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The job's own output (streamed) and the final status line.
    assert "▸ tuning 2 trials" in proc.stdout + proc.stderr
    assert "registered breast-cancer v1" in proc.stdout
    assert "train: SUCCEEDED (job raymlops-train-" in proc.stdout
    submission_id = proc.stdout.split("(job ", 1)[1].split(",", 1)[0]

    registry = Registry(home=tmp_path)
    version = registry.version_info("breast-cancer", "champion")
    run = registry.client.get_run(version.run_id)
    assert run.data.tags["raymlops.job_submission_id"] == submission_id

    listed = _raymlops("jobs", "list", "--address", head, "--json", home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    jobs = {row["submission_id"]: row for row in json.loads(listed.stdout)}
    assert jobs[submission_id]["status"] == "SUCCEEDED"
    assert jobs[submission_id]["step"] == "train"

    logs = _raymlops("jobs", "logs", submission_id, "--address", head, home=tmp_path)
    assert "registered breast-cancer v1" in logs.stdout
    stop = _raymlops("jobs", "stop", submission_id, "--address", head, home=tmp_path)
    assert stop.returncode == 0 and "already ended" in stop.stdout


def test_failing_job_exits_nonzero_with_log_tail_retries_and_registers_nothing(
    head: str, tmp_path: Path
) -> None:
    proc = _raymlops(
        "submit", "train", "--address", head, "--max-retries", "1",
        "--set", f"data.path={tmp_path / 'missing.parquet'}", *QUICK, home=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "train: FAILED" in proc.stdout
    assert "attempt 2" in proc.stdout  # one retry, with a new submission id
    assert "data not found" in proc.stderr  # the job's log tail
    assert proc.stderr.strip().splitlines()[-1].startswith("error: step train failed")
    assert Registry(home=tmp_path).list_models() == []

    listed = json.loads(
        _raymlops("jobs", "list", "--address", head, "--json", home=tmp_path).stdout
    )
    failed = [r for r in listed if r["status"] == "FAILED" and r["step"] == "train"]
    assert len(failed) >= 2
    assert len({r["submission_id"] for r in failed}) == len(failed)


def test_run_with_a_job_address_runs_each_step_as_a_job(head: str, tmp_path: Path) -> None:
    """The main job as a chain of Ray jobs: every step succeeds in its own job, the steps
    hand over through the run folder, the chain's MLflow run names every job, and the
    endpoint the chain deployed on the cluster is gone at the end."""
    port = free_port()
    proc = _raymlops(
        "run", "--address", head, "--set", "tune.num_samples=2", "--set", "train.epochs=5",
        "--set", "retrain.canary_requests=60", "--set", f"serve.port={port}",
        home=tmp_path, timeout=900,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    ids = {}
    for step in PIPELINE_STEPS:
        assert f"{step}: SUCCEEDED (job raymlops-{step}-" in proc.stdout, step
        ids[step] = proc.stdout.split(f"{step}: SUCCEEDED (job ", 1)[1].split(",", 1)[0]
    assert "DRIFT" in out  # the monitor job's verdict on the traffic job's requests
    assert "the endpoint now answers with v2" in out
    assert "champion now: breast-cancer v2" in proc.stdout

    registry = Registry(home=tmp_path)
    assert sorted(v.version for v in registry.list_versions("breast-cancer")) == [1, 2]
    actions = [e.action for e in registry.alias_history("breast-cancer")]
    assert "retrain-start" in actions and "canary-start" in actions, actions

    # One MLflow run records the chain: each step's submission id and status.
    experiment = registry.client.get_experiment_by_name("breast-cancer")
    [chain] = registry.client.search_runs(
        [experiment.experiment_id], filter_string="tags.`raymlops.kind` = 'job-chain'"
    )
    assert chain.info.status == "FINISHED"
    for step, submission_id in ids.items():
        assert chain.data.tags[f"raymlops.job.{step}"] == submission_id
        assert chain.data.tags[f"raymlops.job.{step}.status"] == "SUCCEEDED"

    # What the steps left in the run folder, and the endpoint stopped by the finish job.
    [state_file] = tmp_path.glob("runs/*/state.json")
    state = json.loads(state_file.read_text())
    assert state["steps"][0][0].startswith("train")
    assert len(state["steps"]) == len(PIPELINE_STEPS)
    assert Path(state["card_path"]).is_file() and Path(state["report_path"]).is_file()
    assert pq.read_table(state["batch_output"]).num_rows == 569  # the embedded default's rows
    assert state["serving"] is False
    with pytest.raises(urllib.error.URLError):  # 404 (HTTPError) or refused: not served
        urllib.request.urlopen(f"{state['served_url']}/healthz", timeout=10)


def test_run_train_only_with_a_job_address_submits_train(head: str, tmp_path: Path) -> None:
    proc = _raymlops("run", "--address", head, "--train-only", *QUICK, home=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train: SUCCEEDED (job raymlops-train-" in proc.stdout
    assert [v.version for v in Registry(home=tmp_path).list_versions("breast-cancer")] == [1]


def _ray_job(head: str, home: Path, *entrypoint: str) -> subprocess.CompletedProcess[str]:
    """`ray job submit --working-dir REPO -- python jobs/…` as a user types it."""
    runtime = json.dumps({"env_vars": {"RAYMLOPS_HOME": str(home)}})
    return subprocess.run(
        [RAY, "job", "submit", "--address", head, "--working-dir", str(REPO),
         "--runtime-env-json", runtime, "--", "python", *entrypoint],
        capture_output=True, text=True, env={**_clean_env(), "RAY_AUTH_MODE": "token"},
        cwd=REPO, timeout=600,
    )  # fmt: skip


def test_ray_job_submit_runs_serve_monitor_retrain_and_lifecycle(head: str, tmp_path: Path) -> None:
    """Each lifecycle entrypoint, unchanged under `ray job submit`, acts on the cluster: the
    endpoint deployed by jobs/serve.py outlives its job and answers HTTP; jobs/monitor.py,
    jobs/lifecycle.py (one watch iteration) run beside it, though its replicas hold every CPU;
    `jobs/serve.py stop` removes it; jobs/retrain.py trains a candidate on the freed CPUs."""
    port = free_port()
    serve_args = ["--set", f"serve.port={port}"]
    trained = _raymlops("submit", "train", "--address", head, *QUICK, home=tmp_path)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]

    two = ["--set", "serve.autoscaling.min_replicas=2"]  # 2 replicas × 1 CPU, kept
    served = _ray_job(head, tmp_path, "jobs/serve.py", *serve_args, *two)
    assert served.returncode == 0, served.stdout[-3000:] + served.stderr[-3000:]
    # raymlops serve's line. (Its port is serve.port unless Serve already runs on this
    # cluster, e.g. started by an earlier test: then Serve keeps its own HTTP options.)
    found = re.search(r" at (http://127\.0\.0\.1:\d+\S*) \(proxy", served.stdout)
    assert found is not None, served.stdout[-3000:]
    url = found.group(1)
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    body = json.dumps({"instances": frame.head(3).to_dict(orient="records")}).encode()
    request = urllib.request.Request(
        f"{url.rstrip('/')}/predict", body, {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # after the job ended
        answer = json.loads(response.read())
    assert answer["version"] == 1 and len(answer["predictions"]) == 3

    traffic = tmp_path / "traffic.parquet"
    pd.concat([frame] * 3, ignore_index=True).to_parquet(traffic)
    # Both replicas hold a CPU each: the cluster has none free, and monitoring still runs.
    monitored = _ray_job(head, tmp_path, "jobs/monitor.py", "--source", str(traffic))
    assert monitored.returncode == 0, monitored.stdout[-3000:] + monitored.stderr[-3000:]
    assert "0 of 2 CPUs free" in monitored.stdout
    assert "NO DRIFT" in monitored.stdout  # the training rows themselves

    watched = _ray_job(head, tmp_path, "jobs/lifecycle.py", "--iterations", "1", *serve_args)
    assert watched.returncode == 0, watched.stdout[-3000:] + watched.stderr[-3000:]
    assert "nothing to do" in watched.stdout

    stopped = _ray_job(head, tmp_path, "jobs/serve.py", "stop", *serve_args)
    assert stopped.returncode == 0, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(request, timeout=10)

    retrained = _ray_job(head, tmp_path, "jobs/retrain.py", "--force", *QUICK)
    # Exit 0 (promoted) or 1 (rejected by the gate): both are the policy's decisions.
    assert retrained.returncode in (0, 1), retrained.stdout[-3000:] + retrained.stderr[-3000:]
    assert "retraining because forced" in retrained.stdout
    registry = Registry(home=tmp_path)
    assert sorted(v.version for v in registry.list_versions("breast-cancer")) == [1, 2]
    assert "retrain-start" in [e.action for e in registry.alias_history("breast-cancer")]


def test_no_wait_prints_the_submission_id(head: str, tmp_path: Path) -> None:
    proc = _raymlops("submit", "train", "--address", head, "--no-wait", *QUICK, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    submission_id = proc.stdout.strip()
    assert submission_id.startswith("raymlops-train-")
    stopped = _raymlops("jobs", "stop", submission_id, "--address", head, home=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert submission_id in stopped.stdout


def test_a_wrong_token_fails_clearly(head: str, tmp_path: Path) -> None:
    env = {"RAY_AUTH_TOKEN": "0" * 64}
    proc = _raymlops("jobs", "list", "--address", head, home=tmp_path, env=env, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "rejected the credentials" in lines[0] and "Authentication failed" in lines[0]


def test_a_missing_token_fails_clearly(head: str, tmp_path: Path) -> None:
    # No token anywhere: not in the environment and no ~/.ray/auth_token under this HOME.
    env = {"HOME": str(tmp_path)}
    proc = _raymlops("jobs", "list", "--address", head, home=tmp_path, env=env, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "rejected the credentials" in lines[0] and "Authentication required" in lines[0]
    assert "Traceback" not in proc.stderr


def test_an_unreachable_job_api_fails_clearly(tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    proc = _raymlops("jobs", "list", "--address", address, home=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Ray job API")


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path: Path) -> None:
    # Two nodes of 1 CPU each on this machine: a head and a second `ray start --address`.
    head_node, gcs, api = _start_head(num_cpus=1)
    nodes = [head_node]
    try:
        # A node joins a token-authenticated cluster with the token (~/.ray/auth_token).
        env = {**_clean_env(), "RAY_AUTH_MODE": "token"}
        args = [f"--address={gcs}", "--num-cpus=1",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}"]  # fmt: skip
        # A temp dir of its own, as on a separate machine: nodes sharing one would
        # garbage-collect each other's runtime environments (the job's working dir).
        worker_temp = tempfile.mkdtemp(prefix="rmo-", dir="/tmp")
        nodes.append(_start_node(args, worker_temp, env, gcs))
        proc = _raymlops(
            "submit", "train", "--address", api,
            "--set", "tune.num_samples=4", "--set", "train.epochs=3",
            "--set", "tune.scheduler=fifo", home=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "4 trials × ≤3 epochs, 2 at a time" in proc.stdout + proc.stderr
        # Both nodes ran trials, writing to the experiment folder both can see.
        seen: dict[str, set[str]] = {}
        for progress in tmp_path.glob("tune/breast-cancer-*/*/progress.csv"):
            with progress.open() as fh:
                seen[progress.parent.name[:40]] = {row["node_id"][:8] for row in csv.DictReader(fh)}
        nodes_used = set().union(*seen.values())
        # On failure: which trial ran where, and what the job said about its trials.
        assert len(nodes_used) == 2, (seen, (proc.stdout + proc.stderr)[-4000:])
        assert [v.version for v in Registry(home=tmp_path).list_versions("breast-cancer")] == [1]
    finally:
        for node in reversed(nodes):
            node.stop()
            shutil.rmtree(node.temp, ignore_errors=True)
