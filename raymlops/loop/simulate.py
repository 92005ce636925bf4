"""Simulated production traffic for the main job: rows drawn from the training data, with a
known covariate shift on some numeric features, and their true labels kept aside so that they
can come back later as "recent labelled data" for retraining."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa


@dataclass
class Traffic:
    """Rows to send (features only), the same rows with labels, and what was shifted."""

    requests: pd.DataFrame
    labelled: pd.DataFrame
    shifted: list[str]
    shift_std: float


def drifted_traffic(
    table: pa.Table,
    label: str,
    features: list[str],
    *,
    rows: int,
    shift_std: float,
    share: float,
    seed: int,
    keep: list[str] | None = None,
) -> Traffic:
    """`rows` rows resampled from `table`, with `share` of the numeric features moved by
    `shift_std` of their standard deviation (so drift against the training profile is real
    and its size is known). The labelled rows also carry the `keep` columns (ids), so that
    they line up with the training data's columns."""
    frame = table.to_pandas()
    rng = np.random.default_rng(seed)
    picked = frame.iloc[rng.integers(0, len(frame), size=rows)].reset_index(drop=True)
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(frame[c])]
    count = max(1, round(len(numeric) * share)) if numeric else 0
    shifted = sorted(rng.choice(numeric, size=count, replace=False).tolist()) if count else []
    for column in shifted:
        std = float(frame[column].std()) or 1.0
        picked[column] = picked[column].astype("float64") + shift_std * std
    labelled = picked[[*(keep or []), *features, label]]
    return Traffic(picked[features], labelled, shifted, shift_std)
