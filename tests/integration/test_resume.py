"""Resume after a hard crash: `raymlops train` is SIGKILLed mid-search, then
`raymlops train --resume` finishes the same Tune experiment and registers the model.

Both runs are CLI subprocesses with their own local Ray; this module starts no Ray in the
test process, so killing the first run's Ray processes cannot touch a shared one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raymlops.data import synth_dataset
from raymlops.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NUM_SAMPLES = 6
EPOCHS = 30
SCRUBBED_ENV = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAYMLOPS_TUNE_STORAGE", "RAYMLOPS_DEBUG")
RAYMLOPS = str(Path(sys.executable).with_name("raymlops"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SCRUBBED_ENV:
        monkeypatch.delenv(name, raising=False)


def _live_session_processes(sid: int) -> list[str]:
    """`pid stat args` of the processes of session `sid` that are not zombies.

    A local Ray started by a driver runs in the driver's session; its workers make their
    own process groups but stay in the session, so the session id finds all of them."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    live = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[1] == str(sid) and not parts[2].startswith("Z"):
            live.append(line.strip())
    return live


def _kill_session(sid: int, timeout: float = 30.0) -> list[str]:
    """SIGKILL every live process of session `sid` by PID; return what was still alive."""
    found = _live_session_processes(sid)
    deadline = time.monotonic() + timeout
    remaining = found
    while remaining and time.monotonic() < deadline:
        for line in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        time.sleep(0.2)
        remaining = _live_session_processes(sid)
    assert remaining == [], f"processes of the killed run survive SIGKILL: {remaining}"
    return found


@pytest.fixture
def sessions() -> Iterator[list[int]]:
    """Session ids of the subprocesses a test starts; whatever is left of them is killed."""
    started: list[int] = []
    yield started
    for sid in started:
        _kill_session(sid)


def _finished_trials(home: Path) -> list[str]:
    """Trial folders of the pipeline's experiment holding their last epoch's checkpoint."""
    finished = []
    for trial in sorted(home.glob("tune/resume-test-*/*/")):
        for state in trial.glob("checkpoint_*/state.json"):
            with contextlib.suppress(OSError, ValueError):
                if json.loads(state.read_text())["epoch"] == EPOCHS:
                    finished.append(trial.name)
                    break
    return finished


def test_resume_after_sigkill_completes_the_experiment(tmp_path: Path, sessions: list[int]) -> None:
    home = tmp_path / "home"
    data = tmp_path / "data.parquet"
    synth_dataset(str(data), rows=6000, features=4, categorical=1, seed=3)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "name: resume-test\n"
        f"data: {{path: {data}, label: label, id_columns: [id]}}\n"
        "model: {params: {depth: 1, width: 16}}\n"
        f"train: {{epochs: {EPOCHS}, batch_size: 64, early_stopping_patience: null}}\n"
        "tune:\n"
        f"  num_samples: {NUM_SAMPLES}\n"
        "  scheduler: fifo\n"
        "  search_space:\n"
        "    train.learning_rate: {type: loguniform, low: 0.001, high: 0.01}\n"
        "registry: {model_name: resume-test, experiment: resume-test}\n"
    )
    command = [RAYMLOPS, "train", "-c", str(config), "--home", str(home), "--json"]

    # 1. Start a search and SIGKILL its whole session once two trials have finished.
    log = tmp_path / "first-run.log"
    with log.open("wb") as sink:
        first = subprocess.Popen(
            command, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    sessions.append(first.pid)
    deadline = time.monotonic() + 240
    try:
        while len(_finished_trials(home)) < 2:
            if first.poll() is not None:
                pytest.fail(f"the run ended before it was killed:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no two trials finished within 240 s:\n{log.read_text()}")
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finished_at_kill = _finished_trials(home)
    assert first.returncode == -signal.SIGKILL
    # Ray workers leave the process group but not the session: kill them by PID.
    _kill_session(first.pid)

    experiments = sorted((home / "tune").glob("resume-test-*"))
    assert len(experiments) == 1
    assert len(finished_at_kill) < NUM_SAMPLES, "the run finished before it was killed"
    assert Registry(home=home).list_models() == [], "the killed run registered a model"

    # 2. Resume it; the same experiment is completed and the best trial registered.
    second = subprocess.Popen(
        [*command, "--resume"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sessions.append(second.pid)
    try:
        stdout, stderr = second.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(second.pid, signal.SIGKILL)
        stdout, stderr = second.communicate()
        pytest.fail(f"raymlops train --resume did not finish within 400 s:\n{stderr[-4000:]}")
    assert second.returncode == 0, stderr[-4000:]
    assert "Traceback" not in stderr
    assert f"resuming Tune experiment {experiments[0]}" in stderr
    result = json.loads(stdout)
    assert result["trials"] == NUM_SAMPLES
    assert result["failed_trials"] == 0
    assert result["version"] == 1
    assert result["aliases"] == ["champion"]

    assert sorted((home / "tune").glob("resume-test-*")) == experiments  # no new experiment
    assert len([p for p in experiments[0].iterdir() if p.is_dir()]) == NUM_SAMPLES
    registry = Registry(home=home)
    versions = registry.list_versions("resume-test")
    assert [v.version for v in versions] == [1]
    assert versions[0].tags["raymlops.tune_experiment"] == str(experiments[0])
    assert versions[0].tags["raymlops.trial_id"] in {p.name for p in experiments[0].iterdir()}
    # Every trial is in MLflow as a child run whose history reaches the last epoch.
    client = registry.client
    children = client.search_runs(
        [registry.experiment_id("resume-test")],
        filter_string=f"tags.`mlflow.parentRunId` = '{versions[0].run_id}'",
    )
    assert len(children) == NUM_SAMPLES
    for child in children:
        steps = {m.step for m in client.get_metric_history(child.info.run_id, "val_loss")}
        assert EPOCHS in steps
        assert steps <= set(range(1, EPOCHS + 1))

    # 3. The finished experiment is registered, so there is nothing left to resume.
    again = subprocess.run(
        [*command, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 2, again.stderr
    assert again.stderr.strip().splitlines()[-1].startswith("error: nothing to resume")
    assert [v.version for v in Registry(home=home).list_versions("resume-test")] == [1]
