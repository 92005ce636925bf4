"""Permutation importance of a Predictor's input features, stored with each version.

Monitoring weighs each feature's drift by how much the model relies on it, so that a shift
in the one feature that drives the prediction counts and a shift in a feature the model
ignores does not. The importance of a feature is how much the model's loss on a sample of
its training rows grows when that feature's values are shuffled among the rows (Breiman's
permutation importance, computed by scikit-learn's `permutation_importance` with the
Predictor as the estimator): log loss for classification, mean squared error in the
standardised target's units for regression. It is seeded and uses a few thousand rows at
most, so it costs seconds. A version records it as `importance.json` next to its training
profile (digest-checked like every artifact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raymlops.model.predictor import Predictor

__all__ = ["IMPORTANCE_FILE", "FeatureImportance", "permutation_importance"]

#: The artifact a version stores its feature importance in.
IMPORTANCE_FILE = "importance.json"


@dataclass(frozen=True)
class FeatureImportance:
    """Mean increase of the loss when each feature is shuffled (`importance`, with its
    standard deviation over the repeats), and how it was measured."""

    importance: dict[str, float]
    std: dict[str, float] = field(default_factory=dict)
    metric: str = ""
    rows: int = 0
    repeats: int = 0
    seed: int = 0
    method: str = "permutation"

    @property
    def weights(self) -> dict[str, float]:
        """Importances clipped at 0 (shuffling a feature the model ignores can lower the
        loss by chance) and normalised to sum to 1; equal weights when no feature helps."""
        clipped = {k: max(v, 0.0) if math.isfinite(v) else 0.0 for k, v in self.importance.items()}
        total = sum(clipped.values())
        if total <= 0:
            return {k: 1.0 / len(clipped) for k in clipped} if clipped else {}
        return {k: v / total for k, v in clipped.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "metric": self.metric,
            "rows": self.rows,
            "repeats": self.repeats,
            "seed": self.seed,
            "importance": self.importance,
            "std": self.std,
            "weights": self.weights,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureImportance:
        return cls(
            importance={str(k): float(v) for k, v in data["importance"].items()},
            std={str(k): float(v) for k, v in data.get("std", {}).items()},
            metric=str(data.get("metric", "")),
            rows=int(data.get("rows", 0)),
            repeats=int(data.get("repeats", 0)),
            seed=int(data.get("seed", 0)),
            method=str(data.get("method", "permutation")),
        )


class _Fitted:
    """A trained Predictor in scikit-learn's estimator protocol (which asks for `fit`; it
    is never called: the model is trained already)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def fit(self, x: Any, y: Any) -> _Fitted:
        return self


def _score(estimator: _Fitted, x: pd.DataFrame, y: np.ndarray) -> float:
    """scikit-learn's scorer protocol: minus the loss (higher is better)."""
    predictor = estimator.predictor
    prep = predictor.preprocessor
    outputs = predictor.predict_matrix(prep.transform(x))
    if prep.classes is not None:
        picked = outputs[np.arange(len(y)), y.astype(np.int64)]
        return -float(np.mean(-np.log(np.clip(picked, 1e-15, 1.0))))
    standardised = (outputs - prep.target_mean) / prep.target_std
    return -float(np.mean((standardised - y) ** 2))


def permutation_importance(
    predictor: Predictor,
    rows: pa.Table,
    label: str,
    *,
    max_rows: int = 2000,
    repeats: int = 3,
    seed: int = 0,
) -> FeatureImportance:
    """Permutation importance of each of the predictor's features on (a seeded sample of
    at most `max_rows` of) `rows`, which hold the features and the `label` column."""
    from sklearn.inspection import permutation_importance as sk_permutation_importance

    if rows.num_rows > max_rows:
        pick = np.sort(np.random.default_rng(seed).choice(rows.num_rows, max_rows, replace=False))
        rows = rows.take(pa.array(pick))
    names = predictor.feature_names
    target = predictor.preprocessor.encode_target(rows.column(label))
    frame = pd.DataFrame({n: rows.column(n).to_pandas() for n in names})
    result = sk_permutation_importance(
        _Fitted(predictor),
        frame,
        target,
        scoring=_score,
        n_repeats=repeats,
        random_state=seed,
    )
    return FeatureImportance(
        importance={n: float(v) for n, v in zip(names, result.importances_mean, strict=True)},
        std={n: float(v) for n, v in zip(names, result.importances_std, strict=True)},
        metric="log_loss" if predictor.preprocessor.classes is not None else "mse_standardised",
        rows=rows.num_rows,
        repeats=repeats,
        seed=seed,
    )
