"""The main job on streamed data (`data.streaming: true`), as a user runs it: `raymlops run`
over a Parquet folder closes the loop without loading the data whole — trials are Ray Train
runs fed by Ray Data, batch inference reads the folder in place, traffic and the retraining
set come from bounded samples and a batch-by-batch copy.

It also guards a hang: more trials than fit at once means each wave of Ray Train runs must
hand its CPUs to the next after Tune stops it. Ray Train's own cleaner could not tell that a
stopped trial's controller had died (without the dashboard, or after one GCS time-out), kept
its placement group, and the next trials waited forever (the search, then batch, found no
free CPU); raymlops' keeper frees them now, and the local Ray runs without a dashboard."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raymlops.data.dataset import synth_dataset
from raymlops.loop.gate import load_gate_result, recorded_gate
from raymlops.registry.store import Registry
from tests.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.long]

RAYMLOPS = str(Path(sys.executable).with_name("raymlops"))
SCRUBBED_ENV = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAYMLOPS_TUNE_STORAGE", "RAYMLOPS_DEBUG")
ROWS = 6_000


@pytest.mark.timeout(1000)  # the run's own limit is 900 s (it took about 5 minutes)
def test_the_main_job_streams_its_data_and_every_trial_wave_gets_the_cpus(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    data = tmp_path / "rows"
    synth_dataset(str(data), rows=ROWS, features=8, categorical=1, seed=5, chunk_rows=2_000)
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["RAYMLOPS_HOME"] = str(home)
    port = free_port()  # for the endpoint
    overrides = [
        f"data.path={data}",
        "data.label=label",
        'data.id_columns=["id"]',
        "data.streaming=true",
        "data.stream_sample_rows=2000",
        "name=streamed",
        "registry.model_name=streamed",
        "tune.num_samples=4",  # 2 waves of 2 on 2 CPUs
        "train.epochs=3",
        "retrain.canary_requests=60",
        # The loop must reach promotion: a 3-epoch retrain on a streamed sample need not beat
        # the champion on the fresh rows (seen: log loss 0.400 vs 0.353 on 194 rows, refused);
        # deciding that right is benchmarks/loop_decisions.py's question.
        "gate.champion.max_regression=1.0",
        "gate.champion.guard_margin=1.0",  # nor on its ROC AUC guard
        "gate.max_rows=300",  # the gate scores a bounded sample of the test split
        f"serve.port={port}",
    ]
    command = [RAYMLOPS, "run", *[arg for o in overrides for arg in ("--set", o)]]
    proc = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    # Both searches (the first and the retraining) ran all four trials.
    assert len(re.findall(r"trial +4/4 ", out)) == 2, out[-4000:]
    # The gate scored a sample of the test split, not all of it (v2's gate: below).
    assert re.search(r"checks on 300 rows \(a uniform sample of the \d+ test rows\)", out), out
    # Batch read the folder in place: every input row once, no copy of the input.
    [work] = (home / "runs").iterdir()
    assert not (work / "batch-input.parquet").exists()
    output = pq.read_table(work / "batch-output", columns=["id"])
    assert output.num_rows == ROWS
    assert len(set(output.column("id").to_pylist())) == ROWS
    # The loop closed: the retrained version went through its canary and is champion.
    registry = Registry(home=home)
    assert registry.alias_target("streamed", "champion") == 2
    v2 = registry.client.get_model_version("streamed", "2")
    assert v2.tags["raymlops.dataset_source"].endswith("train.parquet")
    for version in (1, 2):
        gate = load_gate_result(
            registry, recorded_gate(registry.version_info("streamed", version))["run_id"]
        )
        assert gate is not None and gate.passed, version
        assert gate.data["sampled_rows"] == 300 < gate.data["test_rows"], gate.data
