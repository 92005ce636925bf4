"""The main job end to end, as README command 1 runs it: `raymlops run` on the embedded
default (shrunk to 2 trials × 5 epochs per search) closes the loop — train, gate, serve over
real HTTP, batch inference, drifted traffic, monitor, retrain, gate, canary, promote — and
leaves a complete, ordered alias history, a card, a drift report and nothing running."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raymlops.registry.store import Registry
from tests.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAYMLOPS = str(Path(sys.executable).with_name("raymlops"))
SCRUBBED_ENV = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAYMLOPS_TUNE_STORAGE", "RAYMLOPS_DEBUG")


@pytest.fixture(scope="module")
def main_job(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    home = tmp_path_factory.mktemp("main-job")
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["RAYMLOPS_HOME"] = str(home)
    port = free_port()  # for the endpoint
    proc = subprocess.run(
        [
            RAYMLOPS,
            "run",
            "--set",
            "tune.num_samples=2",
            "--set",
            "train.epochs=5",
            "--set",
            "retrain.canary_requests=60",
            "--set",
            f"serve.port={port}",
        ],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return home, proc


def test_the_main_job_closes_the_loop(
    main_job: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    home, proc = main_job
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    for step in (
        "train: Ray Tune search",
        "gate v1",
        "batch inference (Ray Data; a small input in this process)",
        "serve the champion on Ray Serve",
        "simulated production traffic with drift",
        "monitor: drift against the training profile",
        "retrain → gate → canary → promote",
    ):
        assert step in err, step
    assert "DRIFT" in err  # the monitor's verdict on the shifted traffic
    assert "canary v2 healthy" in err
    assert "the endpoint now answers with v2" in err

    registry = Registry(home=home)
    assert registry.alias_target("breast-cancer", "champion") == 2
    history = registry.alias_history("breast-cancer")
    actions = [e.action for e in history]
    assert [e.sequence for e in history] == list(range(1, len(history) + 1))
    # The order the loop took, each step recorded.
    expected = ["register", "gate", "retrain-start", "register", "gate", "canary-start", "promote"]
    cursor = 0
    for action in expected:
        assert action in actions[cursor:], (action, actions)
        cursor = actions.index(action, cursor) + 1
    promote = next(e for e in history if e.action == "promote")
    assert (promote.from_version, promote.to_version) == (1, 2)
    assert promote.reason.startswith("retrained: drift")


def test_the_main_job_leaves_its_results_where_the_summary_says(
    main_job: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    home, proc = main_job
    assert proc.returncode == 0
    out = proc.stdout
    paths = {
        key: line.split(":", 1)[1].strip()
        for line in out.splitlines()
        for key in ("model card", "drift report", "batch output")
        if line.strip().startswith(key + ":")
    }
    assert set(paths) == {"model card", "drift report", "batch output"}, out
    card = Path(paths["model card"]).read_text()
    assert "breast-cancer" in card and "v2" in card
    report = Path(paths["drift report"])
    assert report.read_text().lstrip().lower().startswith("<!doctype html")
    result = json.loads(report.with_suffix(".json").read_text())
    assert result["drift_detected"] is True
    batch = pq.read_table(sorted(Path(paths["batch output"]).glob("part-*.parquet")))
    assert batch.num_rows == 569  # every row of the embedded dataset, exactly once
    assert f"mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}" in out
    # Nothing left running: the endpoint went with the command's own Ray.
    port = int(next(a for a in proc.args if str(a).startswith("serve.port=")).split("=")[1])
    with socket.socket() as probe, pytest.raises(OSError):
        probe.settimeout(2)
        probe.connect(("127.0.0.1", port))
