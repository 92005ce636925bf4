"""The job launcher's decisions that need no cluster: which addresses are job APIs, what a
job's runtime environment carries, and refusing a remote cluster with a laptop registry."""

from __future__ import annotations

from pathlib import Path

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


def _offline_launcher(address: str, home: Path) -> JobLauncher:
    # The launcher's pure parts, without connecting to a job API.
    launcher = JobLauncher.__new__(JobLauncher)
    launcher.address = address
    launcher.home = home
    return launcher


def test_runtime_env_points_the_job_at_the_same_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.delenv("RAYMLOPS_TUNE_STORAGE", raising=False)
    runtime = _offline_launcher("http://127.0.0.1:8265", tmp_path).runtime_env(
        tmp_path, "raymlops-train-1"
    )
    env = runtime["env_vars"]
    assert env["RAYMLOPS_HOME"] == str(tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
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


def test_remote_cluster_with_the_embedded_registry_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    remote = _offline_launcher("http://10.0.0.5:8265", tmp_path)
    with pytest.raises(UserInputError, match="set MLFLOW_TRACKING_URI"):
        remote._check_store_is_shared(None)
    remote._check_store_is_shared("http://mlflow:5000")  # a tracking server in the config
    _offline_launcher("http://127.0.0.1:8265", tmp_path)._check_store_is_shared(None)
    _offline_launcher("http://localhost:8265", tmp_path)._check_store_is_shared(None)


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
