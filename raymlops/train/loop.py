"""One trial: a seeded torch training loop with early stopping and resumable checkpoints.

The loop knows nothing about Tune: it takes a `report` callback, so the same function runs
inside a Tune trial, in a plain loop (benchmarks) or in a test.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from raymlops.core.config import PipelineConfig
from raymlops.model.architectures import build_model
from raymlops.model.artifacts import flatten_optimizer_state, unflatten_optimizer_state
from raymlops.model.features import Preprocessor
from raymlops.model.metrics import MetricAccumulator, classification_metrics, regression_metrics
from raymlops.model.predictor import Predictor

__all__ = [
    "CHECKPOINT_STATE",
    "TrainingArrays",
    "architecture_spec",
    "decision_epochs",
    "evaluate",
    "fit",
    "load_best_predictor",
    "metric_accumulator",
    "metrics_from_outputs",
]

Reporter = Callable[[dict[str, float], Path | None], None]

CHECKPOINT_STATE = "state.json"
_BEST = "best.safetensors"
_LAST = "last.safetensors"
_OPTIM = "optimizer.safetensors"
_RNG = "rng.safetensors"


@dataclass
class TrainingArrays:
    """Preprocessed train/validation matrices plus the fitted preprocessing (JSON state)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    preprocessor: dict[str, Any]

    @classmethod
    def build(cls, prep: Preprocessor, train: Any, validation: Any, label: str) -> TrainingArrays:
        return cls(
            prep.transform(train),
            prep.encode_target(train.column(label)),
            prep.transform(validation),
            prep.encode_target(validation.column(label)),
            prep.to_dict(),
        )


def architecture_spec(config: PipelineConfig, prep: Preprocessor) -> dict[str, Any]:
    """JSON description from which `build_model` recreates the network."""
    return {
        "name": config.model.architecture,
        "params": config.model.params,
        "in_features": prep.n_outputs,
        "out_features": prep.n_targets,
    }


def evaluate(predictor: Predictor, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Loss and task metrics of a predictor on a preprocessed matrix and encoded targets."""
    return metrics_from_outputs(predictor.preprocessor, predictor.predict_matrix(x), y)


def metrics_from_outputs(
    prep: Preprocessor, outputs: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """Loss and task metrics from `Predictor.predict_matrix` outputs and encoded targets
    (what data-parallel workers compute once they have gathered every worker's outputs)."""
    if prep.classes is not None:
        result = classification_metrics(y, outputs, len(prep.classes))
        result["loss"] = result["log_loss"]
        return result
    truth = prep.decode_regression(y.astype(np.float64))
    result = regression_metrics(truth, outputs)
    result["loss"] = float(np.mean(((outputs - prep.target_mean) / prep.target_std - y) ** 2))
    return result


def metric_accumulator(prep: Preprocessor) -> MetricAccumulator:
    """An empty `MetricAccumulator` for `prep`'s task, fed `Predictor.predict_matrix`
    outputs and encoded targets: `metrics_from_outputs` in fixed memory, for splits seen in
    pieces (data-parallel workers, streamed evaluation)."""
    if prep.classes is not None:
        return MetricAccumulator(len(prep.classes))
    return MetricAccumulator(None, center=prep.target_mean, scale=prep.target_std)


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def decision_epochs(config: PipelineConfig) -> set[int]:
    """Epochs after which the scheduler may stop a trial: ASHA's rungs (as Ray computes
    them: grace_period × reduction_factor^k below max_t) and the last epoch.

    A checkpoint is written at each of these, so a trial's latest checkpoint always holds
    its best weights when it stops, without paying for a checkpoint every epoch."""
    epochs = config.train.epochs
    points = {epochs}
    t = config.tune
    if t.scheduler == "asha":
        grace = min(t.grace_period, epochs)
        rungs = int(math.log(epochs / grace) / math.log(t.reduction_factor) + 1)
        points.update(math.ceil(grace * t.reduction_factor**k) for k in range(rungs))
    return {p for p in points if 1 <= p <= epochs}


def _optimizer(config: PipelineConfig, model: nn.Module) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=t.learning_rate, momentum=0.9, weight_decay=t.weight_decay
        )
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)


def fit(
    config: PipelineConfig,
    arrays: TrainingArrays,
    report: Reporter,
    checkpoint_dir: Path | None = None,
    device: str = "cpu",
) -> dict[str, float]:
    """Train one configuration; call `report(metrics, checkpoint_folder_or_None)` each epoch.

    Metrics are prefixed `val_` (val_loss, val_accuracy, …). Restores from `checkpoint_dir`
    when given. Returns the metrics of the best epoch.
    """
    t = config.train
    prep = Preprocessor.from_dict(arrays.preprocessor)
    torch.manual_seed(t.seed)
    model = build_model(
        config.model.architecture, config.model.params, prep.n_outputs, prep.n_targets
    ).to(device)
    optimizer = _optimizer(config, model)
    loss_fn: nn.Module = nn.CrossEntropyLoss() if prep.classes is not None else nn.MSELoss()

    book = EpochBook(config, model)
    if checkpoint_dir is not None:
        book.restore(checkpoint_dir, optimizer, device)
        # Dropout draws from the global RNG: restore it so a resumed trial matches an
        # uninterrupted one exactly.
        torch.set_rng_state(load_file(str(checkpoint_dir / _RNG))["cpu"])

    x_train = torch.from_numpy(arrays.x_train).to(device)
    y_train = torch.from_numpy(arrays.y_train).to(device)
    if prep.classes is None:
        y_train = y_train.unsqueeze(1)
    n = len(x_train)
    generator = torch.Generator().manual_seed(t.seed)
    eval_predictor = Predictor(model, prep, {}, device=device)

    for epoch in range(book.start_epoch, t.epochs):
        generator.manual_seed(t.seed * 100_003 + epoch)
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        total = 0.0
        for start in range(0, n, t.batch_size):
            idx = order[start : start + t.batch_size]
            if (
                len(idx) < 2
                and n >= 2
                and any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
            ):
                continue  # BatchNorm cannot normalise a batch of one
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        model.eval()
        val = {
            f"val_{k}": v for k, v in evaluate(eval_predictor, arrays.x_val, arrays.y_val).items()
        }
        metrics = {"epoch": float(epoch + 1), "train_loss": total / max(n, 1), **val}
        stop, save = book.end_epoch(epoch + 1, metrics)
        if save:
            with tempfile.TemporaryDirectory(prefix="raymlops-ckpt-") as tmp:
                folder = Path(tmp)
                book.save(folder, optimizer)
                report(metrics, folder)
        else:
            report(metrics, None)
        if stop:
            break
    return book.best_metrics


class EpochBook:
    """The per-epoch bookkeeping of a trial's training loop, kept in one place so that the
    single-process loop (`fit`) and the data-parallel workers' loop
    (`raymlops.train.data_parallel`) stop, rank and checkpoint a trial the same way.

    It tracks the best value of `tune.metric` with that epoch's metrics and weights and the
    epochs since it improved (early-stopping patience); adds the `best_<metric>` and
    `early_stopped` metrics every epoch reports; says which epochs checkpoint
    (`should_checkpoint`); and writes and restores that state with the checkpoint's files.
    """

    def __init__(self, config: PipelineConfig, model: nn.Module) -> None:
        self.config = config
        self.model = model  # the bare module (not a DDP wrapper): its weights are saved
        self.metric, self.mode = config.tune.resolved_metric()
        #: Epochs already trained (0, or the restored checkpoint's epoch).
        self.start_epoch = 0
        self.epoch = 0
        self.best: float | None = None
        self.best_metrics: dict[str, float] = {}
        self.stale = 0
        self.best_state = _state_copy(model)

    def restore(self, folder: Path, optimizer: torch.optim.Optimizer, device: str) -> None:
        """Continue from a `write_checkpoint` folder: load the model's latest weights and the
        optimizer, and take the best epoch, patience count and epoch reached from it."""
        state, self.best_state = read_checkpoint(folder, self.model, optimizer, device)
        self.start_epoch = self.epoch = int(state["epoch"])
        self.best, self.best_metrics, self.stale = (
            state["best"],
            state["best_metrics"],
            state["stale"],
        )

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> tuple[bool, bool]:
        """Record epoch `epoch`'s (1-based) metrics, adding `best_<metric>` and
        `early_stopped` to `metrics`; return whether the trial stops early here and whether
        this epoch writes a checkpoint."""
        metric = self.metric
        if metric not in metrics:
            raise ValueError(
                f"tune.metric '{metric}' is not reported; available: {', '.join(sorted(metrics))}"
            )
        value = metrics[metric]
        if _is_better(value, self.best, self.mode):
            self.best, self.best_metrics, self.stale = value, dict(metrics), 0
            self.best_state = _state_copy(self.model)
        else:
            self.stale += 1
        self.epoch = epoch
        patience = self.config.train.early_stopping_patience
        stop = patience is not None and self.stale >= patience
        metrics["best_" + metric] = self.best if self.best is not None else float("nan")
        metrics["early_stopped"] = float(stop)
        return stop, should_checkpoint(self.config, epoch, stop)

    def save(self, folder: Path, optimizer: torch.optim.Optimizer) -> None:
        """Write a resumable checkpoint of the epoch last recorded into `folder`."""
        write_checkpoint(
            folder,
            self.model,
            self.best_state,
            optimizer,
            {
                "epoch": self.epoch,
                "best": self.best,
                "best_metrics": self.best_metrics,
                "stale": self.stale,
            },
        )


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def should_checkpoint(config: PipelineConfig, epoch: int, stop: bool) -> bool:
    """Whether the loop checkpoints after `epoch` (1-based): where a trial may stop, and
    every `train.checkpoint_every` epochs."""
    return stop or epoch in decision_epochs(config) or epoch % config.train.checkpoint_every == 0


def write_checkpoint(
    folder: Path,
    model: nn.Module,
    best_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Save a resumable checkpoint (safetensors + JSON, no pickles) into `folder`:
    latest and best weights, optimizer state, the global torch RNG and the loop's state."""
    save_file({k: v.cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / _LAST))
    save_file({k: v.cpu().contiguous() for k, v in best_state.items()}, str(folder / _BEST))
    tensors, meta = flatten_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(folder / _OPTIM))
    save_file({"cpu": torch.get_rng_state()}, str(folder / _RNG))
    (folder / CHECKPOINT_STATE).write_text(json.dumps({**state, "optimizer": meta}))


def read_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: str = "cpu"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load `write_checkpoint`'s files into `model` and `optimizer`; return the loop state
    and the best weights."""
    state: dict[str, Any] = json.loads((folder / CHECKPOINT_STATE).read_text())
    model.load_state_dict(load_file(str(folder / _LAST), device=device))
    best_state = load_file(str(folder / _BEST), device=device)
    optimizer.load_state_dict(
        unflatten_optimizer_state(load_file(str(folder / _OPTIM)), state["optimizer"])
    )
    return state, best_state


def load_best_predictor(
    checkpoint_dir: Path, config: PipelineConfig, arrays_preprocessor: dict[str, Any]
) -> Predictor:
    """The best-epoch weights of a trial's checkpoint as a Predictor."""
    prep = Preprocessor.from_dict(arrays_preprocessor)
    spec = architecture_spec(config, prep)
    model = build_model(spec["name"], spec["params"], spec["in_features"], spec["out_features"])
    model.load_state_dict(load_file(str(checkpoint_dir / _BEST)))
    return Predictor(model, prep, spec)
