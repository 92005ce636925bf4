"""Evaluation metrics for classification and regression.

Computed with numpy rather than scikit-learn because they run after every epoch of every
trial, and importing scikit-learn would add about a second to each Tune worker's start;
the unit tests check every value against scikit-learn's definitions.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MetricAccumulator",
    "classification_metrics",
    "comparison_metric",
    "metric_value",
    "regression_metrics",
    "resampled_f1_macro",
    "roc_auc",
    "row_terms",
]

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


def comparison_metric(n_classes: int | None) -> str:
    """The metric two models of a task are compared on by default: log loss for a binary
    classifier (a proper score: a near-random model cannot hide behind the majority class,
    as it can with accuracy on imbalanced data), macro F1 for several classes (every class
    counts alike), RMSE for regression (`n_classes` None)."""
    if n_classes is None:
        return "rmse"
    return "log_loss" if n_classes == 2 else "f1_macro"


def row_terms(metric: str, truth: np.ndarray, outputs: np.ndarray) -> np.ndarray | None:
    """Per-row terms whose mean is `metric` (for rmse: whose mean is its square), for the
    metrics that add up over rows — accuracy, log_loss, mae, rmse — as
    `classification_metrics`/`regression_metrics` compute them; None for the others
    (f1_macro, roc_auc, r2), which a paired bootstrap recomputes on each resample.

    `truth`: class indices with class probabilities as `outputs`, or targets in their own
    units with predictions as `outputs`."""
    if metric == "accuracy":
        return np.asarray(outputs.argmax(axis=1) == np.asarray(truth, dtype=np.int64), float)
    if metric == "log_loss":
        probs = np.clip(outputs, _EPS, 1.0)
        probs = probs / probs.sum(axis=1, keepdims=True)
        y = np.asarray(truth, dtype=np.int64)
        return np.asarray(-np.log(probs[np.arange(len(y)), y]), dtype=np.float64)
    if metric in ("mae", "rmse"):
        residual = np.asarray(truth, np.float64) - np.asarray(outputs, np.float64).reshape(-1)
        return np.abs(residual) if metric == "mae" else residual**2
    return None


def metric_value(metric: str, truth: np.ndarray, outputs: np.ndarray) -> float:
    """One metric alone, equal to `classification_metrics`/`regression_metrics`'s value
    (`truth` and `outputs` as `row_terms` takes them): a bootstrap resample needs only the
    metric it compares, not all of them (ROC AUC sorts every resample)."""
    if metric == "roc_auc":
        return roc_auc(truth, outputs[:, 1]) if outputs.shape[1] == 2 else float("nan")
    if metric == "r2":
        return regression_metrics(truth, np.asarray(outputs).reshape(-1))["r2"]
    if metric == "f1_macro":
        everything = np.arange(len(truth))[None, :]
        return float(
            resampled_f1_macro(truth, outputs.argmax(axis=1), outputs.shape[1], everything)[0]
        )
    terms = row_terms(metric, truth, outputs)
    if terms is None:
        raise ValueError(f"unknown metric '{metric}'")
    mean = float(terms.mean()) if len(terms) else float("nan")
    return float(np.sqrt(mean)) if metric == "rmse" else mean


def resampled_f1_macro(
    truth: np.ndarray, predicted: np.ndarray, n_classes: int, picks: np.ndarray
) -> np.ndarray:
    """Macro F1 (as `classification_metrics`) of each resample, a row of `picks` (row
    indices, repeats allowed), from its confusion counts — one `np.bincount` per count over
    all resamples at once, each resample's classes offset into its own block."""
    picks = np.atleast_2d(picks)
    resamples = picks.shape[0]
    y = np.asarray(truth, dtype=np.int64)[picks]
    p = np.asarray(predicted, dtype=np.int64)[picks]
    offset = (np.arange(resamples, dtype=np.int64) * n_classes)[:, None]
    size = resamples * n_classes
    right = y == p
    true_pos = np.bincount((y + offset)[right], minlength=size).reshape(resamples, n_classes)
    counted = np.bincount((p + offset).ravel(), minlength=size).reshape(resamples, n_classes)
    actual = np.bincount((y + offset).ravel(), minlength=size).reshape(resamples, n_classes)
    denominator = counted + actual  # = 2·tp + fp + fn
    f1 = np.divide(
        2.0 * true_pos, denominator, out=np.zeros(denominator.shape), where=denominator > 0
    )
    return np.asarray(f1.mean(axis=1), dtype=np.float64)


#: Positive-class logits beyond ±this are one bin at each end of the AUC histograms: the
#: probabilities are clipped to [_EPS, 1] first, so no logit lies beyond ±16.12.
_LOGIT_RANGE = 16.2


class MetricAccumulator:
    """The metrics of one split added up batch by batch, in memory that does not grow with
    the split.

    Data-parallel workers and streamed evaluation see a split in pieces; keeping every
    output to compute the metrics at the end would hold O(rows). The whole state is one
    float64 vector (`state`) of counts, sums and, for binary tasks, histograms of the
    positive-class logit, so workers add their vectors (one all-reduce) and each then has
    the whole split's metrics. Accuracy, macro F1, log loss, RMSE, MAE and R² equal
    `classification_metrics` / `regression_metrics` on all the rows at once; binary ROC AUC
    is counted over the histogram's bins and lies within `auc_error_bound()` of the exact
    value (pairs in one bin count as ties).

    Targets are what `Preprocessor.encode_target` gives: class indices, or for regression
    `(y - center) / scale`; regression outputs are in the target's own units. `loss` is the
    training loss: log loss, or the mean squared error of the standardised target.
    """

    def __init__(
        self,
        n_classes: int | None,
        *,
        center: float = 0.0,
        scale: float = 1.0,
        auc_bins: int = 1 << 15,
    ) -> None:
        if n_classes is not None and n_classes < 2:
            raise ValueError(f"a classification needs at least 2 classes, got {n_classes}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.n_classes = n_classes
        self.center = float(center)
        self.scale = float(scale)
        self.auc_bins = auc_bins if n_classes == 2 else 0
        # classification: n, correct, log-loss sum, then per class true positives,
        # predictions and actual counts, then the positive and negative logit histograms;
        # regression: n, Σ residual², Σ |residual|, Σ z, Σ z² (z the standardised target).
        size = 3 + 3 * n_classes + 2 * self.auc_bins if n_classes is not None else 5
        self.state = np.zeros(size, dtype=np.float64)

    @property
    def rows(self) -> int:
        """Rows added so far."""
        return int(self.state[0])

    def update(self, outputs: np.ndarray, targets: np.ndarray) -> None:
        """Add a batch: class probabilities (rows × classes) or predictions, and targets."""
        if self.n_classes is None:
            self._update_regression(np.asarray(outputs), np.asarray(targets))
        else:
            self._update_classification(np.asarray(outputs), np.asarray(targets))

    def merge(self, state: np.ndarray) -> None:
        """Add another accumulator's `state` (of the same task): the rows it has seen."""
        if state.shape != self.state.shape:
            raise ValueError(f"state of shape {state.shape}, expected {self.state.shape}")
        self.state += state

    def _update_classification(self, probabilities: np.ndarray, targets: np.ndarray) -> None:
        k = int(self.n_classes or 0)
        y = targets.astype(np.int64).reshape(-1)
        if len(y) == 0:
            return
        predicted = probabilities.argmax(axis=1)
        probs = np.clip(probabilities, _EPS, 1.0)
        probs = probs / probs.sum(axis=1, keepdims=True)
        s = self.state
        s[0] += len(y)
        s[1] += np.count_nonzero(predicted == y)
        s[2] -= np.log(probs[np.arange(len(y)), y]).sum()
        s[3 : 3 + k] += np.bincount(y[predicted == y], minlength=k)
        s[3 + k : 3 + 2 * k] += np.bincount(predicted, minlength=k)
        s[3 + 2 * k : 3 + 3 * k] += np.bincount(y, minlength=k)
        if self.auc_bins:
            logit = np.log(probs[:, 1]) - np.log(probs[:, 0])
            position = (logit + _LOGIT_RANGE) / (2 * _LOGIT_RANGE) * self.auc_bins
            bins = np.clip(position.astype(np.int64), 0, self.auc_bins - 1)
            start = 3 + 3 * k
            positive = y == 1
            s[start : start + self.auc_bins] += np.bincount(bins[positive], minlength=self.auc_bins)
            s[start + self.auc_bins :] += np.bincount(bins[~positive], minlength=self.auc_bins)

    def _update_regression(self, predictions: np.ndarray, targets: np.ndarray) -> None:
        z = targets.astype(np.float64).reshape(-1)
        if len(z) == 0:
            return
        residual = predictions.astype(np.float64).reshape(-1) - (z * self.scale + self.center)
        s = self.state
        s[0] += len(z)
        s[1] += float(np.sum(residual**2))
        s[2] += float(np.sum(np.abs(residual)))
        s[3] += float(np.sum(z))
        s[4] += float(np.sum(z**2))

    def _histograms(self) -> tuple[np.ndarray, np.ndarray]:
        start = 3 + 3 * int(self.n_classes or 0)
        return (
            self.state[start : start + self.auc_bins],
            self.state[start + self.auc_bins :],
        )

    def auc_error_bound(self) -> float:
        """How far the ROC AUC of `result()` can be from the exact one: half the share of
        positive–negative pairs that fall in one bin (0 where the task has no AUC)."""
        if not self.auc_bins:
            return 0.0
        positive, negative = self._histograms()
        pairs = positive.sum() * negative.sum()
        return float(0.5 * np.dot(positive, negative) / pairs) if pairs else 0.0

    def result(self) -> dict[str, float]:
        """The metrics of every row added (and merged) so far."""
        n = self.state[0]
        nan = float("nan")
        if self.n_classes is None:
            _, ss_res, abs_sum, z_sum, z2_sum = self.state
            ss_tot = (z2_sum - z_sum**2 / n) * self.scale**2 if n else 0.0
            if n < 2:
                r2 = nan
            elif ss_tot <= 1e-12 * max(z2_sum * self.scale**2, 1e-300):
                r2 = 1.0 if ss_res == 0.0 else 0.0
            else:
                r2 = 1.0 - ss_res / ss_tot
            return {
                "rmse": float(np.sqrt(ss_res / n)) if n else nan,
                "mae": float(abs_sum / n) if n else nan,
                "r2": float(r2),
                "loss": float(ss_res / self.scale**2 / n) if n else nan,
            }
        k = self.n_classes
        true_pos = self.state[3 : 3 + k]
        denominator = self.state[3 + k : 3 + 2 * k] + self.state[3 + 2 * k : 3 + 3 * k]
        f1 = np.divide(2.0 * true_pos, denominator, out=np.zeros(k), where=denominator > 0)
        log_loss = float(self.state[2] / n) if n else nan
        result = {
            "accuracy": float(self.state[1] / n) if n else nan,
            "f1_macro": float(f1.mean()),
            "log_loss": log_loss,
        }
        if self.auc_bins:
            positive, negative = self._histograms()
            pairs = positive.sum() * negative.sum()
            below = np.cumsum(negative) - negative  # negatives in lower bins
            ordered = np.dot(positive, below) + 0.5 * np.dot(positive, negative)
            result["roc_auc"] = float(ordered / pairs) if pairs else nan
        result["loss"] = log_loss
        return result
