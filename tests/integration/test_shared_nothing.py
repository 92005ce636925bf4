"""raymlops on a cluster whose machines share nothing but the network (#14): PostgreSQL
behind an MLflow server with proxied S3 artifacts, a Ray head and two workers in mount
namespaces of their own, and this test process as the laptop (`shared_nothing.py`).

What runs here, end to end:
- the nodes really share no disk (a file one node writes, no other node sees);
- `raymlops run --address …` runs all nine steps as Ray jobs with the hand-over state in
  the object store, and the laptop sees the cluster's registry, card and drift report;
- 16 registrations of one model from jobs on both workers at once leave 16 versions, one
  champion and a complete, ordered alias history;
- local storage handed to that cluster is refused before anything is submitted;
- a search whose driver is SIGKILLed resumes from the object store (`--resume`);
- batch inference over 1M rows in the object store survives a worker node SIGKILLed
  mid-run, and every input row is in the output exactly once;
- an endpoint on the cluster logs the laptop's traffic to the object store, where the
  monitor finds the injected drift, and retrain → gate → canary → promote closes the loop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.shared_nothing import (
    REPO,
    S3_KEYS,
    SharedNothingCluster,
    can_isolate,
    free_port,
    shared_nothing_cluster,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.cluster]

QUICK = ["--set", "tune.num_samples=2", "--set", "train.epochs=2"]
#: The champion comparison is a paired test on fresh rows (log loss, 95%): whether a 2-epoch
#: retrain beats the champion on a few hundred rows is a coin toss, and deciding it right is
#: benchmarks/loop_decisions.py's question. Here every step of the chain must run, so a
#: candidate is refused only when it is worse by more than 1.0 of log loss (or of ROC AUC, the
#: guard's metric).
LENIENT_GATE = [
    "--set",
    "gate.champion.max_regression=1.0",
    "--set",
    "gate.champion.guard_margin=1.0",
]
#: Three Ray nodes and a test process on 2 CPUs: p95 latencies of two versions differ by noise
#: (seen: a retrained candidate rolled back at 137.5 ms against the champion's 85.7 ms). The
#: chain's canary here judges errors; latency rollbacks have tests of their own.
LENIENT_CANARY = ["--set", "serve.canary.p95_latency_margin_ms=5000"]
MODEL = "breast-cancer"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SharedNothingCluster]:
    reason = can_isolate()
    if reason:
        pytest.skip(f"the shared-nothing cluster {reason}")
    with shared_nothing_cluster() as started:
        yield started


def _jobs(cluster: SharedNothingCluster) -> Any:
    """The laptop's job client, with the cluster's token."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.api, headers={"Authorization": f"Bearer {cluster.token}"})


def _s3_keys(cluster: SharedNothingCluster, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=cluster.s3_endpoint,
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_KEYS["AWS_DEFAULT_REGION"],
    )
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=cluster.bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _wait_all(client: Any, ids: list[str], timeout_s: float = 900) -> dict[str, str]:
    import time

    deadline = time.monotonic() + timeout_s
    status: dict[str, str] = {}
    while time.monotonic() < deadline:
        status = {i: str(client.get_job_status(i).value) for i in ids}
        if all(s in ("SUCCEEDED", "FAILED", "STOPPED") for s in status.values()):
            return status
        time.sleep(2)
    raise AssertionError(f"jobs still running after {timeout_s:.0f} s: {status}")


def test_the_nodes_share_no_disk(cluster: SharedNothingCluster, tmp_path: Path) -> None:
    client = _jobs(cluster)
    secret = tmp_path / "laptop-only.txt"
    secret.write_text("the laptop's")
    write = client.submit_job(
        entrypoint="python -c \"open('/tmp/node-1-only.txt','w').write('x')\"",
        entrypoint_resources={"node:127.0.0.3": 0.01},
    )
    assert _wait_all(client, [write])[write] == "SUCCEEDED"
    probe = (
        "import json, os, socket; print(json.dumps({'host': socket.gethostname(), "
        f"'node1': os.path.exists('/tmp/node-1-only.txt'), 'laptop': os.path.exists('{secret}')"
        "}))"
    )
    read = client.submit_job(
        entrypoint=f'python -c "{probe}"', entrypoint_resources={"node:127.0.0.4": 0.01}
    )
    assert _wait_all(client, [read])[read] == "SUCCEEDED"
    seen = json.loads(client.get_job_logs(read).strip().splitlines()[-1])
    assert seen == {"host": "rmo-worker-2", "node1": False, "laptop": False}
    assert not Path("/tmp/node-1-only.txt").exists()


def test_local_storage_for_this_cluster_is_refused_before_submitting(
    cluster: SharedNothingCluster, tmp_path: Path
) -> None:
    # The job API is 127.0.0.1, like a `ray dashboard` tunnel: the cluster itself says its
    # nodes are other machines.
    home = tmp_path / "laptop"
    done = cluster.raymlops("run", "--address", cluster.api, *QUICK, home=home, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "is a cluster of other machines" in done.stderr and "storage" in done.stderr
    done = cluster.raymlops(
        "submit", "train", "--address", cluster.api, *QUICK, home=home, timeout=300
    )
    assert done.returncode == 2 and "tune.storage" in done.stderr, done.stderr


@pytest.mark.timeout(1800)
def test_the_main_job_runs_as_jobs_with_its_state_in_the_object_store(
    cluster: SharedNothingCluster, tmp_path: Path
) -> None:
    home = tmp_path / "laptop"
    home.mkdir()
    storage = cluster.uri("raymlops")
    args = ["run", "--address", cluster.api, *QUICK, *LENIENT_GATE, *LENIENT_CANARY]
    args += ["--set", f"storage={storage}"]
    done = cluster.raymlops(*args, home=home, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for step in ("train", "gate", "promote", "batch", "serve", "traffic", "monitor", "retrain"):
        assert f"{step}: SUCCEEDED" in done.stdout, done.stdout[-3000:]
    assert "finish: SUCCEEDED" in done.stdout

    # The hand-over state and the run's files are in the object store, not on a disk.
    keys = _s3_keys(cluster, "raymlops/runs/")
    (run,) = {k.split("/")[2] for k in keys} - {""}  # pyarrow also writes folder markers
    for name in ("state.json", "model-card.md", "drift-report.html", "traffic-requests.parquet"):
        assert f"raymlops/runs/{run}/{name}" in keys, keys
    assert f"raymlops/runs/{run}/batch-output/_raymlops_batch.json" in keys
    assert any(k.startswith("raymlops/predictions/breast-cancer/date=") for k in _s3_keys(
        cluster, "raymlops/predictions/"))  # fmt: skip
    assert not (home / "runs").exists() and not (home / "mlflow.db").exists()

    # From the laptop: the cluster's registry, its history, the card and the drift report.
    listed = cluster.raymlops("models", "list", "--json", home=home, timeout=120)
    assert listed.returncode == 0, listed.stderr
    (model,) = [m for m in json.loads(listed.stdout) if m["name"] == MODEL]
    assert model["versions"] == 2 and model["aliases"]["champion"] == 2, done.stdout[-6000:]
    history = cluster.raymlops("models", "history", MODEL, "--json", home=home, timeout=120)
    assert history.returncode == 0, history.stderr
    actions = [e["action"] for e in json.loads(history.stdout)]
    assert actions[0] == "register" and "promote" in actions
    card = cluster.raymlops("card", MODEL, "champion", home=home, timeout=120)
    assert card.returncode == 0 and f"{MODEL}" in card.stdout, card.stderr

    from mlflow import MlflowClient

    client = MlflowClient(cluster.tracking_uri)
    monitors = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`raymlops.step` = 'monitor'",
    )
    # The chain's monitor step and the retrain step's own monitoring pass: each stored its
    # report in MLflow (the step's under the name the chain gave it).
    files = [f.path for r in monitors for f in client.list_artifacts(r.info.run_id, "monitor")]
    assert "monitor/drift-report.html" in files, files


@pytest.mark.timeout(1800)
def test_registrations_from_both_workers_at_once_keep_one_champion(
    cluster: SharedNothingCluster, tmp_path: Path
) -> None:
    from raymlops.registry.store import Registry

    shutil.copy(REPO / "tests" / "integration" / "register_once.py", tmp_path / "register.py")
    client = _jobs(cluster)
    env = {"MLFLOW_TRACKING_URI": cluster.tracking_uri}
    ids = [
        client.submit_job(
            entrypoint="python register.py concurrent",
            runtime_env={"working_dir": str(tmp_path), "env_vars": env},
            entrypoint_resources={f"node:127.0.0.{3 + n % 2}": 0.01},
        )
        for n in range(16)
    ]
    status = _wait_all(client, ids, timeout_s=1500)
    failed = {i: client.get_job_logs(i)[-1500:] for i, s in status.items() if s != "SUCCEEDED"}
    assert not failed, failed
    hosts = {client.get_job_logs(i).strip().splitlines()[-1].split()[-1] for i in ids}
    assert hosts == {"rmo-worker-1", "rmo-worker-2"}
    logs = "".join(client.get_job_logs(i) for i in ids)
    assert "database is locked" not in logs

    registry = Registry(cluster.tracking_uri, tmp_path / "laptop")
    versions = registry.list_versions("concurrent")
    assert sorted(v.version for v in versions) == list(range(1, 17))
    champions = [v.version for v in versions if "champion" in v.aliases]
    assert len(champions) == 1
    history = registry.alias_history("concurrent")
    assert [e.sequence for e in history] == list(range(1, 17))  # none lost, in order
    assert [e.action for e in history] == ["register"] * 16
    assert [e.alias for e in history].count("champion") == 1  # decided under the lock
    assert sorted(e.to_version for e in history) == list(range(1, 17))


# --------------------------------------------------------------------------- synthetic data

SYNTH_MODEL = "synthetic"


@pytest.fixture(scope="module")
def synth(cluster: SharedNothingCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The laptop's working dir (the synthetic example's config, which travels with each
    job) and its data, made by `raymlops data synth` on the laptop: 20,000 training rows
    and 1M rows to predict in the object store, and 2,000 drifted rows on the laptop's disk
    to send as traffic."""
    work = tmp_path_factory.mktemp("synth-work")
    shutil.copy(REPO / "examples" / "synthetic.yaml", work)
    made = [
        ("20000", "0", "0", cluster.uri("synth", "train.parquet")),
        ("1000000", "0", "1", cluster.uri("synth", "big")),
        ("2000", "1.0", "2", str(work / "drifted.parquet")),
    ]
    for rows, drift, seed, out in made:
        done = cluster.raymlops(
            "data", "synth", "--rows", rows, "--features", "8", "--categorical", "2",
            "--drift", drift, "--seed", seed, "--out", out, home=work / "home", cwd=work,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    return work


def _synth_args(cluster: SharedNothingCluster, *more: str) -> list[str]:
    """The config and settings every synthetic job of these tests runs with."""
    return [
        "-c", "synthetic.yaml",
        "--set", f"data.path={cluster.uri('synth', 'train.parquet')}",
        "--set", f"storage={cluster.uri('rmo')}",
        *more,
    ]  # fmt: skip


def _submit(
    cluster: SharedNothingCluster, work: Path, step: str, *args: str, timeout: float = 900
) -> Any:
    """`raymlops submit STEP --address … ARGS` from the laptop's working dir."""
    return cluster.raymlops(
        "submit", step, "--address", cluster.api, *args, home=work / "home", cwd=work,
        timeout=timeout,
    )  # fmt: skip


def _champion(cluster: SharedNothingCluster, work: Path) -> int | None:
    from raymlops.registry.store import Registry

    registry = Registry(cluster.tracking_uri, work / "home")
    if not any(m["name"] == SYNTH_MODEL for m in registry.list_models()):
        return None
    versions = registry.list_versions(SYNTH_MODEL)
    return next((v.version for v in versions if "champion" in v.aliases), None)


def _ensure_champion(cluster: SharedNothingCluster, work: Path) -> int:
    """The synthetic model's champion; trained here when an earlier test did not."""
    found = _champion(cluster, work)
    if found is not None:
        return found
    quick = ["--set", "tune.num_samples=1"]
    done = _submit(cluster, work, "train", *_synth_args(cluster, *quick))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    found = _champion(cluster, work)
    assert found is not None
    return found


def _wait_for(what: str, check: Any, timeout_s: float = 300, poll_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


# --------------------------------------------------------------------------- train --resume

_FINISHED = re.compile(r"trial +\d+/\d+ (\S+) finished")


@pytest.mark.timeout(1500)
def test_a_search_whose_driver_is_killed_resumes_from_the_object_store(
    cluster: SharedNothingCluster, synth: Path
) -> None:
    client = _jobs(cluster)
    search = ["--set", "tune.scheduler=fifo", "--set", "tune.num_samples=10",
              "--set", "train.epochs=60", "--set", "train.early_stopping_patience=100"]  # fmt: skip
    args = _synth_args(cluster, *search)
    started = _submit(cluster, synth, "train", *args, "--no-wait")
    assert started.returncode == 0, started.stderr
    job = started.stdout.strip().splitlines()[-1]

    # Two trials done, then one more of Tune's snapshots (every 10 s) while the others run.
    _wait_for("two finished trials", lambda: len(_FINISHED.findall(client.get_job_logs(job))) >= 2)
    time.sleep(12)
    assert str(client.get_job_status(job).value) == "RUNNING", client.get_job_logs(job)[-2000:]
    driver = client.get_job_info(job).driver_info
    assert driver is not None and driver.node_ip_address == cluster.node_ips["rmo-head"]
    os.kill(int(driver.pid), signal.SIGKILL)  # the driver dies as in a crash: no clean-up
    assert _wait_all(client, [job], timeout_s=120)[job] == "FAILED"
    before = set(_FINISHED.findall(client.get_job_logs(job)))

    resumed = _submit(cluster, synth, "train", *args, "--resume")
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]
    experiment = re.search(r"resuming Tune experiment (\S+)", out)
    assert experiment and experiment[1].startswith(cluster.uri("rmo", "tune", "synthetic-")), out
    earlier = re.search(r"(\d+) of 10 trials finished before the interruption", out)
    assert earlier and int(earlier[1]) >= 2, out[-4000:]
    rerun = _FINISHED.findall(out) + re.findall(
        r"trial +\d+/\d+ (\S+) (?:early-stopped|error)", out
    )
    # Only the trials the snapshot did not hold as finished ran again: 10 in all.
    assert len(rerun) == 10 - int(earlier[1]), out[-4000:]
    # Finished before the kill and held so by the snapshot: not run again (one may have
    # finished between the snapshot and the kill, and run again).
    assert len(before - set(rerun)) >= int(earlier[1]) - 1, (before, rerun)
    assert "recording 10 trials" in out and f"registered {SYNTH_MODEL} v" in out, out[-3000:]
    # The experiment lives in the object store: its state and the trials' checkpoints.
    prefix = experiment[1].removeprefix(f"s3://{cluster.bucket}/")
    keys = _s3_keys(cluster, prefix + "/")
    assert any("experiment_state" in k for k in keys) and any("checkpoint_" in k for k in keys)
    assert not (synth / "home" / "tune").exists()


# --------------------------------------------------------------------------- batch


@pytest.mark.timeout(1500)
def test_batch_survives_a_worker_node_killed_mid_run_and_writes_every_row_once(
    cluster: SharedNothingCluster, synth: Path
) -> None:
    import numpy as np
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    _ensure_champion(cluster, synth)
    client = _jobs(cluster)
    output = cluster.uri("preds-node-killed")
    # The actor pool on the workers is what this tests: executor ray (auto would run so
    # small an input, 1M rows, in the job's driver on the head, which no kill reaches).
    args = [
        *_synth_args(cluster, "--set", "batch.executor=ray"),
        "--", "--input", cluster.uri("synth", "big"), "--output", output,
    ]  # fmt: skip
    started = _submit(cluster, synth, "batch", "--no-wait", *args)
    assert started.returncode == 0, started.stderr
    job = started.stdout.strip().splitlines()[-1]

    def parts() -> list[str]:
        keys = _s3_keys(cluster, "preds-node-killed/")
        return [k for k in keys if k.rsplit("/", 1)[-1].startswith("part-")]

    _wait_for("the first unit's output", parts, timeout_s=600, poll_s=0.2)
    done_at_kill = len(parts())
    cluster.kill_node("rmo-worker-1")  # its raylet, object store, actors: all at once
    try:
        status = _wait_all(client, [job], timeout_s=900)[job]
        log = client.get_job_logs(job)
    finally:
        cluster.start_node("rmo-worker-1")  # a replacement, for the tests that follow
    assert done_at_kill < 4, "every unit was done before the node died: nothing was tested"
    print(f"batch after the node died: {status}, {done_at_kill} of 4 units done at the kill")
    if status == "SUCCEEDED":  # the run redid what the dead node held, on what was left
        assert "the pool lost workers" in log, log[-3000:]
    else:  # or the same command, run again, finishes what has no output yet
        again = _submit(cluster, synth, "batch", *args)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
        log = again.stdout
        assert "done by an earlier run" in log, log[-3000:]

    fs = pafs.S3FileSystem(  # the laptop reads the cluster's output
        endpoint_override=cluster.s3_endpoint,
        access_key=S3_KEYS["AWS_ACCESS_KEY_ID"],
        secret_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        region=S3_KEYS["AWS_DEFAULT_REGION"],
    )
    path = output.removeprefix("s3://")
    ids = np.sort(pq.read_table(path, filesystem=fs, columns=["id"])["id"].to_numpy())
    assert len(ids) == 1_000_000 and bool((ids == np.arange(1_000_000)).all())
    manifest = json.loads(fs.open_input_stream(f"{path}/_raymlops_batch.json").read().decode())
    assert manifest.get("complete") is True, manifest
    assert manifest["summary"]["rows_in"] == 1_000_000, manifest["summary"]  # no unit lost


# --------------------------------------------------------------------------- serve loop


class _Traffic:
    """The laptop's clients: rows of a file POSTed to the cluster's endpoint, 20 per
    request, from a thread until stopped; answers counted by status and model version."""

    def __init__(self, url: str, rows: list[dict[str, Any]]) -> None:
        self.url, self.rows = url, rows
        self.statuses: Counter[str] = Counter()
        self.versions: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def send(self, requests: int) -> None:
        for n in range(requests):
            self._one(n)

    def _one(self, n: int) -> None:
        start = (n * 20) % (len(self.rows) - 20)
        body = json.dumps({"instances": self.rows[start : start + 20]}).encode()
        request = urllib.request.Request(
            f"{self.url}/predict", data=body, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                self.statuses[str(answer.status)] += 1
                self.versions[int(json.load(answer)["version"])] += 1
        except urllib.error.HTTPError as exc:
            self.statuses[str(exc.code)] += 1
        except OSError as exc:
            self.statuses[type(exc).__name__] += 1

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            self._one(n)
            n += 1
            time.sleep(0.05)

    def __enter__(self) -> _Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.mark.timeout(1800)
def test_an_endpoint_on_the_cluster_closes_the_loop_through_the_object_store(
    cluster: SharedNothingCluster, synth: Path
) -> None:
    import pandas as pd

    from raymlops.registry.store import Registry

    champion = _ensure_champion(cluster, synth)
    port = free_port()
    # Replicas of a small model with a quarter CPU each: a retrain's trials fit beside them
    # on two one-CPU workers. Generous gate and a fast canary: the loop is what is tested.
    args = _synth_args(
        cluster, "--set", f"serve.port={port}", "--set", "serve.cpus_per_replica=0.25",
        "--set", "tune.num_samples=2", *LENIENT_GATE,
        "--set", "retrain.canary_percent=50", "--set", "retrain.canary_requests=50",
    )  # fmt: skip
    served = _submit(cluster, synth, "serve", *args)
    assert served.returncode == 0, served.stdout[-3000:] + served.stderr[-2000:]
    try:
        # Where it answers: serve.port, unless Serve already ran in this cluster (the main
        # job's chain started it), whose HTTP options stay; the command says which.
        ready = re.search(r"ready: (http://\S+)/predict", served.stdout)
        assert ready, served.stdout[-3000:]
        url = ready[1]
        if not url.endswith(f":{port}"):
            assert "Serve already runs in this cluster at" in served.stdout, served.stdout
        rows = pd.read_parquet(synth / "drifted.parquet").drop(columns=["id", "label"])
        traffic = _Traffic(url, rows.to_dict("records"))
        traffic.send(100)  # 2,000 shifted rows from the laptop, over HTTP
        assert traffic.statuses == {"200": 100}, traffic.statuses
        assert traffic.versions == {champion: 100}

        # The replicas' prediction log is in the object store, where the monitor reads it.
        log = f"rmo/predictions/{SYNTH_MODEL}/"
        _wait_for("the prediction log", lambda: [k for k in _s3_keys(cluster, log)
                                                 if k.endswith(".parquet")])  # fmt: skip
        time.sleep(3)  # the last flush of every replica
        monitored = _submit(cluster, synth, "monitor", *args)
        out = monitored.stdout
        assert monitored.returncode == 0, out[-3000:] + monitored.stderr[-2000:]
        assert f"{SYNTH_MODEL} v{champion}: DRIFT" in out, out[-3000:]
        report = re.search(r"report: (s3://\S+\.html)", out)
        assert report, out[-3000:]
        assert report[1].removeprefix(f"s3://{cluster.bucket}/") in _s3_keys(
            cluster, "rmo/reports/"
        )

        # Drift → retrain → gate → canary (the laptop's traffic reaches it) → promote.
        with traffic:
            retrained = _submit(cluster, synth, "retrain", *args, timeout=1200)
        out = retrained.stdout
        assert retrained.returncode == 0, out[-4000:] + retrained.stderr[-2000:]
        assert "retraining because drift" in out, out[-4000:]
        assert re.search(r"training set: \d+ rows → s3://", out), out[-4000:]
        promoted = re.search(r"candidate v(\d+) promoted to champion", out)
        assert promoted, out[-4000:]
        new = int(promoted[1])
        assert set(traffic.statuses) == {"200"}, traffic.statuses  # nothing dropped meanwhile
        assert traffic.versions[new] > 0 and traffic.versions[champion] > 0, traffic.versions
        history = Registry(cluster.tracking_uri, synth / "home").alias_history(SYNTH_MODEL)
        actions = [(e.action, e.to_version) for e in history if e.to_version == new]
        assert ("register", new) in actions and ("promote", new) in actions, actions
    finally:
        stopped = _submit(cluster, synth, "serve", *args, "--", "stop", *args)
        assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
