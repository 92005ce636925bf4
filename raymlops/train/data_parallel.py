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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raymlops.core.config import PipelineConfig

if TYPE_CHECKING:  # torch and the modules that import it load in the workers, not here
    import torch
    from torch import nn

    from raymlops.model.features import Preprocessor
    from raymlops.train.loop import EpochBook

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


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The training loop each Ray Train worker runs (rank 0 checkpoints).

    `_Worker.start` builds (or restores) the model; each epoch trains on this worker's shard
    (`_train_epoch`), validates on it (`_validate`), takes the largest worker's memory peaks
    (`_MemoryWatch.peaks`) and reports, checkpointing where the epoch book says
    (`_end_epoch`). Every worker runs the same all-reduces in the same order."""
    import ray.train

    worker = _Worker.start(loop_config)
    data = _WorkerData(
        worker, ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("validation")
    )
    # What this worker held before it read any data: the baseline of the memory check.
    memory = _MemoryWatch()
    if loop_config.get("in_memory"):
        data.cache()

    for epoch in range(worker.book.start_epoch, worker.config.train.epochs):
        loss_sum, row_sum, train_s = _train_epoch(worker, data, memory, epoch)
        val = _validate(worker, data)
        peaks = memory.peaks(worker)
        metrics: dict[str, float] = {
            "epoch": float(epoch + 1),
            "train_loss": loss_sum / max(row_sum, 1.0),
            "train_rows": row_sum,
            "train_epoch_s": train_s,
            **peaks,
            **val,
        }
        if _end_epoch(worker, epoch, metrics):
            break


@dataclass
class _Worker:
    """What one Ray Train worker trains a trial with: its rank, device and batch size, the
    model (bare and, when distributed, DDP-wrapped), optimizer, loss and epoch book, and the
    checkpoint it started from. Built by `_Worker.start`."""

    config: PipelineConfig
    prep: Preprocessor
    rank: int
    world: int
    device: torch.device
    #: Whether sums and peaks are all-reduced: more than one worker, in a process group.
    distributed: bool
    #: Features per row (`Preprocessor.n_outputs`): the width of a batch's `x` matrix.
    width: int
    #: This worker's share of `train.batch_size`.
    per_worker_batch: int
    #: The bare module: evaluated, and saved by `book`.
    base: nn.Module
    #: What trains: `base`, or its DDP wrapper when distributed.
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    has_batchnorm: bool
    book: EpochBook
    #: Where the checkpoint this attempt started from is stored, for `_forward_callback`
    #: (which only sees the checkpoints reported since the Train run started).
    restored_from: str

    @classmethod
    def start(cls, loop_config: dict[str, Any]) -> _Worker:
        """This worker's state for `train_loop_per_worker`'s `loop_config`: the model built
        with the single-process loop's seed, and — when the run has a checkpoint — the
        model, optimizer and epoch book restored from it."""
        import ray.train
        import ray.train.torch
        import torch
        import torch.distributed as dist
        from torch import nn

        from raymlops.model.architectures import build_model
        from raymlops.model.features import Preprocessor
        from raymlops.train.loop import EpochBook, _optimizer

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
        restored_from = ""
        if checkpoint is not None:
            restored_from = str(checkpoint.path)
            with checkpoint.as_directory() as folder:
                book.restore(Path(folder), optimizer, str(device))
        model = ray.train.torch.prepare_model(base, move_to_device=False) if distributed else base
        return cls(
            config=config,
            prep=prep,
            rank=rank,
            world=world,
            device=device,
            distributed=distributed,
            width=prep.n_outputs,
            per_worker_batch=max(1, t.batch_size // world),
            base=base,
            model=model,
            optimizer=optimizer,
            loss_fn=loss_fn,
            has_batchnorm=has_batchnorm,
            book=book,
            restored_from=restored_from,
        )

    def all_sum(self, values: list[float]) -> list[float]:
        """`values` summed over every worker (in float64; themselves when not distributed)."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(tensor)
        return [float(v) for v in tensor.cpu()]


class _WorkerData:
    """A worker's shards of the training and validation splits, as batches: training
    batches as tensors on the worker's device, reshuffled each epoch with a seed per
    (epoch, rank); validation batches as arrays, in order.

    Data that fits in memory (not data.streaming) is read from Ray Data once (`cache`) and
    kept as this worker's tensors: per-step batches then cost what they cost in one process
    (Ray Data's per-batch conversion and local shuffle made an epoch several times slower;
    see benchmarks/RESULTS.md). Streaming data is read from its shard every epoch."""

    def __init__(self, worker: _Worker, train_shard: Any, val_shard: Any) -> None:
        self.worker = worker
        self.train_shard = train_shard
        self.val_shard = val_shard
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None
        self.cached_val: tuple[np.ndarray, np.ndarray] | None = None

    def cache(self) -> None:
        """Read both shards whole and keep them: training as tensors on the device."""
        import torch

        device = self.worker.device
        x_all, y_all = self.read_shard(self.train_shard)
        self.cached = (torch.from_numpy(x_all).to(device), torch.from_numpy(y_all).to(device))
        self.cached_val = self.read_shard(self.val_shard)

    def read_shard(self, shard: Any) -> tuple[np.ndarray, np.ndarray]:
        """All of a shard's rows as one feature matrix and one target vector."""
        from raymlops.train.streaming import batch_to_arrays

        width = self.worker.width
        parts = [
            batch_to_arrays(b, width)
            for b in shard.iter_batches(batch_size=65_536, batch_format="pyarrow")
        ]
        if not parts:
            return np.zeros((0, width), np.float32), np.zeros(0)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def shuffle_seed(self, epoch: int) -> int:
        """The seed of this worker's training order in `epoch`: one per (epoch, rank)."""
        return self.worker.config.train.seed * 100_003 + epoch * 7 + self.worker.rank

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch `epoch`'s training batches of `per_worker_batch` rows (x, y) on the device:
        the cache in a seeded random order, or the shard through Ray Data's seeded local
        shuffle."""
        import torch

        from raymlops.train.streaming import batch_to_arrays

        worker = self.worker
        device, per_worker_batch = worker.device, worker.per_worker_batch
        if self.cached is None:
            for batch in self.train_shard.iter_batches(
                batch_size=per_worker_batch,
                batch_format="pyarrow",
                local_shuffle_buffer_size=max(_SHUFFLE_ROWS, 4 * per_worker_batch),
                local_shuffle_seed=self.shuffle_seed(epoch),
                prefetch_batches=2,
            ):
                x_np, y_np = batch_to_arrays(batch, worker.width)
                yield torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
            return
        x_all, y_all = self.cached
        generator = torch.Generator().manual_seed(self.shuffle_seed(epoch))
        order = torch.randperm(len(x_all), generator=generator).to(device)
        for start in range(0, len(order), per_worker_batch):
            idx = order[start : start + per_worker_batch]
            yield x_all[idx], y_all[idx]

    def val_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The validation shard in order, as (x, y) arrays of at least 1024 rows a batch."""
        from raymlops.train.streaming import batch_to_arrays

        step = max(1024, self.worker.per_worker_batch)
        if self.cached_val is not None:
            x_all, y_all = self.cached_val
            for start in range(0, len(x_all), step):
                yield x_all[start : start + step], y_all[start : start + step]
            return
        for batch in self.val_shard.iter_batches(batch_size=step, batch_format="pyarrow"):
            yield batch_to_arrays(batch, self.worker.width)


class _MemoryWatch:
    """A worker's memory since its baseline (taken when this is made, before it reads any
    data): peak RSS, and the peak of its private memory, sampled every
    `_MEMORY_SAMPLE_STEPS` training steps (`sample`) and at each epoch's end (`peaks`)."""

    def __init__(self) -> None:
        self.start_peak = _peak_rss_mb()
        self.start_private = self.private_peak = _private_mb()

    def sample(self) -> None:
        """Take the private memory now into its peak."""
        self.private_peak = max(self.private_peak, _private_mb())

    def peaks(self, worker: _Worker) -> dict[str, float]:
        """The epoch's memory metrics, each the largest worker's (an all-reduce with MAX)."""
        import torch
        import torch.distributed as dist

        peak_now = _peak_rss_mb()
        self.sample()
        peak = torch.tensor(
            [peak_now, peak_now - self.start_peak, self.private_peak - self.start_private],
            dtype=torch.float64,
            device=worker.device,
        )
        if worker.distributed:
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        return {
            # Peak resident memory of the largest worker, and how far reading data has
            # raised it (shared object-store pages included), and its private memory's
            # growth (sampled): a fixed overhead, not a share of the data (streaming).
            "train_worker_peak_rss_mb": float(peak[0]),
            "train_worker_rss_growth_mb": float(peak[1]),
            "train_worker_private_growth_mb": float(peak[2]),
        }


def _train_epoch(
    worker: _Worker, data: _WorkerData, memory: _MemoryWatch, epoch: int
) -> tuple[float, float, float]:
    """Train one epoch (0-based `epoch`) on this worker's shard, sampling its private memory
    into `memory`; return the training loss summed over every worker's rows, those rows, and
    the epoch's seconds (the slowest worker's)."""
    import torch

    # Dropout draws from the global RNG: a seed per (epoch, rank) makes a resumed run
    # repeat exactly what an uninterrupted one would have done.
    torch.manual_seed(worker.config.train.seed * 100_003 + epoch * 1_009 + worker.rank)
    model, optimizer = worker.model, worker.optimizer
    model.train()
    total, rows = 0.0, 0
    epoch_started = time.perf_counter()
    for step, (x, y) in enumerate(data.train_batches(epoch)):
        if step % _MEMORY_SAMPLE_STEPS == 0:
            memory.sample()
        if len(x) < 2 and worker.has_batchnorm:
            continue  # BatchNorm cannot normalise a batch of one
        if worker.prep.classes is None:
            y = y.unsqueeze(1)
        optimizer.zero_grad(set_to_none=True)
        loss = worker.loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(x)
        rows += len(x)
    loss_sum, row_sum = worker.all_sum([total, float(rows)])
    train_s = time.perf_counter() - epoch_started  # after the sum: the slowest worker's
    return loss_sum, row_sum, train_s


def _validate(worker: _Worker, data: _WorkerData) -> dict[str, float]:
    """The `val_`-prefixed metrics of the whole validation split: this worker's shard's
    metric sums and counts (`MetricAccumulator`), all-reduced over every worker."""
    import torch
    import torch.distributed as dist

    from raymlops.train.loop import metric_accumulator

    prep = worker.prep
    worker.model.eval()
    scores = metric_accumulator(prep)
    with torch.inference_mode():
        for x_np, y_np in data.val_batches():
            out = worker.base(torch.from_numpy(np.ascontiguousarray(x_np)).to(worker.device))
            if prep.classes is not None:
                scores.update(torch.softmax(out, dim=1).cpu().numpy(), y_np)
            else:
                values = out.squeeze(1).cpu().numpy().astype(np.float64)
                scores.update(prep.decode_regression(values), y_np)
    if worker.distributed:  # every worker's sums: the whole validation split's metrics
        summed = torch.from_numpy(scores.state).to(worker.device)
        dist.all_reduce(summed)
        scores.state = summed.cpu().numpy()
    return {f"val_{k}": v for k, v in scores.result().items()}


def _end_epoch(worker: _Worker, epoch: int, metrics: dict[str, float]) -> bool:
    """Record epoch `epoch`'s (0-based) metrics in the epoch book and report them to Ray
    Train — every worker reports; on the epochs that checkpoint, with rank 0's checkpoint —
    naming the checkpoint this attempt restored. Return whether the trial stops early."""
    import ray.train

    stop, save = worker.book.end_epoch(epoch + 1, metrics)
    report = {**metrics, RESTORED_PATH_KEY: worker.restored_from}
    if save:
        with tempfile.TemporaryDirectory(prefix="raymlops-ckpt-") as tmp:
            saved = None
            if worker.rank == 0:
                worker.book.save(Path(tmp), worker.optimizer)
                saved = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(report, checkpoint=saved)
    else:
        ray.train.report(report)
    return stop


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
