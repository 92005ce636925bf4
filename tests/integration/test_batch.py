"""Batch inference on a real local Ray (one per module, 2 CPUs) and a real MLflow SQLite store:
every row exactly once, the Predictor's own predictions, resume after a crash, a killed
actor, schema and corrupt-file errors, bad rows, and an input several times larger than the
object store (which the module's Ray keeps at Ray's minimum size) through a `raymlops batch`
that joins this Ray with --address, its driver's peak memory measured.

Models are registered in seconds by training in this process (tests.integration.
batch_support); runs that must be interrupted use its slow architecture in a `raymlops batch`
subprocess with a Ray of its own, which the test kills.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from raymlops.batch.run import BatchResult, run_batch
from raymlops.cli.main import cli
from raymlops.core.config import PipelineConfig
from raymlops.core.errors import DataError, UserInputError
from raymlops.core.processes import session_processes
from raymlops.data.dataset import synth_dataset
from raymlops.registry.store import Registry, load_predictor

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # batch_support is imported as tests.integration.batch_support
    sys.path.insert(0, str(REPO))  # by Ray workers too (PYTHONPATH below)

from tests.integration import batch_support  # noqa: E402
from tests.integration.batch_support import (  # noqa: E402
    SLOW,
    SLOW_ENV,
    batch_config,
    kill_session,
    read_output,
    register_model,
    unit_stats,
    wait_for,
)
from tests.integration.ray_support import SCRUBBED_ENV, local_ray  # noqa: E402

RAYMLOPS = str(Path(sys.executable).with_name("raymlops"))
ROWS, FILES = 12_000, 6
#: The module's Ray keeps a small object store (Ray accepts no less than 75 MiB), so that a
#: 520 MB input is six times larger than it.
OBJECT_STORE_BYTES = 80 * 1024**2
#: The large input: id + 64 float64 features, 10 files of 100k rows (520 MB decoded).
WIDE, WIDE_FILES, WIDE_FILE_ROWS = 64, 10, 100_000

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """The module's Ray with an object store of OBJECT_STORE_BYTES; workers find
    tests.integration on PYTHONPATH."""
    with local_ray(object_store_memory=OBJECT_STORE_BYTES):
        yield


# The shared fixtures of batch_support: a registry home, 12,000 rows in 6 Parquet files (id,
# f0…f7, c0 with 8 levels, label) and version 1 (champion) of 'bm', an MLP trained on them.
# executor ray: this module tests the actor pool on its Ray; auto would run so small an input
# in this process (test_batch_local.py).
INPUT = {"rows": ROWS, "features": 8, "categorical": 1, "seed": 3}
MODEL = ("bm", {"executor": "ray"})
home, data, model = batch_support.home, batch_support.data, batch_support.model


@pytest.fixture(scope="module")
def slow_model(home: Path, data: Path) -> PipelineConfig:
    """'bm-slow': the same, with a forward pass that sleeps $RAYMLOPS_TEST_SLOW_S."""
    # executor ray: these runs test the actor pool (its own local Ray, actors to kill); a
    # small input would otherwise run in the command's process (test_batch_local.py).
    config = batch_config("bm-slow", data, architecture=SLOW, batch_size=500, executor="ray")
    register_model(config, home)
    return config


@pytest.fixture(scope="module")
def finished(
    home: Path, data: Path, model: PipelineConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, BatchResult]:
    """One complete run of 'bm' over `data`."""
    out = tmp_path_factory.mktemp("finished") / "preds"
    return out, run_batch(model, str(data), str(out), home=home, echo=False)


@pytest.fixture(scope="module")
def wide_model(home: Path, tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    """'bw': an MLP over 64 numeric features f0…f63, trained on 2,000 synthetic rows."""
    sample = tmp_path_factory.mktemp("wide") / "train.parquet"
    synth_dataset(str(sample), rows=2_000, features=WIDE, categorical=0, seed=4)
    config = batch_config("bw", sample, executor="ray")  # the actor pool, as "bm"
    register_model(config, home)
    return config


def write_wide_input(folder: Path, files: int, rows_per_file: int) -> int:
    """Parquet files of `id` and f0…f63 as float64; returns the input's decoded size (the
    bytes of its Arrow tables). Values come from 64 levels, so Parquet's dictionary encoding
    keeps the files about 8× smaller on disk than decoded (quick to write and read)."""
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True)
    decoded = 0
    for i in range(files):
        columns: dict[str, np.ndarray] = {
            "id": np.arange(i * rows_per_file, (i + 1) * rows_per_file, dtype=np.int64)
        }
        for j in range(WIDE):
            columns[f"f{j}"] = rng.integers(-32, 32, rows_per_file) / 8.0
        table = pa.table(columns)
        decoded += table.nbytes
        pq.write_table(table, folder / f"part-{i:05d}.parquet", row_group_size=50_000)
    return decoded


def object_store_totals() -> tuple[int, int]:
    """Bytes ever created in this module's object store, and ever spilled from it (the
    raylet's cumulative counters, as `ray memory --stats-only` reads them)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    stats = get_memory_info_reply(state).store_stats
    return int(stats.cumulative_created_bytes), int(stats.spilled_bytes_total)


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a live process: the peak resident memory of what it runs now (ru_maxrss
    from wait4 would not do: it also counts the forking parent's memory before the exec)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    lines = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(lines[0].split()[1]) / 1024 if lines else None


def run_joined(home: Path, config: Path, source: Path, out: Path) -> tuple[dict[str, Any], float]:
    """`raymlops batch --address <this module's Ray> --json` as a process of its own; returns
    its JSON result and its peak resident memory in MB (VmHWM, read every 20 ms until it
    exits: the peak is monotonic, so only its last moments could go unseen)."""
    import ray

    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["RAYMLOPS_HOME"] = str(home)
    address = ray.get_runtime_context().gcs_address
    command = [RAYMLOPS, "batch", "-c", str(config), "--input", str(source)]
    command += ["--output", str(out), "--address", address, "--json"]
    logs = out.with_name(out.name + ".out"), out.with_name(out.name + ".err")
    peak = 0.0
    with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
        proc = subprocess.Popen(command, env=env, cwd=home, stdout=stdout, stderr=stderr)
        deadline = time.monotonic() + 300
        while proc.poll() is None:
            peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError(f"raymlops batch on {source} did not finish in 300 s")
            time.sleep(0.02)
    assert proc.returncode == 0, logs[1].read_text()[-3000:]
    assert peak > 0
    # What the person sees is raymlops' own words: Ray's lines (its core worker's error
    # about the actor pool's arguments, which every run provokes) are in the home's log.
    shown = logs[1].read_text()
    assert "core_worker" not in shown and " -- " not in shown, shown
    routed = "".join(p.read_text() for p in (home / "logs").glob("*-batch-*.log"))
    assert "core_worker.cc" in routed, routed
    return json.loads(logs[0].read_text()), peak


def config_file(folder: Path, config: PipelineConfig) -> Path:
    path = folder / f"{config.name}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["batch", *args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


def error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def start_cli(
    home: Path, config: Path, data: Path, out: Path, slow_s: float
) -> subprocess.Popen[str]:
    """`raymlops batch` in a session of its own (with its own local Ray: `config`'s
    batch.executor is ray), slowed down."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    pythonpath = env.get("PYTHONPATH")
    env.update(
        RAYMLOPS_HOME=str(home),
        PYTHONPATH=str(REPO) + (os.pathsep + pythonpath if pythonpath else ""),
        **{SLOW_ENV: str(slow_s)},
    )
    command = [RAYMLOPS, "batch", "-c", str(config), "--input", str(data), "--output", str(out)]
    return subprocess.Popen(
        [*command, "--json"],
        env=env,
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def assert_every_row_once(out: Path, dead_runs: int = 0) -> pd.DataFrame:
    """Every input row once in the output, and no temporary file left but those of
    `dead_runs` killed runs (removed by a later run once they are stale)."""
    rows = read_output(out)
    assert len(rows) == ROWS
    assert rows["id"].is_unique and set(rows["id"]) == set(range(ROWS))
    left = sorted(p.name for p in (out / ".tmp").iterdir()) if (out / ".tmp").exists() else []
    assert len(left) <= dead_runs, left
    return rows


# --------------------------------------------------------------------------- the happy path


def test_every_row_once_with_the_predictions_of_the_predictor(
    home: Path, data: Path, finished: tuple[Path, BatchResult]
) -> None:
    out, result = finished
    assert (result.rows_in, result.rows_out, result.rows_rejected) == (ROWS, ROWS, 0)
    assert (result.units_total, result.units_run, result.units_skipped) == (FILES, FILES, 0)
    assert result.model_version == 1 and not result.already_complete
    assert result.plan is not None and result.plan.actors == 2
    assert result.plan.cpus_per_actor == 0.9  # two actors never take both CPUs
    assert sorted(p.name for p in out.iterdir()) == [
        "_raymlops_batch.json", *(f"part-{i:05d}.parquet" for i in range(FILES))
    ]  # fmt: skip

    rows = assert_every_row_once(out).sort_values("id").reset_index(drop=True)
    assert set(rows["model_name"]) == {"bm"} and set(rows["model_version"]) == {1}
    assert list(rows.columns) == [
        "id", "prediction", "proba_0", "proba_1", "model_name", "model_version"
    ]  # fmt: skip
    source = pq.read_table(data).to_pandas().sort_values("id").reset_index(drop=True)
    direct = load_predictor("bm", "champion", home=home).predict(source).to_frame()
    assert rows["prediction"].tolist() == direct["prediction"].tolist()
    np.testing.assert_allclose(rows["proba_1"], direct["proba_1"], rtol=1e-6, atol=1e-7)

    manifest = json.loads((out / "_raymlops_batch.json").read_text())
    assert manifest["complete"] and manifest["summary"]["rows_out"] == ROWS
    assert manifest["fingerprint"]["version"] == 1 and len(manifest["units"]) == FILES

    run = Registry(home=home).client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["raymlops.step"] == "batch"
    assert run.data.tags["raymlops.model_version"] == "1"
    assert run.data.tags["raymlops.input_digest"] == result.input_digest
    assert run.data.tags["raymlops.input"] == str(data)
    metrics = run.data.metrics
    assert (metrics["rows_in"], metrics["rows_out"], metrics["rows_rejected"]) == (ROWS, ROWS, 0)
    assert metrics["rows_per_s"] == pytest.approx(result.rows_per_s) and metrics["rows_per_s"] > 0
    assert run.data.params["actors"] == "2"


def test_a_finished_output_is_reported_complete_and_exits_0(
    tmp_path: Path,
    home: Path,
    data: Path,
    model: PipelineConfig,
    finished: tuple[Path, BatchResult],
) -> None:
    out, _ = finished
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    config = config_file(tmp_path, model)
    code, stdout, stderr = invoke(
        "-c", str(config), "--home", str(home), "--input", str(data), "--output", str(out)
    )
    assert code == 0, stderr
    assert "already complete" in stdout and f"{ROWS:,} in, {ROWS:,} out" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing rewritten


def test_other_arguments_on_an_existing_output_are_refused(
    tmp_path: Path,
    home: Path,
    data: Path,
    model: PipelineConfig,
    finished: tuple[Path, BatchResult],
) -> None:
    out, _ = finished
    config = config_file(tmp_path, model)
    args = ["-c", str(config), "--home", str(home), "--input", str(data), "--output", str(out)]
    code, _, stderr = invoke(*args, "--on-bad-rows", "skip")
    assert code == 2
    line = error_line(stderr)
    assert "holds the output of another batch run" in line
    assert "on_bad_rows 'fail' → 'skip'" in line
    code, _, stderr = invoke(*args, "--version", "7")
    assert code == 2 and "model 'bm' has no version 7" in error_line(stderr)


# --------------------------------------------------------------------------- streaming


def test_an_input_six_times_the_object_store_streams_with_a_bounded_driver(
    tmp_path: Path, home: Path, wide_model: PipelineConfig
) -> None:
    """520 MB of decoded input through an 80 MiB object store, by a `raymlops batch` that
    joins this Ray with --address: every row once, next to nothing created in (let alone
    spilled from) the object store, and the driver's peak memory no higher than on a
    one-file input of 10,000 rows."""
    import ray

    assert ray.cluster_resources()["object_store_memory"] <= OBJECT_STORE_BYTES
    large = tmp_path / "large"
    decoded = write_wide_input(large, WIDE_FILES, WIDE_FILE_ROWS)
    assert decoded > 6 * OBJECT_STORE_BYTES
    small = tmp_path / "small"
    write_wide_input(small, 1, 10_000)
    config = config_file(tmp_path, wide_model)

    small_result, small_peak_mb = run_joined(home, config, small, tmp_path / "small-out")
    assert small_result["rows_out"] == 10_000
    created, spilled = object_store_totals()
    result, peak_mb = run_joined(home, config, large, tmp_path / "large-out")
    created_after, spilled_after = object_store_totals()

    rows = WIDE_FILES * WIDE_FILE_ROWS
    assert (result["rows_in"], result["rows_out"], result["units_run"]) == (rows, rows, WIDE_FILES)
    assert result["actors"] == 2 and len(result["nodes"]) == 1
    ids = pq.read_table(tmp_path / "large-out", columns=["id"]).column("id").to_numpy()
    assert len(ids) == rows and np.array_equal(np.sort(ids), np.arange(rows))
    # Rows never pass through the object store: what the run put there (unit descriptions,
    # one line of statistics per unit, Ray Data's bookkeeping) is a sliver of the input
    # (measured: 1.3 MB of 520 MB; a pipeline of rows would put all 520 MB there).
    assert spilled_after == spilled
    assert created_after - created < decoded / 50, (created_after - created, decoded)
    # The driver holds units and statistics, never rows: 100× the input, the same peak
    # (measured: 483 MB both, +0.6 MB; holding the input, or even one of its files, would
    # add 52-520 MB).
    assert peak_mb - small_peak_mb < 40, (small_peak_mb, peak_mb)


# --------------------------------------------------------------------------- crashes


@pytest.mark.slow
def test_a_run_killed_midway_resumes_and_writes_every_row_once(
    tmp_path: Path, home: Path, data: Path, slow_model: PipelineConfig
) -> None:
    out = tmp_path / "preds"
    proc = start_cli(home, config_file(tmp_path, slow_model), data, out, slow_s=0.4)
    try:
        wait_for(lambda: any(out.glob("part-*.parquet")), 150, "a first finished unit")
    finally:
        kill_session(proc.pid)  # the driver and its whole Ray, mid-run
        proc.wait(timeout=30)
    done_before = sorted(p.name for p in out.glob("part-*.parquet"))
    assert 1 <= len(done_before) < FILES, done_before

    result = run_batch(slow_model, str(data), str(out), home=home, echo=False)
    assert result.units_skipped == len(done_before)
    assert result.units_run == FILES - len(done_before)
    assert (result.rows_in, result.rows_out) == (ROWS, ROWS)
    # The killed run's temporary folder is fresh: a live run's for all the rerun can tell.
    assert_every_row_once(out, dead_runs=1)
    assert len(unit_stats(out)) == FILES


@pytest.mark.slow
def test_two_runs_into_one_output_both_finish_and_write_every_row_once(
    tmp_path: Path, home: Path, data: Path, slow_model: PipelineConfig
) -> None:
    """A second run started while the first writes never removes the first's temporary
    files (each has its own folder in `.tmp/`): both finish, every row is there once (#15)."""
    out = tmp_path / "preds"
    config = config_file(tmp_path, slow_model)
    first = start_cli(home, config, data, out, slow_s=0.4)
    second: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: any((out / ".tmp").glob("*/part-*")), 150, "the first run writing")
        second = start_cli(home, config, data, out, slow_s=0.4)
        answers = [proc.communicate(timeout=400) for proc in (first, second)]
    finally:
        for proc in (first, second):
            if proc is not None:
                kill_session(proc.pid)
    assert first.returncode == 0, answers[0][1][-3000:]
    assert second.returncode == 0, answers[1][1][-3000:]
    assert_every_row_once(out)  # and no temporary folder left behind


@pytest.mark.slow
def test_an_actor_killed_midway_is_replaced_and_every_row_is_still_written_once(
    tmp_path: Path, home: Path, data: Path, slow_model: PipelineConfig
) -> None:
    out = tmp_path / "preds"
    proc = start_cli(home, config_file(tmp_path, slow_model), data, out, slow_s=0.4)
    try:
        wait_for(lambda: any(out.glob("part-*.parquet")), 150, "a first finished unit")
        actors = [p for p, args in session_processes(proc.pid).items() if "MapWorker" in args]
        assert actors, session_processes(proc.pid)
        os.kill(actors[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        kill_session(proc.pid)
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads(stdout)
    assert (result["rows_in"], result["rows_out"], result["units_run"]) == (ROWS, ROWS, FILES)
    assert_every_row_once(out)
    writers = {s["pid"] for s in unit_stats(out)}
    assert actors[0] not in session_processes(proc.pid)
    # The units the killed actor held were redone by its replacement or by the other actor.
    assert len(writers - {actors[0]}) >= 1


# --------------------------------------------------------------------------- bad input


def test_a_missing_or_mistyped_feature_exits_2_naming_column_and_file(
    tmp_path: Path, home: Path, data: Path, model: PipelineConfig
) -> None:
    config = config_file(tmp_path, model)
    table = pq.read_table(data / "part-00000.parquet")
    missing = tmp_path / "missing"
    missing.mkdir()
    pq.write_table(table.drop_columns(["f3"]), missing / "a.parquet")
    code, _, stderr = invoke(
        "-c", str(config), "--home", str(home), "--input", str(missing),
        "--output", str(tmp_path / "out1"),
    )  # fmt: skip
    assert code == 2
    assert f"feature column 'f3' is missing from {missing / 'a.parquet'}" in error_line(stderr)

    typed = tmp_path / "typed.parquet"
    stamps = pa.array(np.zeros(table.num_rows, dtype="datetime64[s]"))
    pq.write_table(table.set_column(table.schema.get_field_index("f5"), "f5", stamps), typed)
    code, _, stderr = invoke(
        "-c", str(config), "--home", str(home), "--input", str(typed),
        "--output", str(tmp_path / "out2"),
    )  # fmt: skip
    assert code == 2
    line = error_line(stderr)
    assert f"feature column 'f5' in {typed} has type timestamp[" in line  # [ms] in Parquet
    assert not (tmp_path / "out2" / "part-00000.parquet").exists()


def test_a_corrupt_file_exits_2_naming_it(
    tmp_path: Path, home: Path, data: Path, model: PipelineConfig
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.parquet").write_bytes((data / "part-00000.parquet").read_bytes())
    truncated = (data / "part-00001.parquet").read_bytes()
    (folder / "b.parquet").write_bytes(truncated[: len(truncated) // 2])
    code, _, stderr = invoke(
        "-c", str(config_file(tmp_path, model)), "--home", str(home),
        "--input", str(folder), "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 2
    assert f"cannot read {folder / 'b.parquet'}" in error_line(stderr)


def test_bad_rows_go_to_rejects_with_their_reason_or_fail_with_exit_2(
    tmp_path: Path, home: Path, data: Path, model: PipelineConfig
) -> None:
    frame = pq.read_table(data / "part-00002.parquet").to_pandas().drop(columns=["label"])
    frame["f1"] = frame["f1"].map(repr).astype(object)
    frame.loc[[5, 700], "f1"] = ["oops", "12,5"]
    source = tmp_path / "dirty.csv"
    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), source)
    config = config_file(tmp_path, model)
    args = ["-c", str(config), "--home", str(home), "--input", str(source)]

    code, stdout, stderr = invoke(
        *args, "--output", str(tmp_path / "skip"), "--on-bad-rows", "skip"
    )
    assert code == 0, stderr
    # The summary: counts, throughput, where the output (and the rejects) went.
    assert "2,000 in, 1,998 out, 2 rejected" in stdout and "_rejects" in stdout
    assert f"batch bm v1 → {tmp_path / 'skip'}" in stdout
    assert re.search(r"throughput: [\d,]+ rows/s \(2,000 rows in", stdout), stdout
    # The progress bar, counting units: a CSV file's rows are unknown until it is read.
    assert re.search(r"predicting 1 unit\b", stderr), stderr
    written = read_output(tmp_path / "skip")
    assert len(written) == 1998 and not (
        {int(frame["id"][5]), int(frame["id"][700])} & set(written["id"])
    )
    rejects = pq.read_table(tmp_path / "skip" / "_rejects").to_pandas()
    assert rejects["source_row"].tolist() == [5, 700]
    assert rejects["reason"].tolist() == [
        "column 'f1': 'oops' is not a number",
        "column 'f1': '12,5' is not a number",
    ]

    code, _, stderr = invoke(*args, "--output", str(tmp_path / "fail"))
    assert code == 2
    line = error_line(stderr)
    assert f"{source}: row 5: column 'f1': 'oops' is not a number" in line
    assert "--on-bad-rows skip" in line
    assert not list((tmp_path / "fail").glob("part-*.parquet"))


def test_file_uris_for_input_and_output(
    tmp_path: Path,
    home: Path,
    data: Path,
    model: PipelineConfig,
    finished: tuple[Path, BatchResult],
) -> None:
    """A file:// URI of one file in, a file:// URI of a folder out (the pyarrow file system
    path that s3:// and gs:// take too): the same predictions as the folder run."""
    source = data / "part-00003.parquet"
    out = tmp_path / "uri"
    result = run_batch(model, source.as_uri(), out.as_uri(), home=home, echo=False)
    assert (result.rows_in, result.rows_out, result.units_total) == (2_000, 2_000, 1)
    rows = read_output(out).sort_values("id").reset_index(drop=True)
    ids = set(pq.read_table(source, columns=["id"]).column("id").to_pylist())
    before = read_output(finished[0])
    before = before[before["id"].isin(ids)].sort_values("id").reset_index(drop=True)
    assert rows["id"].tolist() == before["id"].tolist() and len(rows) == 2_000
    assert rows["prediction"].tolist() == before["prediction"].tolist()
    manifest = json.loads((out / "_raymlops_batch.json").read_text())
    assert manifest["complete"] and manifest["fingerprint"]["input"] == source.as_uri()


def test_gpus_the_cluster_lacks_exit_2_before_any_compute(
    tmp_path: Path, home: Path, data: Path, model: PipelineConfig
) -> None:
    """--gpus (or batch.gpus_per_actor) reaches the actor pool's plan: on this CPU-only Ray a
    GPU per actor is one error line, exit 2, and nothing is computed."""
    args = ["-c", str(config_file(tmp_path, model)), "--home", str(home), "--input", str(data)]
    code, _, stderr = invoke(*args, "--output", str(tmp_path / "o1"), "--gpus", "1")
    assert code == 2
    assert "1 GPU(s) per actor (--gpus / batch.gpus_per_actor) but the Ray cluster has 0 GPUs" in (
        error_line(stderr)
    )
    code, _, stderr = invoke(
        *args, "--output", str(tmp_path / "o2"), "--set", "batch.gpus_per_actor=0.5"
    )
    assert code == 2 and "0.5 GPU(s) per actor" in error_line(stderr)
    assert not list(tmp_path.glob("o*/part-*.parquet"))


def test_output_inside_input_or_a_foreign_folder_is_refused(
    tmp_path: Path, home: Path, data: Path, model: PipelineConfig
) -> None:
    with pytest.raises(UserInputError, match="is inside --input"):
        run_batch(model, str(data), str(data / "preds"), home=home, echo=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="not the output of raymlops batch"):
        run_batch(model, str(data), str(foreign), home=home, echo=False)
    with pytest.raises(DataError, match="data not found"):
        run_batch(model, str(tmp_path / "nothing"), str(tmp_path / "o"), home=home, echo=False)


@pytest.mark.gpu
def test_gpu_actors_predict_what_cpu_actors_predict(
    tmp_path: Path,
    home: Path,
    data: Path,
    model: PipelineConfig,
    finished: tuple[Path, BatchResult],
) -> None:
    out = tmp_path / "gpu"
    result = run_batch(model, str(data), str(out), home=home, gpus=1, echo=False)
    assert result.plan is not None and result.plan.gpus_per_actor == 1
    assert result.plan.batch_size == model.batch.gpu_batch_size
    gpu = read_output(out).sort_values("id").reset_index(drop=True)
    cpu = read_output(finished[0]).sort_values("id").reset_index(drop=True)
    assert gpu["prediction"].tolist() == cpu["prediction"].tolist()
    np.testing.assert_allclose(gpu["proba_1"], cpu["proba_1"], atol=1e-5)
