"""`raymlops serve` as a user types it: the command returns and the endpoint keeps serving
from the local Ray head raymlops started; `serve status` reaches it from another process;
`serve stop` deletes the application and stops exactly that head.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from raymlops.serve.api import Client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAYMLOPS = str(Path(sys.executable).with_name("raymlops"))
SCRUBBED_ENV = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAYMLOPS_DEBUG", "RAYMLOPS_SERVE_TOKEN")


def _raymlops(*args: str, home: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["RAYMLOPS_HOME"] = str(home)
    return subprocess.run(
        [RAYMLOPS, *args], cwd=home, env=env, capture_output=True, text=True, timeout=timeout
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _session_alive(sid: int) -> bool:
    out = subprocess.run(["ps", "-eo", "sid=,stat="], capture_output=True, text=True).stdout
    return any(
        int(line.split()[0]) == sid and not line.split()[1].startswith("Z")
        for line in out.splitlines()
        if line.strip()
    )


def _register_champion(home: Path) -> None:
    """v1 of the embedded default, trained for two epochs in this process (no Ray)."""
    from raymlops.core.config import load_config
    from raymlops.data.dataset import load_dataset
    from raymlops.model.features import Preprocessor
    from raymlops.registry.store import Registry
    from raymlops.train.loop import TrainingArrays, fit, load_best_predictor

    config = load_config(None, ["train.epochs=2", "train.early_stopping_patience=null"])
    data, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
    checkpoint = home / "checkpoint"

    def keep(metrics: dict[str, float], folder: Path | None) -> None:
        if folder is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)
            shutil.copytree(folder, checkpoint)

    best = fit(config, arrays, keep)
    predictor = load_best_predictor(checkpoint, config, arrays.preprocessor)
    registry = Registry(home=home)
    with registry.pipeline_run(config, "serve-e2e") as run_id:
        registry.register(config, run_id, predictor, data, {"val_loss": best["val_loss"]})


def test_serve_status_stop_with_a_raymlops_owned_head(tmp_path: Path) -> None:
    _register_champion(tmp_path)
    port = _free_port()
    sets = [
        "--set", f"serve.port={port}",
        "--set", "serve.cpus_per_replica=0.5",
        "--set", "serve.autoscaling.min_replicas=1",
        "--set", "serve.autoscaling.initial_replicas=1",
    ]  # fmt: skip
    deployed = _raymlops("serve", "--json", *sets, home=tmp_path)
    state_file = tmp_path / "serve" / "ray-head.json"
    head = json.loads(state_file.read_text()) if state_file.exists() else None
    try:
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        assert "Traceback" not in deployed.stderr
        status = json.loads(deployed.stdout)
        assert status["url"] == f"http://127.0.0.1:{port}"
        assert (status["champion"], status["status"]) == (1, "RUNNING")
        assert head is not None and _session_alive(head["session_id"])

        # The command has returned; the endpoint answers.
        from raymlops.data.dataset import load_table

        row = load_table("sklearn:breast_cancer").to_pandas().drop(columns=["target"]).head(2)
        result = Client(status["url"]).predict(row)
        assert (result.model, result.version, len(result.predictions)) == ("breast-cancer", 1, 2)

        shown = _raymlops("serve", "status", *sets, home=tmp_path)
        assert shown.returncode == 0, shown.stderr[-3000:]
        assert "champion v1" in shown.stdout and f"127.0.0.1:{port}" in shown.stdout
        assert "metrics: http://127.0.0.1:" in shown.stdout
    finally:
        stopped = _raymlops("serve", "stop", *sets, home=tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "raymlops Ray head" in stopped.stdout
    assert not state_file.exists()
    assert head is not None and not _session_alive(head["session_id"])
    assert not Client(f"http://127.0.0.1:{port}", max_retries=0).ready()


def test_serve_commands_without_a_running_endpoint_exit_2(tmp_path: Path) -> None:
    for command in ("status", "promote", "stop"):
        proc = _raymlops("serve", command, home=tmp_path, timeout=120)
        assert proc.returncode == 2, (command, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("error: nothing is being served from"), proc.stderr
        assert "Traceback" not in proc.stderr


def test_jobs_serve_entrypoint_is_raymlops_serve(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, str(repo / "jobs" / "serve.py"), "--help"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: jobs/serve.py") and "canary" in proc.stdout
