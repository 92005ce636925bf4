"""Resume after a hard crash: `raymlops train` is SIGKILLed mid-search, then
`raymlops train --resume` finishes the same Tune experiment and registers the model — for
single-process trials and for a data-parallel trial (a Ray Train run inside the trial).

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from raymlops.core.processes import session_processes, stop_session
from raymlops.data.dataset import synth_dataset
from raymlops.registry.store import Registry, load_predictor

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NUM_SAMPLES = 6
EPOCHS = 30
RAYMLOPS = str(Path(sys.executable).with_name("raymlops"))


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` by PID: a local Ray started by a driver runs
    in the driver's session, and its workers leave the process group but not the session."""
    stop_session(sid, term_s=0.0, kill_s=30.0)
    survivors = session_processes(sid)
    assert survivors == {}, f"processes of the killed run survive SIGKILL: {survivors}"


@pytest.fixture
def sessions() -> Iterator[list[int]]:
    """Session ids of the subprocesses a test starts; whatever is left of them is killed."""
    started: list[int] = []
    yield started
    for sid in started:
        _kill_session(sid)


def _train_command(tmp_path: Path, name: str, epochs: int, tune: str) -> tuple[Path, list[str]]:
    """A small classification dataset, a config named `name` training `epochs` epochs with
    the `tune` section given (YAML flow style), and the `raymlops train --json` command line
    for it; returns the run's home and the command."""
    data = tmp_path / "data.parquet"
    synth_dataset(str(data), rows=6000, features=4, categorical=1, seed=3)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"name: {name}\n"
        f"data: {{path: {data}, label: label, id_columns: [id]}}\n"
        "model: {params: {depth: 1, width: 16}}\n"
        f"train: {{epochs: {epochs}, batch_size: 64, early_stopping_patience: null}}\n"
        f"tune: {tune}\n"
        f"registry: {{model_name: {name}, experiment: {name}}}\n"
    )
    home = tmp_path / "home"
    return home, [RAYMLOPS, "train", "-c", str(config), "--home", str(home), "--json"]


def _run_then_kill(
    command: list[str],
    cwd: Path,
    sessions: list[int],
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    waiting_for: str,
) -> None:
    """Start `command` in a session of its own and SIGKILL the whole session (the driver and
    every Ray process it started) as soon as `ready()` holds: a crash at that point."""
    log = cwd / "first-run.log"
    with log.open("wb") as sink:
        first = subprocess.Popen(
            command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    sessions.append(first.pid)
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            if first.poll() is not None:
                pytest.fail(f"the run ended before it was killed:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {waiting_for} within {timeout_s:g} s:\n{log.read_text()}")
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    # Ray workers leave the process group but not the session: kill them by PID.
    _kill_session(first.pid)


def _resume(command: list[str], cwd: Path, sessions: list[int], experiment: Path) -> dict[str, Any]:
    """Run `command --resume` to the end; it must resume `experiment` and succeed. Its
    `--json` result."""
    second = subprocess.Popen(
        [*command, "--resume"],
        cwd=cwd,
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
    assert f"resuming Tune experiment {experiment}" in stderr
    result: dict[str, Any] = json.loads(stdout)
    return result


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


@pytest.mark.long  # ~50 s (a search killed and resumed): in CI's second pass (pytest < 15 min)
def test_resume_after_sigkill_completes_the_experiment(tmp_path: Path, sessions: list[int]) -> None:
    tune = (
        f"{{num_samples: {NUM_SAMPLES}, scheduler: fifo, search_space: "
        "{train.learning_rate: {type: loguniform, low: 0.001, high: 0.01}}}"
    )
    home, command = _train_command(tmp_path, "resume-test", EPOCHS, tune)

    # 1. Start a search and SIGKILL its whole session once two trials have finished.
    _run_then_kill(
        command,
        tmp_path,
        sessions,
        lambda: len(_finished_trials(home)) >= 2,
        timeout_s=240,
        waiting_for="two trials to finish",
    )
    finished_at_kill = _finished_trials(home)

    experiments = sorted((home / "tune").glob("resume-test-*"))
    assert len(experiments) == 1
    assert len(finished_at_kill) < NUM_SAMPLES, "the run finished before it was killed"
    assert Registry(home=home).list_models() == [], "the killed run registered a model"

    # 2. Resume it; the same experiment is completed and the best trial registered.
    result = _resume(command, tmp_path, sessions, experiments[0])
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


# --------------------------------------------------------------------------- data-parallel

DP_EPOCHS = 8


def _train_run_checkpoints(home: Path) -> list[tuple[int, str]]:
    """Epoch and folder name of each checkpoint the trial's Ray Train run has registered,
    oldest first.

    Read from Ray Train's checkpoint-manager snapshot, which lists a checkpoint only once it
    has been persisted in full: it is what a restored run resumes from."""
    found: list[tuple[int, str]] = []
    for snapshot in home.glob("tune/dp-resume-*/*/train/checkpoint_manager_snapshot.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            results = json.loads(snapshot.read_text())["checkpoint_results"]
            found = [(int(r["metrics"]["epoch"]), r["checkpoint_dir_name"]) for r in results]
    return found


@pytest.mark.long  # about 2 minutes: run in CI's second pass, to keep `pytest` under 15
def test_resume_after_sigkill_continues_a_data_parallel_trial(
    tmp_path: Path, sessions: list[int]
) -> None:
    home, command = _train_command(
        tmp_path, "dp-resume", DP_EPOCHS, "{num_samples: 1, scheduler: fifo}"
    )
    # Two Ray Train workers (DDP over gloo), a checkpoint every second epoch: the first
    # epoch after the restored checkpoint writes none, so its result must name the restored
    # checkpoint as the trial's latest.
    command += ["--set", "train.num_workers=2", "--set", "train.checkpoint_every=2"]

    # 1. SIGKILL the whole run once the trial's Train run has a persisted checkpoint.
    _run_then_kill(
        command,
        tmp_path,
        sessions,
        lambda: bool(_train_run_checkpoints(home)),
        timeout_s=300,
        waiting_for="a checkpoint",
    )

    restored_epoch, restored_dir = _train_run_checkpoints(home)[-1]
    assert restored_epoch < DP_EPOCHS, "the trial finished before it was killed"
    [experiment] = sorted((home / "tune").glob("dp-resume-*"))
    assert Registry(home=home).list_models() == [], "the killed run registered a model"

    # 2. Resume: the same trial continues from its checkpoint's epoch, not from epoch 1.
    result = _resume(command, tmp_path, sessions, experiment)
    assert result["trials"] == 1
    assert result["failed_trials"] == 0
    assert result["version"] == 1

    assert sorted((home / "tune").glob("dp-resume-*")) == [experiment]  # no new experiment
    # The trial's results since the restart (Tune counts iterations from 1 again): epoch 1
    # would come first had the trial started over. Results of the killed run past its
    # checkpoint are in progress.csv only if Tune had synced the file before the kill.
    [progress] = experiment.glob("*/progress.csv")
    frame = pd.read_csv(progress)
    restart = max(i for i, n in enumerate(frame["iterations_since_restore"]) if n == 1)
    resumed = [int(e) for e in frame["epoch"]][restart:]
    assert resumed == list(range(restored_epoch + 1, DP_EPOCHS + 1)), (restored_epoch, resumed)
    # Every row's columns line up with the header (a resumed trial's first result has the
    # same keys as the first run's, in the same order).
    assert set(frame["trial_id"]) == {progress.parent.name}
    assert frame["train_rows"].notna().all() and frame["val_loss"].notna().all()
    # Each result names the trial's latest checkpoint: the restored one until a new one.
    assert Path(frame["checkpoint_path"].iloc[restart]).name == restored_dir
    final_epoch, final_dir = _train_run_checkpoints(home)[-1]
    assert final_epoch == DP_EPOCHS
    assert Path(frame["checkpoint_path"].iloc[-1]).name == final_dir

    registry = Registry(home=home)
    versions = registry.list_versions("dp-resume")
    assert [v.version for v in versions] == [1]
    # The trial's MLflow history has each epoch it holds once, the resumed ones included.
    [child] = registry.client.search_runs(
        [registry.experiment_id("dp-resume")],
        filter_string=f"tags.`mlflow.parentRunId` = '{versions[0].run_id}'",
    )
    steps = [m.step for m in registry.client.get_metric_history(child.info.run_id, "val_loss")]
    assert len(steps) == len(set(steps)), sorted(steps)
    assert (
        set(range(restored_epoch + 1, DP_EPOCHS + 1)) <= set(steps) <= set(range(1, DP_EPOCHS + 1))
    )
    # The registered artifact loads and predicts.
    predictor = load_predictor("dp-resume", 1, home=home)
    rows = pd.read_parquet(tmp_path / "data.parquet").head(5)
    assert len(predictor.predict(rows).predictions) == 5
