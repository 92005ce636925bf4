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

__all__ = ["Scored", "check_metric_for_task", "score", "task_metrics"]


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


def check_metric_for_task(metric: str, metrics: dict[str, float], where: str) -> None:
    """ConfigError naming `where` when `metric` is not one of the task's `metrics`."""
    if metric not in metrics:
        kind = "a classification" if "accuracy" in metrics else "a regression"
        raise ConfigError(
            f"{where}: '{metric}' is not {kind} metric (available: {', '.join(sorted(metrics))})"
        )
