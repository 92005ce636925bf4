"""`raymlops serve` as a user types it: the command returns and the endpoint keeps serving
from the local Ray head raymlops started; `serve status` reaches it from another process;
`serve stop` deletes the application and stops exactly that head.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raymlops.serve.api import Client
from tests.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAYMLOPS = str(Path(sys.executable).with_name("raymlops"))
SCRUBBED_ENV = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAYMLOPS_DEBUG", "RAYMLOPS_SERVE_TOKEN")


def _raymlops(*args: str, home: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["RAYMLOPS_HOME"] = str(home)
    return subprocess.run(
        [RAYMLOPS, *args], cwd=home, env=env, capture_output=True, text=True, timeout=timeout
    )


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
    port = free_port()
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


def _other_config(home: Path, port: int) -> Path:
    """The embedded default as a file of its own that names another application and port
    (what a user's `-c other.yaml` holds), one replica of half a CPU."""
    import yaml

    from raymlops.core.config import load_config

    config = load_config(None, []).model_dump(mode="json")
    config["serve"].update(app_name="other-app", port=port, cpus_per_replica=0.5)
    config["serve"]["autoscaling"].update(min_replicas=1, initial_replicas=1)
    path = home / "other.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _answers(url: str) -> bool:
    return Client(url, max_retries=0).ready()


@pytest.mark.long
def test_status_and_stop_without_config_find_an_app_deployed_from_another(
    tmp_path: Path,
) -> None:
    """`serve -c other.yaml` (another app name, another port), then `serve status` and
    `serve stop` with no -c: they act on that application, and the endpoint stops answering."""
    _register_champion(tmp_path)
    port = free_port()
    other = _other_config(tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    deployed = _raymlops("serve", "-c", str(other), "--json", home=tmp_path)
    state_file = tmp_path / "serve" / "ray-head.json"
    head = json.loads(state_file.read_text()) if state_file.exists() else None
    try:
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        assert json.loads(deployed.stdout)["app"] == "other-app"
        assert _answers(url)

        shown = _raymlops("serve", "status", home=tmp_path)
        assert shown.returncode == 0, shown.stderr[-3000:]
        assert shown.stdout.startswith(f"other-app: RUNNING at {url}"), shown.stdout
        as_json = _raymlops("serve", "status", "--json", home=tmp_path)
        assert as_json.returncode == 0, as_json.stderr[-3000:]
        document = json.loads(as_json.stdout)  # one application: the object, as before
        assert (document["app"], document["url"], document["champion"]) == ("other-app", url, 1)
    finally:
        stopped = _raymlops("serve", "stop", home=tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert stopped.stdout.strip() == "stopped: application other-app, raymlops Ray head"
    assert not _answers(url)
    assert not state_file.exists()
    assert head is not None and not _session_alive(head["session_id"])


@pytest.mark.long
def test_several_apps_status_lists_them_stop_takes_all_this_home_serves(tmp_path: Path) -> None:
    """Two applications on the head this home started: `status` shows both (--json: a list),
    `stop` stops both and the head. (On a cluster given by address, where others' may run
    too, stop refuses instead: tests/integration/test_serving.py.)"""
    _register_champion(tmp_path)
    port = free_port()
    other = _other_config(tmp_path, port)
    second = ["--set", "serve.app_name=second", "--set", "serve.route_prefix=/second"]
    urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/second"]
    first_run = _raymlops("serve", "-c", str(other), home=tmp_path)
    second_run = _raymlops("serve", "-c", str(other), *second, home=tmp_path)
    state_file = tmp_path / "serve" / "ray-head.json"
    head = json.loads(state_file.read_text()) if state_file.exists() else None
    try:
        assert first_run.returncode == 0, first_run.stderr[-3000:]
        assert second_run.returncode == 0, second_run.stderr[-3000:]
        assert head is not None and all(_answers(url) for url in urls)

        shown = _raymlops("serve", "status", "--json", home=tmp_path)
        assert shown.returncode == 0, shown.stderr[-3000:]
        assert [d["app"] for d in json.loads(shown.stdout)] == ["other-app", "second"]
        text = _raymlops("serve", "status", home=tmp_path).stdout
        assert "other-app: RUNNING" in text and "second: RUNNING" in text
    finally:
        stopped = _raymlops("serve", "stop", home=tmp_path)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert stopped.stdout.strip() == (
        "stopped: application other-app, application second, raymlops Ray head"
    )
    assert not any(_answers(url) for url in urls)
    assert head is not None and not _session_alive(head["session_id"])


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
