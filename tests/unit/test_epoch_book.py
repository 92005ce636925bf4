"""Tests of raymlops.train.loop.EpochBook, the per-epoch bookkeeping that the single-process
loop and the data-parallel workers share (no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from raymlops.core.config import load_config
from raymlops.train.loop import EpochBook


def _setup() -> tuple[EpochBook, torch.nn.Linear, torch.optim.Optimizer]:
    config = load_config(
        None,
        [
            "train.epochs=10",
            "train.early_stopping_patience=2",
            "train.checkpoint_every=4",
            "tune.scheduler=fifo",
        ],
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    return EpochBook(config, model), model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_tracks_the_best_epoch_patience_and_checkpoint_epochs(tmp_path: Path) -> None:
    book, model, optimizer = _setup()
    outcomes = []
    weights_at: dict[int, torch.Tensor] = {}
    for epoch, loss in enumerate([1.0, 0.5, 0.6, 0.4, float("nan"), 0.5], start=1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))  # weights that say which epoch they are from
        weights_at[epoch] = model.weight.detach().clone()
        metrics = {"epoch": float(epoch), "val_loss": loss}
        stop, save = book.end_epoch(epoch, metrics)
        outcomes.append((stop, save, metrics["best_val_loss"], metrics["early_stopped"]))
    assert outcomes == [
        (False, False, 1.0, 0.0),
        (False, False, 0.5, 0.0),
        (False, False, 0.5, 0.0),  # worse: one stale epoch
        (False, True, 0.4, 0.0),  # better; epoch 4 is a checkpoint_every epoch
        (False, False, 0.4, 0.0),  # NaN is never better
        (True, True, 0.4, 1.0),  # second stale epoch: patience spent, stop and checkpoint
    ]
    assert book.best_metrics == {"epoch": 4.0, "val_loss": 0.4}
    assert torch.equal(book.best_state["weight"], weights_at[4])

    # A checkpoint restores the loop where it was: latest weights, best epoch, patience.
    book.save(tmp_path, optimizer)
    restored, fresh, fresh_optimizer = _setup()
    restored.restore(tmp_path, fresh_optimizer, "cpu")
    assert (restored.start_epoch, restored.best, restored.stale) == (6, 0.4, 2)
    assert restored.best_metrics == {"epoch": 4.0, "val_loss": 0.4}
    assert torch.equal(fresh.weight, weights_at[6])
    assert torch.equal(restored.best_state["weight"], weights_at[4])


def test_the_last_epoch_checkpoints_and_an_unreported_metric_fails() -> None:
    book, _, _ = _setup()
    assert book.end_epoch(10, {"epoch": 10.0, "val_loss": 0.3}) == (False, True)
    with pytest.raises(ValueError, match=r"tune\.metric 'val_loss' is not reported"):
        book.end_epoch(11, {"epoch": 11.0, "train_loss": 0.3})
    assert math.isclose(book.best or 0.0, 0.3)
