"""Fresh ground truth for the champion/challenger decision: a slice of retraining's recent
labelled rows that neither model trains on.

The champion never saw the recent rows; the candidate would, if all of them went into its
training set. `hold_out_fresh` carves a seeded random slice (`gate.champion.fresh_share`)
out of them *before* the retraining set is built, so the gate can compare both models on
rows from the new distribution that neither learned from (`run_gate(..., fresh=…)`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from raymlops.core.config import PipelineConfig

__all__ = ["FreshSplit", "hold_out_fresh"]


@dataclass(frozen=True)
class FreshSplit:
    """Where the recent rows went: `train` (the file retraining adds to its data, or None),
    `fresh` (the held-out rows, or None when none were held out), how many, and a note that
    the gate record carries (where the fresh rows came from, or why there are none)."""

    train: str | None
    fresh: str | None
    rows: int
    note: str


def _write(table: pa.Table, location: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raymlops.core.storage import write_bytes

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(location, sink.getvalue().to_pybytes())


def hold_out_fresh(config: PipelineConfig, home: Path, recent: str | None) -> FreshSplit:
    """Split the recent labelled rows into the part retraining learns from and the fresh
    slice the gate compares on (seeded by `data.split.seed`). Nothing is held out without
    recent rows, with the champion comparison off or `fresh_share` 0, or when the slice
    would have fewer than `gate.champion.min_fresh_rows` labelled rows (then every recent
    row trains, as before). Both parts are written as Parquet next to the retraining set
    (under the shared `storage` when one is configured)."""
    import pyarrow as pa

    from raymlops.core.storage import join, storage_root
    from raymlops.data.dataset import load_table

    comparison = config.gate.champion
    if recent is None:
        return FreshSplit(None, None, 0, "no recent labelled rows")
    if comparison is None or comparison.fresh_share == 0:
        return FreshSplit(recent, None, 0, "no fresh rows held out (gate.champion.fresh_share 0)")
    table = load_table(recent)
    label = config.data.label
    if label not in table.column_names:
        return FreshSplit(recent, None, 0, f"the recent rows have no label column '{label}'")
    labelled = np.flatnonzero(table.column(label).is_valid().to_numpy(zero_copy_only=False))
    wanted = round(comparison.fresh_share * len(labelled))
    if wanted < comparison.min_fresh_rows:
        return FreshSplit(
            recent,
            None,
            0,
            f"{len(labelled)} recent labelled rows: a {comparison.fresh_share:g} share "
            f"({wanted}) is below gate.champion.min_fresh_rows ({comparison.min_fresh_rows}), "
            "so all of them train",
        )
    rng = np.random.default_rng(config.data.split.seed)
    picked = np.sort(rng.permutation(labelled)[:wanted])
    keep = np.ones(table.num_rows, dtype=bool)
    keep[picked] = False
    root = storage_root(config.storage) or str(home)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    folder = join(root, "retrain", config.registry.model_name, f"fresh-{stamp}")
    train_path, fresh_path = join(folder, "recent-train.parquet"), join(folder, "fresh.parquet")
    _write(table.filter(pa.array(keep)), train_path)
    _write(table.take(pa.array(picked)), fresh_path)
    return FreshSplit(
        train_path,
        fresh_path,
        wanted,
        f"{wanted} of {len(labelled)} recent labelled rows held out of retraining "
        f"(gate.champion.fresh_share {comparison.fresh_share:g}, seed {config.data.split.seed})",
    )
