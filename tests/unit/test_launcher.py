"""The job launcher's decisions that need no cluster: which addresses are job APIs, what a
job's runtime environment carries, and refusing a remote cluster with a laptop registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raymlops.cluster.launcher import JobLauncher, is_job_address
from raymlops.core.errors import UserInputError


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("http://127.0.0.1:8265", True),
        ("https://ray.example.com", True),
        ("ray://head:10001", False),
        ("auto", False),
        ("127.0.0.1:6379", False),
        (None, False),
        ("", False),
    ],
)
def test_job_addresses_are_http_urls(address: str | None, expected: bool) -> None:
    assert is_job_address(address) is expected


def _offline_launcher(address: str, home: Path, here: bool = True) -> JobLauncher:
    # The launcher's pure parts, without connecting to a job API; `here`: what the cluster
    # said of its nodes (all on this machine or not).
    launcher = JobLauncher.__new__(JobLauncher)
    launcher.address = address
    launcher.home = home
    launcher._here = here
    return launcher


def test_runtime_env_points_the_job_at_the_same_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("RAYMLOPS_STORAGE", "s3://bucket/raymlops")
    monkeypatch.delenv("RAYMLOPS_TUNE_STORAGE", raising=False)
    runtime = _offline_launcher("http://127.0.0.1:8265", tmp_path).runtime_env(
        tmp_path, "raymlops-train-1"
    )
    env = runtime["env_vars"]
    assert env["RAYMLOPS_HOME"] == str(tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["RAYMLOPS_STORAGE"] == "s3://bucket/raymlops"
    assert env["RAYMLOPS_SUBMISSION_ID"] == "raymlops-train-1"
    assert "RAYMLOPS_TUNE_STORAGE" not in env
    assert runtime["working_dir"] == str(tmp_path)
    assert ".raymlops" in runtime["excludes"] and ".venv" in runtime["excludes"]
    (package,) = runtime["py_modules"]
    assert (
        Path(package).name == "raymlops" and (Path(package) / "cluster" / "launcher.py").is_file()
    )
    bare = _offline_launcher("http://127.0.0.1:8265", tmp_path).runtime_env(
        None, "x", ship_raymlops=False
    )
    assert "py_modules" not in bare and "working_dir" not in bare
    # Other machines are not handed this machine's home: each node keeps its own.
    remote = _offline_launcher("http://127.0.0.1:8265", tmp_path, here=False)
    assert "RAYMLOPS_HOME" not in remote.runtime_env(tmp_path, "y")["env_vars"]


def test_a_node_is_here_only_with_this_host_name_and_one_of_its_addresses() -> None:
    from raymlops.cluster.launcher import _node_is_here, _this_machine

    hostname, addresses = _this_machine()
    assert "127.0.0.1" in addresses
    ip = next(iter(addresses))
    assert _node_is_here({"hostname": hostname, "ip": ip}, hostname, addresses)
    # A `ray dashboard` tunnel: the address is 127.0.0.1, the nodes are elsewhere.
    assert not _node_is_here({"hostname": "ip-10-0-0-5", "ip": "10.0.0.5"}, hostname, addresses)
    assert not _node_is_here({"hostname": "rmo-worker-1", "ip": "127.0.0.3"}, hostname, addresses)
    assert not _node_is_here({}, hostname, addresses)


def test_a_cluster_of_other_machines_is_refused_local_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raymlops.cluster.launcher import storage_settings
    from raymlops.core.config import load_config

    for name in ("MLFLOW_TRACKING_URI", "RAYMLOPS_STORAGE", "RAYMLOPS_TUNE_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(None)
    remote = _offline_launcher("http://127.0.0.1:8265", tmp_path, here=False)
    with pytest.raises(UserInputError, match=r"the embedded SQLite file.*MLFLOW_TRACKING_URI"):
        remote.check_storage(storage_settings(config, "run"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/mlflow.db")
    with pytest.raises(UserInputError, match=r"registry \(sqlite:////tmp/mlflow.db\)"):
        remote.check_storage(storage_settings(config, "train"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    with pytest.raises(UserInputError, match=r"but tune.storage .unset.*set storage"):
        remote.check_storage(storage_settings(config, "train"))
    monkeypatch.setenv("RAYMLOPS_TUNE_STORAGE", "/shared/tune")
    with pytest.raises(UserInputError, match=r"tune.storage ./shared/tune."):
        remote.check_storage(storage_settings(config, "train"))
    monkeypatch.delenv("RAYMLOPS_TUNE_STORAGE")
    with pytest.raises(UserInputError, match=r"serve\.prediction_log\.uri"):
        remote.check_storage(storage_settings(config, "monitor"))
    monkeypatch.setenv("RAYMLOPS_STORAGE", "s3://bucket/raymlops")
    for step in ("run", "train", "serve", "monitor", "retrain", "batch"):
        remote.check_storage(storage_settings(config, step))  # everything in shared places
    # Batch data named on the command line: an object store's, never this machine's.
    with pytest.raises(UserInputError, match=r"but --input \(/data/in\)"):
        remote.check_storage({"--input": "/data/in", "--output": "s3://b/out"})
    remote.check_storage({"--input": "s3://b/in", "--output": "gs://b/out"})
    # The same settings on a cluster that is this machine: all fine, SQLite included.
    for name in ("MLFLOW_TRACKING_URI", "RAYMLOPS_STORAGE"):
        monkeypatch.delenv(name)
    here = _offline_launcher("http://10.0.0.5:8265", tmp_path, here=True)
    here.check_storage(storage_settings(config, "run"))


def test_the_loop_state_survives_a_process_boundary(tmp_path: Path) -> None:
    """What one step's job saves is what the next step's job loads."""
    from raymlops.loop.pipeline import LoopState

    state = LoopState(str(tmp_path), version=3, gate_passed=True, served_url="http://h:1/m")
    state.steps.append(("train: Ray Tune search", 12.5))
    state.save()
    loaded = LoopState.load(tmp_path)
    assert loaded == state
    assert not list(tmp_path.glob(".*"))  # saved under a hidden name, then renamed


def test_a_step_without_its_run_folder_is_refused(tmp_path: Path) -> None:
    from raymlops.loop.pipeline import LoopState

    with pytest.raises(UserInputError, match="no main-job state"):
        LoopState.load(tmp_path / "missing")


def test_each_pipeline_step_is_a_loop_method() -> None:
    from raymlops.cluster.launcher import PIPELINE_STEPS
    from raymlops.loop.pipeline import _TITLES, _Loop

    assert PIPELINE_STEPS[0] == "train" and PIPELINE_STEPS[-1] == "finish"
    for step in PIPELINE_STEPS:
        assert callable(getattr(_Loop, f"_{step}")), step
        assert step in _TITLES


def test_run_step_needs_a_work_folder() -> None:
    from click.testing import CliRunner

    from raymlops.cli.main import cli

    result = CliRunner().invoke(cli, ["run", "--step", "gate"])
    assert result.exit_code == 2 and "--step needs --work" in result.output


def test_a_job_is_refused_data_it_cannot_reach(tmp_path: Path) -> None:
    """data.path travels with the working dir (relative), lives in an object store, or is
    on this machine's disk only for a cluster that is this machine."""
    from raymlops.core.config import load_config

    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "train.parquet").write_bytes(b"")
    remote = _offline_launcher("http://127.0.0.1:8265", tmp_path, here=False)
    here = _offline_launcher("http://127.0.0.1:8265", tmp_path, here=True)

    def data(path: str) -> Any:
        return load_config(None, [f"data.path={path}"])

    remote.check_data(data("data/train.parquet"), "train", work)  # travels with the job
    remote.check_data(data("s3://bucket/train.parquet"), "retrain", work)
    remote.check_data(load_config(None), "run", work)  # the bundled dataset
    with pytest.raises(UserInputError, match=r"data.path data/other.parquet is not in the work"):
        remote.check_data(data("data/other.parquet"), "train", work)
    absolute = str(work / "data" / "train.parquet")
    with pytest.raises(UserInputError, match=r"cluster of other machines but data.path \(/"):
        remote.check_data(data(absolute), "watch", work)
    here.check_data(data(absolute), "train", work)  # this machine's disk is the nodes' disk
    remote.check_data(data(absolute), "batch", work)  # batch reads --input, not data.path


def test_submit_offers_every_step_the_launcher_runs() -> None:
    import click

    from raymlops.cli.run import submit
    from raymlops.cluster.launcher import SUBMITTABLE_STEPS

    (step,) = [p for p in submit.params if p.name == "step"]
    assert isinstance(step.type, click.Choice)
    assert sorted(step.type.choices) == sorted(SUBMITTABLE_STEPS)
