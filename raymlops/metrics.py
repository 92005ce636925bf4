"""Evaluation metrics for classification and regression.

Computed with numpy rather than scikit-learn because they run after every epoch of every
trial, and importing scikit-learn would add about a second to each Tune worker's start;
the unit tests check every value against scikit-learn's definitions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["classification_metrics", "regression_metrics", "roc_auc"]

_EPS = 1e-7


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC (Mann–Whitney U with average ranks for ties); NaN for one class."""
    y = np.asarray(y_true).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each tie group
    ranks = average_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, n_classes: int | None = None
) -> dict[str, float]:
    """accuracy, macro F1, log loss and (binary only) ROC AUC from class probabilities."""
    y = np.asarray(y_true, dtype=np.int64)
    n_classes = n_classes or probabilities.shape[1]
    y_pred = probabilities.argmax(axis=1)
    probs = np.clip(probabilities, _EPS, 1.0)
    probs = probs / probs.sum(axis=1, keepdims=True)
    true_pos = np.bincount(y[y_pred == y], minlength=n_classes)
    predicted = np.bincount(y_pred, minlength=n_classes)
    actual = np.bincount(y, minlength=n_classes)
    denominator = predicted + actual  # = 2·tp + fp + fn
    f1 = np.divide(2.0 * true_pos, denominator, out=np.zeros(n_classes), where=denominator > 0)
    result = {
        "accuracy": float(np.mean(y_pred == y)),
        "f1_macro": float(f1.mean()),
        "log_loss": float(-np.mean(np.log(probs[np.arange(len(y)), y]))),
    }
    if n_classes == 2:
        result["roc_auc"] = roc_auc(y, probabilities[:, 1])
    return result


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² in the target's own units (R² as scikit-learn defines it)."""
    truth = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    residual = truth - pred
    ss_res = float(np.sum(residual**2))
    ss_tot = float(np.sum((truth - truth.mean()) ** 2)) if len(truth) else 0.0
    if len(truth) < 2:
        r2 = float("nan")
    elif ss_tot == 0.0:
        r2 = 1.0 if ss_res == 0.0 else 0.0
    else:
        r2 = 1.0 - ss_res / ss_tot
    return {
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "mae": float(np.mean(np.abs(residual))),
        "r2": r2,
    }
