"""A model's outputs and metrics on labelled rows, as the gate and the champion comparison
score them: every prediction through `Predictor.predict_matrix` (the one path from rows to
outputs) and the registered metrics from `raymlops.train.loop.metrics_from_outputs`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from raymlops.core.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from raymlops.model.predictor import Predictor

__all__ = ["Scored", "check_metric_for_task", "known_rows", "score", "task_metrics"]


def task_metrics(predictor: Predictor, y: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """The registered metrics (as `raymlops.train.loop.evaluate` computes them) from encoded
    targets and `Predictor.predict_matrix` outputs; works on any subset of rows."""
    from raymlops.train.loop import metrics_from_outputs

    return metrics_from_outputs(predictor.preprocessor, outputs, y)


@dataclass
class Scored:
    """A predictor's outputs on a frame: encoded truth, raw outputs, predicted labels."""

    y: np.ndarray
    outputs: np.ndarray
    predicted: np.ndarray


def score(predictor: Predictor, frame: pd.DataFrame, label: str) -> Scored:
    """`predictor` on `frame`, whose `label` column holds the truth."""
    prep = predictor.preprocessor
    outputs = predictor.predict_matrix(prep.transform(frame))
    y = prep.encode_target(frame[label])
    predicted = outputs.argmax(axis=1) if prep.classes is not None else outputs
    return Scored(y, outputs, predicted)


def known_rows(
    frame: pd.DataFrame, label: str, *predictors: Predictor
) -> tuple[pd.DataFrame, list[str]]:
    """The rows of `frame` whose `label` every one of `predictors` was trained on, and the
    distinct labels of the rows left out. A class that one model never saw cannot be scored
    by it (`encode_target` refuses it); comparing two models on rows only one of them can be
    scored on would not be a like-for-like comparison, so such rows are dropped and counted."""
    keep = np.ones(len(frame), dtype=bool)
    for predictor in predictors:
        keep &= predictor.preprocessor.knows_label(frame[label])
    if keep.all():
        return frame, []
    dropped = sorted({str(v) for v in frame[label][~keep]})
    return frame[keep].reset_index(drop=True), dropped


def check_metric_for_task(metric: str, metrics: dict[str, float], where: str) -> None:
    """ConfigError naming `where` when `metric` is not one of the task's `metrics`."""
    if metric not in metrics:
        kind = "a classification" if "accuracy" in metrics else "a regression"
        raise ConfigError(
            f"{where}: '{metric}' is not {kind} metric (available: {', '.join(sorted(metrics))})"
        )
