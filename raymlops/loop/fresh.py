"""Fresh ground truth for the champion/challenger decision: a slice of retraining's recent
labelled rows that neither model trains on.

The champion never saw the recent rows; the candidate would, if all of them went into its
training set. `hold_out_fresh` carves a slice (`gate.champion.fresh_share`) out of them
*before* the retraining set is built, so the gate can compare both models on rows from the
new distribution that neither learned from (`run_gate(..., fresh=…)`).

A row's side is decided by a stable hash of the row itself — its `data.id_columns` when it
has them, else its content without the label — salted with `data.split.seed`, not by its
position: when `retrain.recent_data` grows between watch passes, a row that was held out
stays held out (and one that trained keeps training), so a later champion's "fresh" rows
are never rows it trained on. Only the newest `KEEP_FRESH_FOLDERS` written splits are kept.
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

__all__ = ["KEEP_FRESH_FOLDERS", "FreshSplit", "fresh_side", "hold_out_fresh"]

#: Written `fresh-*` folders kept per model (the newest; a gate record names its own).
KEEP_FRESH_FOLDERS = 5


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


def fresh_side(table: pa.Table, label: str, ids: list[str], share: float, seed: int) -> np.ndarray:
    """Per row, whether it belongs to the fresh slice: a 64-bit hash of the row's id columns
    (those of `ids` in the table; all columns but `label` when none are) and `seed`, read as
    a number in [0, 1), below `share`. Depends on nothing but the row, so it never changes
    as other rows come and go."""
    import pandas as pd

    columns = [c for c in ids if c in table.column_names] or [
        c for c in table.column_names if c != label and not c.startswith("__index_level_")
    ]  # (pandas' written index is no part of a row)
    frame = pd.DataFrame({str(i): table.column(c).to_pandas() for i, c in enumerate(columns)})
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    salted = pd.util.hash_array(hashed ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    return np.asarray((salted >> np.uint64(11)).astype(np.float64) / float(1 << 53) < share)


def _prune(root: str, model: str, keep: int) -> None:
    """Delete all but the newest `keep` written `fresh-*` folders of `model` (the names
    sort by time); best effort — a folder that cannot be deleted now is left for later."""
    import pyarrow.fs as pafs

    from raymlops.core.storage import join, open_location

    filesystem, base = open_location(join(root, "retrain", model))
    try:
        found = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError:
        return
    folders = sorted(
        f.path
        for f in found
        if f.type == pafs.FileType.Directory and f.base_name.startswith("fresh-")
    )
    for path in folders[: max(len(folders) - keep, 0)]:
        try:
            filesystem.delete_dir(path)
        except OSError:
            continue


def hold_out_fresh(config: PipelineConfig, home: Path, recent: str | None) -> FreshSplit:
    """Split the recent labelled rows into the part retraining learns from and the fresh
    slice the gate compares on (`fresh_side`: a row's side never changes as the recent rows
    grow; salted by `data.split.seed`). Nothing is held out without
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
    labelled = table.column(label).is_valid().to_numpy(zero_copy_only=False)
    side = fresh_side(
        table, label, config.data.id_columns, comparison.fresh_share, config.data.split.seed
    )
    picked = np.flatnonzero(labelled & side)
    wanted = len(picked)
    if wanted < comparison.min_fresh_rows:
        return FreshSplit(
            recent,
            None,
            0,
            f"{int(labelled.sum())} recent labelled rows: their {comparison.fresh_share:g} "
            f"share ({wanted}) is below gate.champion.min_fresh_rows "
            f"({comparison.min_fresh_rows}), so all of them train",
        )
    keep = np.ones(table.num_rows, dtype=bool)
    keep[picked] = False
    root = storage_root(config.storage) or str(home)
    _prune(root, config.registry.model_name, KEEP_FRESH_FOLDERS - 1)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    folder = join(root, "retrain", config.registry.model_name, f"fresh-{stamp}")
    train_path, fresh_path = join(folder, "recent-train.parquet"), join(folder, "fresh.parquet")
    _write(table.filter(pa.array(keep)), train_path)
    _write(table.take(pa.array(picked)), fresh_path)
    return FreshSplit(
        train_path,
        fresh_path,
        wanted,
        f"{wanted} of {int(labelled.sum())} recent labelled rows held out of retraining "
        f"(gate.champion.fresh_share {comparison.fresh_share:g} by a stable hash of each row, "
        f"seed {config.data.split.seed})",
    )
