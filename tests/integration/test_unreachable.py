"""A service that does not answer: the MLflow tracking server or the object store (#14).

Each case uses a real port that nothing listens on. The command says in one line which
service does not answer and where, exits 1, and leaves nothing half-registered: a version
is created only after its artifacts are stored.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.shared_nothing import S3_KEYS, free_port, mlflow_server

pytestmark = [pytest.mark.integration]

RAYMLOPS = str(Path(sys.executable).parent / "raymlops")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "RAYMLOPS_", "AWS_", "RAY_ADDRESS"))
    }
    return {**env, "RAYMLOPS_HOME": str(home), **extra}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_tracking_server_that_does_not_answer_is_named_in_one_line(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [RAYMLOPS, "models", "list"], env=_env(tmp_path, MLFLOW_TRACKING_URI=uri),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    (line,) = _error_lines(done.stderr)
    assert f"the MLflow tracking server {uri} does not answer" in line, done.stderr
    assert "Traceback" not in done.stderr


def test_an_object_store_that_does_not_answer_stops_training_before_any_trial(
    tmp_path: Path,
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = _env(tmp_path / "home", AWS_ENDPOINT_URL=endpoint, **S3_KEYS)
    done = subprocess.run(
        [RAYMLOPS, "train", "--set", "storage=s3://raymlops-gone/rmo",
         "--set", "tune.num_samples=1", "--set", "train.epochs=1"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = _error_lines(done.stderr)
    assert "the object store does not answer for s3://raymlops-gone/rmo/tune" in line, line
    assert endpoint in line and "tuning" not in done.stderr  # no trial was started
    listed = subprocess.run(
        [RAYMLOPS, "models", "list", "--json"], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stdout + listed.stderr


@pytest.mark.timeout(900)
def test_a_version_is_registered_only_after_its_artifacts_are_stored(tmp_path: Path) -> None:
    """An MLflow server up, its artifact store (S3, proxied) down: registering fails and
    leaves no version and no model behind."""
    from raymlops.registry.store import Registry

    dead = f"http://127.0.0.1:{free_port()}"
    server_env = {**_env(tmp_path), **S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": dead}
    with mlflow_server(tmp_path, "s3://raymlops-gone/mlflow", server_env) as uri:
        # One retry, not MLflow's default seven: the server's answer will not change.
        env = _env(tmp_path / "home", MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
        done = subprocess.run(
            [sys.executable, str(Path(__file__).parent / "register_once.py"), "unstored"],
            env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode != 0, done.stdout + done.stderr[-3000:]
        assert "in log_artifacts" in done.stderr, done.stderr[-3000:]  # storing them failed
        registry = Registry(uri, tmp_path / "home")
        assert [m["name"] for m in registry.list_models()] == []  # no model, no version
        assert not registry.client.search_model_versions("name='unstored'")
