"""Evaluation metrics for classification and regression, computed with scikit-learn.

One function per task so that trials, the final test evaluation and (later) the gate all
report the same numbers under the same names.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm

__all__ = ["classification_metrics", "regression_metrics"]


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, n_classes: int | None = None
) -> dict[str, float]:
    """accuracy, macro F1, log loss and (binary only) ROC AUC from class probabilities."""
    n_classes = n_classes or probabilities.shape[1]
    labels = np.arange(n_classes)
    y_pred = probabilities.argmax(axis=1)
    probs = np.clip(probabilities, 1e-7, 1.0)
    probs = probs / probs.sum(axis=1, keepdims=True)
    result = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "f1_macro": float(
            skm.f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)
        ),
        "log_loss": float(skm.log_loss(y_true, probs, labels=labels)),
    }
    if n_classes == 2:
        if len(np.unique(y_true)) == 2:
            result["roc_auc"] = float(skm.roc_auc_score(y_true, probabilities[:, 1]))
        else:
            result["roc_auc"] = float("nan")
    return result


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² in the target's own units."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r2 = float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan")
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "r2": r2,
    }
