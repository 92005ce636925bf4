"""Data-parallel scaling of one trial: samples/s of 1 worker vs 2 workers on the same data.

The same model (an MLP wide enough that an epoch is compute-bound), data and global batch
size trained as one raymlops Tune trial. The 1-worker side is what `train.num_workers: 1`
runs — the trial's own process, tensors in memory, no process group — so the figure is what
a user gains by switching to 2 workers (a Ray Train TorchTrainer, DDP over gloo, data from
Ray Data shards):

(a) this machine: 1 worker × 2 torch threads (2 CPUs) vs 2 workers × 1 thread (1 CPU each);
(b) a local two-node Ray (`ray start --head` + `ray start --address`, 1 CPU each, temp dirs
    and ports of their own, stopped by their PIDs): 1 worker × 1 thread (one node) vs
    2 workers (one per node);
(c) a reference without Ray: the same MLP, data and global batch in plain PyTorch — one
    process × 2 threads, 2 processes under DDP over gloo × 1 thread, and 2 processes that skip
    the gradient all-reduce (`no_sync`, the compute alone) — so the account of where the
    efficiency goes can separate Ray's share from DDP's and the hardware's.

Samples/s counts training rows per second of the epochs after the first (the first pays
the workers' start, the process group and Ray Data's first blocks); an epoch's time
includes its validation pass and checkpoint, as in real training. Efficiency =
speed-up ÷ workers. The last line is one JSON object with `efficiency_2_workers` (this
machine) and `efficiency_2_nodes`.

    python benchmarks/train_scaling.py            # 240k rows, 4 epochs
    python benchmarks/train_scaling.py --quick    # 100k rows, 3 epochs, under 3 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from raymlops.cluster.launcher import ray_session
from raymlops.core.config import PipelineConfig, load_config
from raymlops.core.processes import stop_session
from raymlops.data.dataset import load_dataset, synth_dataset
from raymlops.model.features import Preprocessor
from raymlops.train.loop import TrainingArrays
from raymlops.train.search import run_search

RAY = str(Path(sys.executable).with_name("ray"))


def _config(
    data: Path, epochs: int, workers: int, threads: int, batch_size: int = 256
) -> PipelineConfig:
    return load_config(
        None,
        [
            f"data.path={data}",
            "data.label=label",
            "data.id_columns=[id]",
            "model.params={depth: 3, width: 256, dropout: 0.0}",
            f"train.epochs={epochs}",
            f"train.batch_size={batch_size}",
            "train.early_stopping_patience=null",
            f"train.checkpoint_every={epochs}",
            f"train.num_workers={workers}",
            f"train.cpus_per_worker={threads}",
            f"train.torch_threads={threads}",
            f"tune.cpus_per_trial={threads}",
            "tune.num_samples=1",
            "tune.scheduler=fifo",
            "tune.search_space={}",
        ],
    )


#: Samples/s of each 2-worker run counted on the workers' own clocks (training steps only,
#: without validation, checkpoint and Ray Train's report round trip), by label.
LOOP_ONLY: dict[str, float] = {}


def _samples_per_s(config: PipelineConfig, arrays: TrainingArrays, home: Path) -> float:
    """Training rows per second over the epochs after the first, from Tune's progress.csv
    (an epoch's whole time as Tune sees it: steps, validation, checkpoint, reporting)."""
    outcome = run_search(config, arrays, home, echo=False)
    [progress] = Path(outcome.experiment_path).glob("*/progress.csv")
    frame = pd.read_csv(progress)
    later = frame[frame["epoch"] >= 2]
    if "train_epoch_s" in later:
        LOOP_ONLY[home.name] = float(
            len(later) * len(arrays.x_train) / later["train_epoch_s"].sum()
        )
    return float(len(later) * len(arrays.x_train) / later["time_this_iter_s"].sum())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Node:
    """One `ray start --block` in a session of its own; stopped by PID (never `ray stop`)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.temp = tempfile.mkdtemp(prefix="rts-", dir="/tmp")  # short: socket paths
        log = open(Path(self.temp) / "node.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={self.temp}", *args],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip

    def stop(self) -> None:
        stop_session(self.process.pid, term_s=8.0, kill_s=10.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        shutil.rmtree(self.temp, ignore_errors=True)


def _two_nodes() -> tuple[str, list[_Node]]:
    """A head and a worker node of 1 CPU each; returns the GCS address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))}
    gcs = _free_port()
    head = _Node(
        [
            "--head", "--num-cpus=1", f"--port={gcs}", "--include-dashboard=false",
            f"--ray-client-server-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
        ],
        env,
    )  # fmt: skip
    nodes = [head]
    address = f"127.0.0.1:{gcs}"
    # Ray's token authentication is on: the probe and the second node present the token
    # the head wrote (~/.ray/auth_token).
    worker_env = {**env, "RAY_AUTH_MODE": "token"}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [RAY, "status", f"--address={address}"], capture_output=True, env=worker_env
        )
        if probe.returncode == 0:
            break
        time.sleep(1)
    nodes.append(
        _Node(
            [
                f"--address={address}", "--num-cpus=1",
                f"--dashboard-agent-listen-port={_free_port()}",
                f"--metrics-export-port={_free_port()}",
            ],
            worker_env,
        )
    )  # fmt: skip
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [RAY, "status", f"--address={address}"], capture_output=True, env=worker_env
        )
        if probe.stdout.count(b" node_") >= 2:
            return address, nodes
        time.sleep(1)
    for node in reversed(nodes):
        node.stop()
    raise RuntimeError("the two-node Ray did not come up within 90 s")


# --------------------------------------------------------------------------- plain PyTorch
# The same MLP, data and global batch trained by plain PyTorch processes without Ray: what DDP
# over gloo itself gives on this machine, so the account of the missing efficiency can tell
# Ray's share from the hardware's.


def _plain_net(inputs: int) -> Any:
    import torch.nn as nn

    layers: list[Any] = []
    width = inputs
    for _ in range(3):
        layers += [nn.Linear(width, 256), nn.ReLU()]
        width = 256
    return nn.Sequential(*layers, nn.Linear(width, 2))


def _plain_epochs(net: Any, x: Any, y: Any, batch: int, epochs: int, sync: bool) -> float:
    """Seconds of the epochs after the first (the first excluded, as above)."""
    import contextlib

    import torch

    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    timed = 0.0
    for epoch in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            rows = order[i : i + batch]
            optimizer.zero_grad(set_to_none=True)
            guard = contextlib.nullcontext() if sync else net.no_sync()
            with guard:
                loss_fn(net(x[rows]), y[rows]).backward()
            optimizer.step()
        if epoch:
            timed += time.perf_counter() - started
    return timed


def _plain_worker(rank: int, port: int, x: Any, y: Any, batch: int, epochs: int,
                  out: Any) -> None:  # fmt: skip
    """One of 2 DDP processes: timed epochs with the gradient all-reduce, then without it
    (`no_sync`), then one all-reduce of the gradients' size alone."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net = torch.nn.parallel.DistributedDataParallel(_plain_net(x.shape[1]))
    x, y = x[rank::2], y[rank::2]
    dist.barrier()
    synced = _plain_epochs(net, x, y, batch // 2, epochs, True)
    dist.barrier()
    alone = _plain_epochs(net, x, y, batch // 2, epochs, False)
    grads = torch.zeros(sum(p.numel() for p in net.parameters()))
    dist.barrier()
    started = time.perf_counter()
    for _ in range(100):
        dist.all_reduce(grads)
    out.put((synced, alone, (time.perf_counter() - started) / 100))
    dist.destroy_process_group()


def _plain_pytorch(arrays: TrainingArrays, batch: int, epochs: int) -> dict[str, float]:
    """Samples/s of 1 process × 2 threads, 2 DDP processes × 1 thread, and the same 2
    processes skipping the gradient all-reduce (`no_sync`: the compute alone), plus one
    all-reduce's time."""
    import torch
    import torch.multiprocessing as mp

    x = torch.from_numpy(arrays.x_train.astype("float32"))
    y = torch.from_numpy(arrays.y_train.astype("int64"))
    samples = (epochs - 1) * len(x)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    single = samples / _plain_epochs(_plain_net(x.shape[1]), x, y, batch, epochs, True)
    context = mp.get_context("spawn")
    out = context.Queue()
    port = _free_port()
    workers = [
        context.Process(target=_plain_worker, args=(r, port, x, y, batch, epochs, out))
        for r in range(2)
    ]
    for w in workers:
        w.start()
    results = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return {
        "plain_1_process_2_threads": single,
        "plain_2_ddp_processes": samples / max(r[0] for r in results),
        "plain_2_processes_no_sync": samples / max(r[1] for r in results),
        "plain_all_reduce_ms": 1000 * max(r[2] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer epochs")
    parser.add_argument("--no-cluster", action="store_true", help="skip the two-node part")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch (256)")
    args = parser.parse_args()
    rows, epochs = (100_000, 3) if args.quick else (240_000, 4)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    figures: dict[str, Any] = {"rows": rows, "epochs": epochs}
    with tempfile.TemporaryDirectory(prefix="train-scaling-") as tmp:
        root = Path(tmp)
        data = root / "data.parquet"
        synth_dataset(str(data), rows=rows, features=32, seed=11)
        base = _config(data, epochs, 1, 2, args.batch_size)
        _, splits, roles = load_dataset(base.data, base.features)
        prep = Preprocessor.fit(splits.train, roles, base.features)
        arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
        print(f"{splits.train.num_rows} training rows × {prep.n_outputs} inputs, MLP 3×256, "
              f"global batch {args.batch_size}, {epochs} epochs (first excluded)")  # fmt: skip

        started = time.monotonic()
        with ray_session(None, num_cpus=2):
            one = _samples_per_s(_config(data, epochs, 1, 2, args.batch_size), arrays, root / "a1")
            two = _samples_per_s(_config(data, epochs, 2, 1, args.batch_size), arrays, root / "a2")
        figures.update(
            samples_per_s_1_worker_2_threads=round(one),
            samples_per_s_2_workers_1_thread=round(two),
            efficiency_2_workers=round(two / one / 2, 3),
        )
        print(f"this machine: 1 worker × 2 threads {one:,.0f} samples/s, "
              f"2 workers × 1 thread {two:,.0f} samples/s → speed-up {two / one:.2f}, "
              f"efficiency {two / one / 2:.2f}  [{time.monotonic() - started:.0f}s]")  # fmt: skip

        started = time.monotonic()
        plain = _plain_pytorch(arrays, args.batch_size, epochs)
        single, ddp = plain["plain_1_process_2_threads"], plain["plain_2_ddp_processes"]
        no_sync = plain["plain_2_processes_no_sync"]
        figures.update(
            samples_per_s_plain_1_process_2_threads=round(single),
            samples_per_s_plain_2_ddp_processes=round(ddp),
            samples_per_s_plain_2_processes_no_sync=round(no_sync),
            plain_all_reduce_ms=round(plain["plain_all_reduce_ms"], 2),
            efficiency_plain_ddp=round(ddp / single / 2, 3),
            efficiency_plain_no_sync=round(no_sync / single / 2, 3),
        )
        print(f"plain PyTorch, no Ray: 1 process × 2 threads {single:,.0f} samples/s, "
              f"2 DDP processes × 1 thread {ddp:,.0f} (efficiency {ddp / single / 2:.2f}; "
              f"one gradient all-reduce {plain['plain_all_reduce_ms']:.2f} ms), "
              f"2 processes without the all-reduce {no_sync:,.0f} (efficiency "
              f"{no_sync / single / 2:.2f})  [{time.monotonic() - started:.0f}s]")  # fmt: skip

        if not args.no_cluster:
            started = time.monotonic()
            address, nodes = _two_nodes()
            try:
                os.environ["RAY_AUTH_MODE"] = "token"
                with ray_session(address):
                    one_node = _samples_per_s(
                        _config(data, epochs, 1, 1, args.batch_size), arrays, root / "b1"
                    )
                    two_nodes = _samples_per_s(
                        _config(data, epochs, 2, 1, args.batch_size), arrays, root / "b2"
                    )
            finally:
                os.environ.pop("RAY_AUTH_MODE", None)
                for node in reversed(nodes):
                    node.stop()
            figures.update(
                samples_per_s_1_node=round(one_node),
                samples_per_s_2_nodes=round(two_nodes),
                efficiency_2_nodes=round(two_nodes / one_node / 2, 3),
            )
            print(f"two-node Ray: 1 worker (1 node) {one_node:,.0f} samples/s, "
                  f"2 workers (2 nodes) {two_nodes:,.0f} samples/s → speed-up "
                  f"{two_nodes / one_node:.2f}, efficiency {two_nodes / one_node / 2:.2f}  "
                  f"[{time.monotonic() - started:.0f}s]")  # fmt: skip
    for label, value in LOOP_ONLY.items():
        figures[f"loop_only_samples_per_s_{label}"] = round(value)
    print(f"2-worker runs, training steps alone (workers' clocks): {LOOP_ONLY}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
