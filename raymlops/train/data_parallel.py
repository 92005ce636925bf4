"""One trial as a Ray Train run: `num_workers` data-parallel workers (DDP) fed by Ray Data.

Used when `train.num_workers > 1` or `data.streaming` is on; otherwise a trial trains in its
own process (`raymlops.train.loop.fit`). Ray Train V2 (Ray's default) runs inside a Tune trial the
way Ray recommends: the Tune function trainable launches a `TorchTrainer` and waits for it,
and a callback in the Train controller forwards each report — with the path of the rank-0
checkpoint — to the trial, so Tune still schedules, early-stops and ranks the trials.

The loop mirrors `raymlops.train.loop.fit` (same seeding of the weights; the same
`raymlops.train.loop.EpochBook` for early stopping, best weights and checkpoint epochs and files)
so the registered artifact is the same kind.
Each worker reads its own shard of the training and validation streams; the training loss
and the validation metrics' sums and counts (`raymlops.model.metrics.MetricAccumulator`) are
all-reduced, so the metrics are the whole validation split's, not rank 0's shard's, and no
worker holds per-row outputs.
"""

from __future__ import annotations

import logging
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from raymlops.core.config import PipelineConfig

__all__ = [
    "CHECKPOINT_PATH_KEY",
    "memory_datasets",
    "per_trial_demand",
    "run_trial",
    "train_loop_per_worker",
    "trial_storage",
]

logger = logging.getLogger(__name__)

#: Metric key under which a report carries the trial's latest checkpoint folder ("" while
#: the trial has none).
CHECKPOINT_PATH_KEY = "checkpoint_path"
#: Key under which workers name the checkpoint their attempt restored ("" for none).
RESTORED_PATH_KEY = "_restored_checkpoint"
#: Rows a worker's local shuffle buffer holds (on top of one batch).
_SHUFFLE_ROWS = 16_384
_MEMORY_BLOCK_ROWS = 16_384
#: Training steps between two samples of a worker's private memory.
_MEMORY_SAMPLE_STEPS = 16


def memory_datasets(arrays: Any) -> dict[str, Any]:
    """Ray Data datasets (`x`, `y` columns) of in-memory `TrainingArrays`, in blocks that
    `streaming_split` can hand to different workers."""
    import ray.data

    from raymlops.train.streaming import arrays_to_table

    out = {}
    for name, x, y in (
        ("train", arrays.x_train, arrays.y_train),
        ("validation", arrays.x_val, arrays.y_val),
    ):
        blocks = [
            arrays_to_table(x[i : i + _MEMORY_BLOCK_ROWS], y[i : i + _MEMORY_BLOCK_ROWS])
            for i in range(0, max(len(x), 1), _MEMORY_BLOCK_ROWS)
        ]
        out[name] = ray.data.from_arrow(blocks)
    return out


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _private_mb() -> float:
    """Private resident memory of this process in MiB (Linux's RssAnon): what the process
    holds itself. Its RSS also counts the pages of Ray's shared object store that reading
    blocks maps into it; those stay mapped, and counted, after the blocks are freed, so RSS
    grows with the store's pages a worker has touched, up to the store's size."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:  # noqa: C901, PLR0915 — runs in each Ray Train worker as one closure over its state; to be split (#13)
    """The training loop each Ray Train worker runs (rank 0 checkpoints)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from torch import nn

    from raymlops.model.architectures import build_model
    from raymlops.model.features import Preprocessor
    from raymlops.train.loop import EpochBook, _optimizer, metric_accumulator
    from raymlops.train.streaming import batch_to_arrays

    config = PipelineConfig.model_validate(loop_config["config"])
    prep = Preprocessor.from_dict(loop_config["preprocessor"])
    t = config.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(t.torch_threads or max(1, int(t.cpus_per_worker)))
    device = ray.train.torch.get_device()
    distributed = world > 1 and dist.is_available() and dist.is_initialized()

    torch.manual_seed(t.seed)  # the same initial weights as the single-process loop
    base = build_model(
        config.model.architecture, config.model.params, prep.n_outputs, prep.n_targets
    ).to(device)
    optimizer = _optimizer(config, base)
    loss_fn: nn.Module = nn.CrossEntropyLoss() if prep.classes is not None else nn.MSELoss()
    has_batchnorm = any(isinstance(m, nn.BatchNorm1d) for m in base.modules())

    book = EpochBook(config, base)
    checkpoint = ray.train.get_checkpoint()
    # Where the checkpoint this attempt started from is stored, for `_forward_callback`
    # (which only sees the checkpoints reported since the Train run started).
    restored_from = ""
    if checkpoint is not None:
        restored_from = str(checkpoint.path)
        with checkpoint.as_directory() as folder:
            book.restore(Path(folder), optimizer, str(device))
    model = ray.train.torch.prepare_model(base, move_to_device=False) if distributed else base
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation")
    per_worker_batch = max(1, t.batch_size // world)
    # What this worker held before it read any data: the baseline of the memory check.
    start_peak = _peak_rss_mb()
    start_private = private_peak = _private_mb()
    width = prep.n_outputs

    def read_shard(shard: Any) -> tuple[np.ndarray, np.ndarray]:
        parts = [
            batch_to_arrays(b, width)
            for b in shard.iter_batches(batch_size=65_536, batch_format="pyarrow")
        ]
        if not parts:
            return np.zeros((0, width), np.float32), np.zeros(0)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    # Data that fits in memory (not data.streaming) is read from Ray Data once and kept as
    # this worker's tensors: per-step batches then cost what they cost in one process
    # (Ray Data's per-batch conversion and local shuffle made an epoch several times slower;
    # see benchmarks/RESULTS.md). Streaming data is read from its shard every epoch.
    cached: tuple[Any, Any] | None = None
    cached_val: tuple[np.ndarray, np.ndarray] | None = None
    if loop_config.get("in_memory"):
        x_all, y_all = read_shard(train_shard)
        cached = (torch.from_numpy(x_all).to(device), torch.from_numpy(y_all).to(device))
        cached_val = read_shard(val_shard)

    def train_batches(epoch: int) -> Any:
        if cached is None:
            for batch in train_shard.iter_batches(
                batch_size=per_worker_batch,
                batch_format="pyarrow",
                local_shuffle_buffer_size=max(_SHUFFLE_ROWS, 4 * per_worker_batch),
                local_shuffle_seed=t.seed * 100_003 + epoch * 7 + rank,
                prefetch_batches=2,
            ):
                x_np, y_np = batch_to_arrays(batch, width)
                yield torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
            return
        generator = torch.Generator().manual_seed(t.seed * 100_003 + epoch * 7 + rank)
        order = torch.randperm(len(cached[0]), generator=generator).to(device)
        for start in range(0, len(order), per_worker_batch):
            idx = order[start : start + per_worker_batch]
            yield cached[0][idx], cached[1][idx]

    def val_batches() -> Any:
        if cached_val is not None:
            step = max(1024, per_worker_batch)
            for start in range(0, len(cached_val[0]), step):
                yield cached_val[0][start : start + step], cached_val[1][start : start + step]
            return
        for batch in val_shard.iter_batches(
            batch_size=max(1024, per_worker_batch), batch_format="pyarrow"
        ):
            yield batch_to_arrays(batch, width)

    def all_sum(values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        if distributed:
            dist.all_reduce(tensor)
        return [float(v) for v in tensor.cpu()]

    for epoch in range(book.start_epoch, t.epochs):
        # Dropout draws from the global RNG: a seed per (epoch, rank) makes a resumed run
        # repeat exactly what an uninterrupted one would have done.
        torch.manual_seed(t.seed * 100_003 + epoch * 1_009 + rank)
        model.train()
        total, rows = 0.0, 0
        epoch_started = time.perf_counter()
        for step, (x, y) in enumerate(train_batches(epoch)):
            if step % _MEMORY_SAMPLE_STEPS == 0:
                private_peak = max(private_peak, _private_mb())
            if len(x) < 2 and has_batchnorm:
                continue  # BatchNorm cannot normalise a batch of one
            if prep.classes is None:
                y = y.unsqueeze(1)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(x)
            rows += len(x)
        loss_sum, row_sum = all_sum([total, float(rows)])
        train_s = time.perf_counter() - epoch_started  # after the sum: the slowest worker's

        model.eval()
        scores = metric_accumulator(prep)
        with torch.inference_mode():
            for x_np, y_np in val_batches():
                out = base(torch.from_numpy(np.ascontiguousarray(x_np)).to(device))
                if prep.classes is not None:
                    scores.update(torch.softmax(out, dim=1).cpu().numpy(), y_np)
                else:
                    values = out.squeeze(1).cpu().numpy().astype(np.float64)
                    scores.update(prep.decode_regression(values), y_np)
        if distributed:  # every worker's sums: the whole validation split's metrics
            summed = torch.from_numpy(scores.state).to(device)
            dist.all_reduce(summed)
            scores.state = summed.cpu().numpy()
        val = {f"val_{k}": v for k, v in scores.result().items()}
        peak_now = _peak_rss_mb()
        private_peak = max(private_peak, _private_mb())
        peak = torch.tensor(
            [peak_now, peak_now - start_peak, private_peak - start_private],
            dtype=torch.float64,
            device=device,
        )
        if distributed:
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        metrics: dict[str, float] = {
            "epoch": float(epoch + 1),
            "train_loss": loss_sum / max(row_sum, 1.0),
            "train_rows": row_sum,
            "train_epoch_s": train_s,
            # Peak resident memory of the largest worker, and how far reading data has
            # raised it (shared object-store pages included), and its private memory's
            # growth (sampled): a fixed overhead, not a share of the data (streaming).
            "train_worker_peak_rss_mb": float(peak[0]),
            "train_worker_rss_growth_mb": float(peak[1]),
            "train_worker_private_growth_mb": float(peak[2]),
            **val,
        }
        stop, save = book.end_epoch(epoch + 1, metrics)
        if save:
            with tempfile.TemporaryDirectory(prefix="raymlops-ckpt-") as tmp:
                saved = None
                if rank == 0:
                    book.save(Path(tmp), optimizer)
                    saved = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report({**metrics, RESTORED_PATH_KEY: restored_from}, checkpoint=saved)
        else:
            ray.train.report({**metrics, RESTORED_PATH_KEY: restored_from})
        if stop:
            break


def _forward_callback() -> Any:
    """A Ray Train callback that hands each report of rank 0 to the enclosing Tune trial,
    with the folder of the latest checkpoint under `CHECKPOINT_PATH_KEY`.

    Ray's own `TuneReportCallback` forwards only the checkpoint of the report it is called
    for; here every report carries the latest one, so the trial's last result always names
    the checkpoint that holds its best weights. After `--resume` (a new Train run continuing
    from the run's stored snapshot) the latest is the one the workers restored until they
    report a new one. Every result has the key, so a resumed trial's results have the same
    columns as before the crash (Tune appends them to the trial's progress.csv)."""
    from ray.train._internal.session import get_session
    from ray.train.v2.api.callback import UserCallback

    class _Forward(UserCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.queue = get_session()._get_or_create_inter_actor_queue()
            self.latest: str | None = None

        def after_report(
            self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
        ) -> None:
            result = dict(metrics[0])
            restored = result.pop(RESTORED_PATH_KEY, "")
            if checkpoint is not None:
                self.latest = str(checkpoint.path)
            elif self.latest is None and restored:
                self.latest = str(restored)
            result[CHECKPOINT_PATH_KEY] = self.latest or ""
            self.queue.put(result)

    return _Forward()


def run_trial(
    config: PipelineConfig,
    data: Any,
    storage: str,
    keeper: Any = None,
    trial_id: str = "",
) -> None:
    """Run one trial's Ray Train run from inside a Tune function trainable.

    `data` is `TrainingArrays` (in memory) or `StreamingData`. The run is named after the
    trial and stored under `storage`, so a Tune retry or `--resume` of the same trial finds
    Ray Train's snapshot and continues from the latest rank-0 checkpoint; a worker lost
    mid-run is restarted by Ray Train itself (train's FailureConfig) from that checkpoint.

    With a `keeper` (`raymlops.train.guard`), every worker group's placement group
    is registered with it, and released before this returns, so the trial's CPUs are free
    for the next trial whether the run finished, failed or Tune killed the trial."""
    import ray
    import ray.train
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train.torch import TorchConfig, TorchTrainer

    from raymlops.train.guard import keeper_callback
    from raymlops.train.streaming import StreamingData

    t = config.train
    if isinstance(data, StreamingData):
        concurrency = max(1, t.num_workers)
        datasets = {
            split: data.ray_dataset(split, t.ingest_cpus, concurrency)
            for split in ("train", "validation")
        }
    else:
        datasets = memory_datasets(data)
    options = ExecutionOptions()
    if t.stream_memory_mb is not None:
        options.resource_limits = ExecutionResources(
            object_store_memory=t.stream_memory_mb * 1024 * 1024
        )
    resources: dict[str, float] = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "preprocessor": data.preprocessor,
            "in_memory": not isinstance(data, StreamingData),
        },
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split="all", execution_options=options),
        run_config=ray.train.RunConfig(
            name="train",
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=config.tune.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.tune.keep_checkpoints),
            callbacks=[
                _forward_callback(),
                *([keeper_callback(keeper, trial_id)] if keeper is not None else []),
            ],
        ),
    )
    try:
        trainer.fit()
    finally:
        if keeper is not None:
            try:
                ray.get(keeper.release.remote(trial_id), timeout=120)
            except Exception as exc:  # the keeper still frees them once the controller is gone
                logger.warning("raymlops: releasing the trial's placement groups failed: %s", exc)


def trial_storage(experiment_path: str, trial_id: str) -> str:
    """Where a trial's Ray Train run keeps its checkpoints: inside the Tune experiment."""
    if "://" in experiment_path:
        return f"{experiment_path.rstrip('/')}/{trial_id}"
    return os.path.join(experiment_path, trial_id)


def per_trial_demand(config: PipelineConfig) -> tuple[float, float]:
    """CPUs and GPUs one data-parallel trial reserves: its workers', plus one ingest task's
    `ingest_cpus` (the Tune trial's own driver and the Train controller reserve none)."""
    t = config.train
    cpus = t.num_workers * t.cpus_per_worker + t.ingest_cpus
    gpus = t.num_workers * t.gpus_per_worker if t.use_gpu else 0.0
    return cpus, gpus
