"""A service that does not answer: the MLflow tracking server or the object store (#14).

Each case uses a real port that nothing listens on. The command says in one line which
service does not answer and where, exits 1, and leaves nothing half-registered: a version
is created only after its artifacts are stored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.shared_nothing import S3_KEYS, free_port

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


_REGISTER = textwrap.dedent(
    """
    import shutil, sys, tempfile
    from pathlib import Path

    from raymlops.core.config import load_config
    from raymlops.data.dataset import load_dataset
    from raymlops.model.features import Preprocessor
    from raymlops.registry.store import Registry
    from raymlops.train.loop import TrainingArrays, fit, load_best_predictor

    config = load_config(None, ["train.epochs=1", "registry.model_name=unstored"])
    dataset, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
    keep = Path(tempfile.mkdtemp())

    def report(metrics, folder):
        if folder is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(folder, keep)

    fit(config, arrays, report)
    predictor = load_best_predictor(keep, config, arrays.preprocessor)
    registry = Registry()  # MLFLOW_TRACKING_URI: the server whose object store is gone
    with registry.pipeline_run(config, "unstored") as run_id:
        registry.register(config, run_id, predictor, dataset, {"val_loss": 0.5})
    """
)


@pytest.mark.timeout(900)
def test_a_version_is_registered_only_after_its_artifacts_are_stored(tmp_path: Path) -> None:
    """An MLflow server up, its artifact store (S3, proxied) down: registering fails and
    leaves no version and no model behind."""
    from raymlops.registry.store import Registry

    port, dead = free_port(), f"http://127.0.0.1:{free_port()}"
    uri = f"http://127.0.0.1:{port}"
    server_env = {**_env(tmp_path), **S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": dead}
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow"), "server",
         "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", "s3://raymlops-gone/mlflow", "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=server_env, cwd=tmp_path,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "server.log"
                ).read_text()
                time.sleep(0.5)
        (tmp_path / "register.py").write_text(_REGISTER)
        # One retry, not MLflow's default seven: the server's answer will not change.
        env = _env(tmp_path / "home", MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
        done = subprocess.run(
            [sys.executable, str(tmp_path / "register.py")], env=env, capture_output=True,
            text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode != 0, done.stdout + done.stderr[-3000:]
        assert "in log_artifacts" in done.stderr, done.stderr[-3000:]  # storing them failed
        registry = Registry(uri, tmp_path / "home")
        assert [m["name"] for m in registry.list_models()] == []  # no model, no version
        assert not registry.client.search_model_versions("name='unstored'")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
