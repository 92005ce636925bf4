"""raymlops on a cluster whose machines share nothing but the network (#14): PostgreSQL
behind an MLflow server with proxied S3 artifacts, a Ray head and two workers in mount
namespaces of their own, and this test process as the laptop (`shared_nothing.py`).

What runs here, end to end:
- the nodes really share no disk (a file one node writes, no other node sees);
- `raymlops run --address …` runs all nine steps as Ray jobs with the hand-over state in
  the object store, and the laptop sees the cluster's registry, card and drift report;
- 16 registrations of one model from jobs on both workers at once leave 16 versions, one
  champion and a complete, ordered alias history;
- local storage handed to that cluster is refused before anything is submitted.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.shared_nothing import (
    S3_KEYS,
    SharedNothingCluster,
    can_isolate,
    shared_nothing_cluster,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.cluster]

QUICK = ["--set", "tune.num_samples=2", "--set", "train.epochs=2"]
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
    args = ["run", "--address", cluster.api, *QUICK, "--set", f"storage={storage}"]
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
    assert model["versions"] == 2 and model["aliases"]["champion"] == 2
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


_REGISTER = textwrap.dedent(
    """
    import shutil, socket, sys, tempfile
    from pathlib import Path

    from raymlops.core.config import load_config
    from raymlops.data.dataset import load_dataset
    from raymlops.model.features import Preprocessor
    from raymlops.registry.store import Registry
    from raymlops.train.loop import TrainingArrays, fit, load_best_predictor

    config = load_config(None, ["train.epochs=1", "registry.model_name=concurrent"])
    dataset, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
    keep = Path(tempfile.mkdtemp())

    def report(metrics, folder):
        if folder is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(folder, keep)

    best = fit(config, arrays, report)
    predictor = load_best_predictor(keep, config, arrays.preprocessor)
    registry = Registry()  # MLFLOW_TRACKING_URI: the cluster's server
    metrics = {k: float(v) for k, v in best.items() if k.startswith("val_")}
    with registry.pipeline_run(config, "concurrent") as run_id:
        info = registry.register(config, run_id, predictor, dataset, metrics)
    print("registered", info.version, "on", socket.gethostname())
    """
)


@pytest.mark.timeout(1800)
def test_registrations_from_both_workers_at_once_keep_one_champion(
    cluster: SharedNothingCluster, tmp_path: Path
) -> None:
    from raymlops.registry.store import Registry

    (tmp_path / "register.py").write_text(_REGISTER)
    client = _jobs(cluster)
    env = {"MLFLOW_TRACKING_URI": cluster.tracking_uri}
    ids = [
        client.submit_job(
            entrypoint="python register.py",
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
