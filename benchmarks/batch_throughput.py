"""Batch inference: `raymlops batch` end to end against a plain single-process loop.

Same Parquet input (5M rows × 64 float features from `raymlops.data.dataset.synth_dataset`, 20 files
of 250k rows; full mode adds a variant with 4 categorical columns) and the same registered
model (an MLP, depth 2 × width 64, trained for a few epochs on a 20k-row sample of the same
concept), and the same output columns (id, prediction, proba_<class>):

(a) `raymlops batch --input … --output …` run as a user types it (a subprocess): reading the
    registry and the input's metadata, a local Ray, the actor pool, every unit read,
    predicted and written, the manifest and the MLflow run. Timed as the command's wall time
    minus the starting and stopping of its local Ray, which are reported separately.
(b) a plain loop in one process: `pyarrow.parquet` batches of 65,536 rows → `Predictor`
    (loaded from the same registry) → one `ParquetWriter`, torch threads = cores, run as a
    script of its own (a subprocess), like (a).

Both are timed end to end from the start of their process until their work is done
(interpreter start, imports, loading the model from the registry included; the
interpreter's teardown after the last line not included); for (a) the starting and stopping
of its local Ray are left out and reported separately. `ratio` is (a)/(b) in rows/s on these
terms; `ratio_loop` compares (a) with (b)'s loop alone (first read to the writer's close,
nothing else of (b) counted): the strictest reading.

Prints rows/s of each, the ratio (a)/(b) and the driver's peak memory (VmHWM of the
`raymlops batch` process). Full mode also runs (c) the straightforward Ray Data pipeline
(`read_parquet` → `map_batches` with a Predictor actor → `write_parquet`) for reference,
and with `--two-node` (a) on a local cluster of two `ray start` nodes.

A third workload, "small" (1M rows, 4 numeric + 3 categorical columns, a depth 2 × width 32
regression MLP), is what many users have: there start-up, not compute, decides. For every
workload three more figures:

- `cold_ratio`: end to end as a user waits, (b) from its spawn against (a)'s whole wall time,
  a local Ray's start and stop included when (a) starts one (on a small input
  `batch.executor: auto` runs the units in the command's own process instead);
- `address_ratio`: the same with (a) given `--address` to an already running Ray (a one-node
  `ray start --head` of this machine's CPUs): the actor pool, no Ray start — or, on an input
  of at most `batch.local_max_mb` (the small workload), the command's own process without
  joining, which `executor: auto` chooses there too;
- `per_actor_ratio`: one actor's steady state (its units' rows over the seconds they took,
  from the statistics in the output footers, of a run on the joined Ray's actor pool, with
  `batch.executor=ray` where auto did not use it) against (b)'s loop alone; the pool's
  actors share the cores, so each has half of what (b) has on two;
- `alone_ratio`: the same for a pool of one actor (`batch.actors=1`), which has the cores
  and torch threads (b) has.

    python benchmarks/batch_throughput.py            # 3 repetitions, all workloads, (c)
    python benchmarks/batch_throughput.py --quick    # 1 repetition, numeric and small
                                                     # (first run: + 40-70 s per dataset)

The last line is one JSON object with at least `ratio`, `cold_ratio`, `address_ratio`,
`per_actor_ratio`, `alone_ratio` (the last four per workload) and `driver_peak_mb`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from raymlops.core.processes import stop_session

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / ".data"
BIN = Path(sys.executable).parent
ROWS = 5_000_000
FEATURES = 64
CATEGORICAL = 4
BATCH = 65_536


@dataclasses.dataclass(frozen=True)
class Workload:
    rows: int
    features: int
    categorical: int
    task: str
    width: int


#: "numeric" and "categorical": 5M rows × 64 floats (+ 4 categorical columns), a depth 2 ×
#: width 64 classifier — compute-bound. "small": 1M rows, 4 numeric and 3 categorical
#: columns, a depth 2 × width 32 regression MLP — where start-up decides (issue #18).
WORKLOADS = {
    "numeric": Workload(ROWS, FEATURES, 0, "classification", 64),
    "categorical": Workload(ROWS, FEATURES, CATEGORICAL, "classification", 64),
    "small": Workload(1_000_000, 4, 3, "regression", 32),
}


# --------------------------------------------------------------------------- data and model


def dataset(
    rows: int, categorical: int, features: int = FEATURES, task: str = "classification"
) -> Path:
    """The benchmark input, generated once and kept under benchmarks/.data/."""
    from raymlops.data.dataset import synth_dataset

    suffix = "" if task == "classification" else f"-{task}"
    target = DATA / f"batch-{rows}x{features}c{categorical}{suffix}"
    if not target.is_dir():
        print(f"generating {target.name} (once) …", file=sys.stderr, flush=True)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        synth_dataset(str(partial), rows, features, categorical, task=task, seed=0)  # type: ignore[arg-type]
        partial.rename(target)
    return target


def register(
    home: Path,
    name: str,
    categorical: int,
    features: int = FEATURES,
    task: str = "classification",
    width: int = 64,
) -> Path:
    """Train on a 20k-row sample of the same concept (seed 0) in this process and register
    the best epoch as version 1 (champion); returns the config file for `-c`."""
    import yaml

    from raymlops.core.config import PipelineConfig
    from raymlops.data.dataset import load_dataset, synth_dataset
    from raymlops.model.features import Preprocessor
    from raymlops.registry.store import Registry
    from raymlops.train.loop import TrainingArrays, fit, load_best_predictor

    sample = home / f"{name}-train.parquet"
    synth_dataset(str(sample), 20_000, features, categorical, task=task, seed=0)  # type: ignore[arg-type]
    config = PipelineConfig.model_validate(
        {
            "name": name,
            "data": {"path": str(sample), "label": "label", "id_columns": ["id"], "task": task},
            "model": {"params": {"depth": 2, "width": width, "dropout": 0.0}},
            "train": {"epochs": 3, "batch_size": 256, "early_stopping_patience": None},
            "registry": {"model_name": name, "experiment": name},
        }
    )
    data, splits, roles = load_dataset(config.data, config.features)
    prep = Preprocessor.fit(splits.train, roles, config.features)
    arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
    ckpt = home / f"{name}-ckpt"

    def keep(metrics: dict[str, float], folder: Path | None) -> None:
        if folder is not None:
            shutil.rmtree(ckpt, ignore_errors=True)
            shutil.copytree(folder, ckpt)

    best = fit(config, arrays, keep)
    predictor = load_best_predictor(ckpt, config, arrays.preprocessor)
    registry = Registry(home=home)
    with registry.pipeline_run(config, f"{name}-benchmark") as run_id:
        registry.register(config, run_id, predictor, data, {"val_loss": best["val_loss"]})
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


# --------------------------------------------------------------------------- (b) plain loop


def plain_loop(home: Path, name: str, source: Path, out: Path, threads: int) -> float:
    """(b), run by `--plain-loop` in a process of its own: returns the seconds from the
    first read to the writer's close."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from raymlops.registry.store import Registry

    torch.set_num_threads(threads)
    predictor = Registry(home=home).load_predictor(name, "champion")
    columns = ["id", *predictor.feature_names]
    started = time.perf_counter()
    writer: pq.ParquetWriter | None = None
    for file in sorted(source.glob("*.parquet")):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=BATCH, columns=columns):
            prediction = predictor.predict(batch)
            if prediction.classes is None:  # regression: the value
                table = pa.table(
                    {
                        "id": batch.column("id"),
                        "prediction": pa.array(np.asarray(prediction.predictions, np.float64)),
                    }
                )
            else:
                assert prediction.probabilities is not None
                probabilities = np.asarray(prediction.probabilities, dtype=np.float32)
                table = pa.table(
                    {
                        "id": batch.column("id"),
                        "prediction": pa.array(prediction.predictions, type=pa.string()),
                        **{
                            f"proba_{c}": probabilities[:, j]
                            for j, c in enumerate(prediction.classes)
                        },
                    }
                )
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
    assert writer is not None
    writer.close()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- (a) raymlops batch


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def raymlops_batch(
    home: Path, config: Path, source: Path, out: Path, *extra: str, **env_vars: str
) -> dict[str, Any]:
    """(a): run the command, sampling the driver's peak RSS; returns its JSON result plus
    `wall_s` and `driver_peak_mb`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    env["RAYMLOPS_HOME"] = str(home)
    env.update(env_vars)
    command = [str(BIN / "raymlops"), "batch", "-c", str(config), "--input", str(source)]
    command += ["--output", str(out), "--json", *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    peak: list[float] = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            value = _peak_rss_mb(proc.pid)
            if value is not None:
                peak[0] = max(peak[0], value)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"raymlops batch failed ({proc.returncode}):\n{stderr[-3000:]}")
    result: dict[str, Any] = json.loads(stdout)
    result["wall_s"] = wall
    result["driver_peak_mb"] = peak[0]
    return result


# --------------------------------------------------------------------------- (c) plain Ray Data


def plain_ray_data(home: Path, name: str, source: Path, out: Path) -> dict[str, float]:
    """(c) in a subprocess of its own: read_parquet → map_batches(Predictor actors, two of
    0.5 CPU, 1 torch thread) → write_parquet. Timed as (a): from the spawn until the write
    is done, Ray's start-up left out (`seconds`); `after_ray_s` counts from ray.init's end."""
    code = f"""
import json, logging, time
import numpy as np, pyarrow as pa, ray
t0 = time.perf_counter()
ray.init(address="local", num_cpus={os.cpu_count() or 2}, include_dashboard=False,
         logging_level=logging.WARNING, log_to_driver=False)
t1 = time.perf_counter()
ray.data.DataContext.get_current().enable_progress_bars = False
class Predict:
    def __init__(self):
        import torch
        torch.set_num_threads(1)
        from raymlops.registry.store import Registry
        self.p = Registry(home={str(home)!r}).load_predictor({name!r}, "champion")
    def __call__(self, batch: pa.Table) -> pa.Table:
        pred = self.p.predict(batch)
        probabilities = np.asarray(pred.probabilities, dtype=np.float32)
        return pa.table({{"id": batch.column("id"),
            "prediction": pa.array(pred.predictions, type=pa.string()),
            **{{f"proba_{{c}}": probabilities[:, j] for j, c in enumerate(pred.classes)}}}})
ds = ray.data.read_parquet({str(source)!r}, ray_remote_args={{"num_cpus": 0.25}})
ds = ds.map_batches(Predict, batch_size={BATCH}, batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5)
ds.write_parquet({str(out)!r}, ray_remote_args={{"num_cpus": 0.25}})
t2 = time.perf_counter()
done_at = time.time()
ray.shutdown()
print(json.dumps({{"ray_start_s": t1 - t0, "after_ray_s": t2 - t1, "done_at": done_at}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    spawned = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO
    )
    if proc.returncode != 0:
        sys.exit(f"plain Ray Data pipeline failed:\n{proc.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["seconds"] = figures["done_at"] - spawned - figures["ray_start_s"]
    return figures


# --------------------------------------------------------------------------- two nodes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def two_nodes(cpus_each: int) -> Any:
    """A head and a second node of `cpus_each` CPUs on this machine; yields the GCS address."""
    with ray_nodes(2, cpus_each) as gcs:
        yield gcs


@contextlib.contextmanager
def ray_nodes(count: int, cpus_each: int) -> Any:
    """A head (and `count` - 1 more nodes) of `cpus_each` CPUs on this machine, each in a
    temp dir of its own; yields the GCS address to join."""
    gcs = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = "token"
    nodes = []
    try:
        for i in range(count):
            temp = tempfile.mkdtemp(prefix="rmo-bt-", dir="/tmp")
            args = (
                ["--head", f"--port={gcs.split(':')[1]}", "--include-dashboard=false"]
                if i == 0
                else [f"--address={gcs}"]
            )
            args += [
                f"--num-cpus={cpus_each}",
                f"--dashboard-agent-listen-port={_free_port()}",
                f"--metrics-export-port={_free_port()}",
            ]
            log = open(Path(temp) / "node.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(
                [str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
                 f"--temp-dir={temp}", *args],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
            nodes.append((proc, temp))
            time.sleep(8)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = subprocess.run(
                [str(BIN / "ray"), "status", f"--address={gcs}"],
                capture_output=True, text=True, env=env, timeout=30,
            )  # fmt: skip
            if status.stdout.count(" node_") >= count:
                break
            time.sleep(1)
        else:
            sys.exit(f"the {count}-node cluster did not come up")
        yield gcs
    finally:
        for proc, temp in reversed(nodes):
            stop_session(proc.pid, term_s=3.0)
            shutil.rmtree(temp, ignore_errors=True)


# --------------------------------------------------------------------------- main


def plain_script(home: Path, name: str, source: Path, out: Path, threads: int) -> dict[str, float]:
    """(b) as a script: spawn this file with --plain-loop; returns the seconds from the
    spawn until the loop's end (`seconds`) and those of the loop alone (`loop_s`)."""
    spawned = time.time()
    proc = subprocess.run(
        [sys.executable, __file__, "--plain-loop", str(home), name, str(source), str(out),
         str(threads)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"the plain loop failed:\n{proc.stderr[-3000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": figures["done_at"] - spawned, "loop_s": figures["loop_s"]}


def measure(
    home: Path, name: str, config: Path, source: Path, work: Path, threads: int, rows: int = ROWS
) -> dict[str, Any]:
    """One repetition on one dataset: (b) then (a)."""
    b_out = work / "plain.parquet"
    b = plain_script(home, name, source, b_out, threads)
    b_s, b_loop_s = b["seconds"], b["loop_s"]
    b_out.unlink()
    a_out = work / "preds"
    a = raymlops_batch(home, config, source, a_out)
    shutil.rmtree(a_out)
    assert a["rows_out"] == rows, a
    a_s = a["wall_s"] - a["ray_start_s"] - a["ray_stop_s"]
    return {
        # End to end as a user waits for it: (b) from its spawn, (a) the command's whole
        # wall time, a local Ray's start and stop included when it starts one.
        "cold_ratio": b_s / a["wall_s"],
        "in_process": bool(a.get("in_process")),
        "a_rows_per_s": rows / a_s,
        "b_rows_per_s": rows / b_s,
        "b_loop_rows_per_s": rows / b_loop_s,
        "ratio": b_s / a_s,
        "ratio_loop": b_loop_s / a_s,
        "ratio_incl_ray": b_s / a["wall_s"],
        "a_seconds": a_s,
        "a_wall_s": a["wall_s"],
        "b_seconds": b_s,
        "b_loop_seconds": b_loop_s,
        "batch_reported_rows_per_s": a["rows_per_s"],
        "ray_start_s": a["ray_start_s"],
        "ray_stop_s": a["ray_stop_s"],
        "driver_peak_mb": a["driver_peak_mb"],
        "actors": a["actors"],
        "cpus_per_actor": a["cpus_per_actor"],
        "torch_threads": a["torch_threads"],
        # Where (a)'s time went: the command's own start (interpreter, imports) and exit,
        # then run_batch's phases (model, plan, pool_start, compute, finish).
        "phases": {"process": a["wall_s"] - a["wall_time_s"], **a["phases"]},
    }


def measure_joined(
    home: Path, config: Path, source: Path, work: Path, rows: int, gcs: str, b: dict[str, float]
) -> dict[str, Any]:
    """(a) joining an already running Ray (`--address`), as a user types it: its end-to-end
    ratio against (b) (on a small input `executor: auto` runs the units in the command's
    process without joining); and the steady state of one actor — rows over the seconds its
    units took, from the statistics in the output files' footers — against (b)'s loop, from
    a run with `batch.executor=ray` where (a) did not use the actor pool."""
    import pyarrow.parquet as pq

    def footers(folder: Path) -> list[dict[str, Any]]:
        stats = [
            json.loads(pq.read_metadata(part).metadata[b"raymlops.batch"])
            for part in sorted(folder.glob("part-*.parquet"))
        ]
        shutil.rmtree(folder)
        return stats

    joined = ("--address", gcs)
    a = raymlops_batch(home, config, source, work / "joined", *joined, RAY_AUTH_MODE="token")
    assert a["rows_out"] == rows, a
    stats = footers(work / "joined")
    if a.get("in_process"):
        pool = (*joined, "--set", "batch.executor=ray")
        on_pool = raymlops_batch(home, config, source, work / "pool", *pool, RAY_AUTH_MODE="token")
        assert on_pool["rows_out"] == rows and not on_pool["in_process"], on_pool
        stats = footers(work / "pool")
    per_actor = sum(s["rows_in"] for s in stats) / sum(s["seconds"] for s in stats)
    # One actor with the machine to itself (2 torch threads on 2 cores, as (b) has): the pool
    # above shares the cores among its actors, so each of them gets half of what (b) gets.
    alone = (*joined, "--set", "batch.executor=ray", "--set", "batch.actors=1")
    single = raymlops_batch(home, config, source, work / "alone", *alone, RAY_AUTH_MODE="token")
    assert single["rows_out"] == rows and single["actors"] == 1, single
    stats = footers(work / "alone")
    per_alone = sum(s["rows_in"] for s in stats) / sum(s["seconds"] for s in stats)
    return {
        "address_ratio": b["seconds"] / a["wall_s"],
        "address_wall_s": a["wall_s"],
        "address_in_process": bool(a.get("in_process")),
        "per_actor_rows_per_s": per_actor,
        "per_actor_ratio": per_actor / (rows / b["loop_s"]),
        "alone_rows_per_s": per_alone,
        "alone_ratio": per_alone / (rows / b["loop_s"]),
        "address_actors": a["actors"],
        "address_phases": {"process": a["wall_s"] - a["wall_time_s"], **a["phases"]},
    }


def _show(label: str, r: dict[str, Any]) -> None:
    print(
        f"{label}: (a) raymlops batch {r['a_rows_per_s']:,.0f} rows/s "
        f"({r['a_seconds']:.1f} s + Ray start {r['ray_start_s']:.1f} s / stop "
        f"{r['ray_stop_s']:.1f} s) | (b) plain loop {r['b_rows_per_s']:,.0f} rows/s "
        f"({r['b_seconds']:.1f} s, the loop alone {r['b_loop_seconds']:.1f} s) | ratio "
        f"{r['ratio']:.3f} (with Ray start/stop {r['ratio_incl_ray']:.3f}; against the loop "
        f"alone {r['ratio_loop']:.3f}) | driver peak {r['driver_peak_mb']:.0f} MB | "
        f"{r['actors']} {'threads in process' if r['in_process'] else 'actors'} × "
        f"{r['cpus_per_actor']} CPU, {r['torch_threads']} thread(s) | end to end, cold "
        f"{r['cold_ratio']:.3f}\n"
        "    (a) phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in r["phases"].items()),
        flush=True,
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--plain-loop":  # (b), in its own process
        home, name, source, out, threads = sys.argv[2:7]
        loop_s = plain_loop(Path(home), name, Path(source), Path(out), int(threads))
        print(json.dumps({"loop_s": loop_s, "done_at": time.time()}), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, numeric data only")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (full mode)")
    parser.add_argument(
        "--two-node", action="store_true", help="also (a) on a local two-node cluster"
    )
    parser.add_argument(
        "--workloads",
        default=None,
        help=f"comma-separated subset of {','.join(WORKLOADS)} (default: numeric,small with "
        "--quick, all otherwise)",
    )
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    repeat = 1 if args.quick else args.repeat
    names = ["numeric", "small"] if args.quick else list(WORKLOADS)
    if args.workloads:
        names = [n.strip() for n in args.workloads.split(",")]
        unknown = sorted(set(names) - set(WORKLOADS))
        if unknown:
            parser.error(f"unknown workloads {unknown}; choose from {sorted(WORKLOADS)}")
    figures: dict[str, Any] = {"rows": ROWS, "features": FEATURES, "cores": threads}
    with tempfile.TemporaryDirectory(prefix="raymlops-bt-") as tmp:
        work = Path(tmp)
        prepared = {}
        for label in names:
            w = WORKLOADS[label]
            source = dataset(w.rows, w.categorical, w.features, w.task)
            home = work / label
            config = register(home, f"bt-{label}", w.categorical, w.features, w.task, w.width)
            prepared[label] = (home, config, source)
            runs = []
            for i in range(repeat):
                r = measure(home, f"bt-{label}", config, source, work, threads, w.rows)
                _show(f"{label} #{i + 1}", r)
                runs.append(r)
            median = {
                k: statistics.median(r[k] for r in runs)
                for k in runs[0]
                if isinstance(runs[0][k], int | float)
            }
            figures[label] = median
            if not args.quick and WORKLOADS[label].task == "classification":
                c = plain_ray_data(home, f"bt-{label}", source, work / "plain-ray-data")
                shutil.rmtree(work / "plain-ray-data", ignore_errors=True)
                c_rate = ROWS / c["seconds"]
                figures[label]["c_rows_per_s"] = c_rate
                figures[label]["c_ratio"] = c_rate / median["b_rows_per_s"]
                print(
                    f"{label}: (c) plain Ray Data pipeline {c_rate:,.0f} rows/s "
                    f"({c['seconds']:.1f} s, {c['after_ray_s']:.1f} s of it after Ray's start) "
                    f"| (c)/(b) {figures[label]['c_ratio']:.3f}",
                    flush=True,
                )
        # (a) joining a Ray that is already running (one node, this machine's CPUs): what a
        # user of a running cluster or `watch` waits for, and one actor's steady state.
        with ray_nodes(1, threads) as gcs:
            for label in names:
                home, config, source = prepared[label]
                rows = WORKLOADS[label].rows
                joined = []
                for i in range(repeat):
                    b = {
                        "seconds": rows / figures[label]["b_rows_per_s"],
                        "loop_s": rows / figures[label]["b_loop_rows_per_s"],
                    }
                    j = measure_joined(home, config, source, work, rows, gcs, b)
                    print(
                        f"{label} --address #{i + 1}: end to end {j['address_ratio']:.3f} "
                        f"({j['address_wall_s']:.1f} s vs (b) {b['seconds']:.1f} s) | one "
                        f"actor {j['per_actor_rows_per_s']:,.0f} rows/s = "
                        f"{j['per_actor_ratio']:.3f} × (b)'s loop (alone: "
                        f"{j['alone_rows_per_s']:,.0f} rows/s = {j['alone_ratio']:.3f}) | "
                        f"{j['address_actors']} "
                        + ("threads in process" if j["address_in_process"] else "actors")
                        + "\n    phases: "
                        + ", ".join(f"{k} {v:.2f} s" for k, v in j["address_phases"].items()),
                        flush=True,
                    )
                    joined.append(j)
                for key in (
                    "address_ratio",
                    "per_actor_rows_per_s",
                    "per_actor_ratio",
                    "alone_rows_per_s",
                    "alone_ratio",
                ):
                    figures[label][key] = statistics.median(j[key] for j in joined)
        if args.two_node:
            home = work / "numeric"
            source = dataset(ROWS, 0)
            with two_nodes(max(1, threads // 2)) as gcs:
                # Joining a token-authenticated cluster sends the token (~/.ray/auth_token).
                a = raymlops_batch(
                    home, home / "bt-numeric.yaml", source, work / "two", "--address", gcs,
                    RAY_AUTH_MODE="token",
                )  # fmt: skip
            a_s = a["wall_s"] - a["ray_start_s"] - a["ray_stop_s"]
            figures["two_node"] = {
                "a_rows_per_s": ROWS / a_s,
                "nodes": len(a["nodes"]),
                "actors": a["actors"],
            }
            print(
                f"two nodes × {max(1, threads // 2)} CPU: (a) {ROWS / a_s:,.0f} rows/s on "
                f"{len(a['nodes'])} node(s), {a['actors']} actors",
                flush=True,
            )
    first = figures[names[0]]  # "numeric" unless --workloads leaves it out
    figures["ratio"] = first["ratio"]
    figures["driver_peak_mb"] = max(figures[v]["driver_peak_mb"] for v in names)
    figures["ray_start_s"] = first["ray_start_s"]
    figures["ratio_loop"] = first["ratio_loop"]
    for key in ("cold_ratio", "address_ratio", "per_actor_ratio", "alone_ratio"):
        figures[key] = {v: round(figures[v][key], 3) for v in names}
    keys = ("ratio", "ratio_loop", "cold_ratio", "address_ratio", "per_actor_ratio")
    keys += ("alone_ratio",)
    keys += ("driver_peak_mb", "ray_start_s")
    print(json.dumps({k: figures[k] for k in keys} | figures))


if __name__ == "__main__":
    main()
