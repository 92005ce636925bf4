"""The candidate against the champion (`gate.champion`): which metric, what margin, and on
which rows.

With fresh labelled rows that neither model trained on (retraining's held-out slice of
its recent rows, `raymlops.loop.fresh`) both models are scored on them and compared with a
paired test (`raymlops.loop.paired`); without, the two metric values on the candidate's
held-out rows are compared, as before, and the record says so. The default metric fits the
task (`raymlops.model.metrics.comparison_metric`). A model's first version has no champion to
compare with: its comparison is skipped as "first version: thresholds only".

Two rules keep the paired test honest where its metric alone would mislead:

- **the guard** (`gate.champion.guard`): on fresh rows a second paired test, by default ROC
  AUC for a binary classifier compared on log loss, must show the candidate not worse than
  the champion beyond `guard_margin`. With labels flipped at random (label noise in the
  recent rows, which the fresh slice shares) log loss on those labels rewards a less
  confident model, so a candidate trained on the noise wins by a wide, "significant" margin
  while it ranks the rows worse. ROC AUC keeps the clean order under noise that does not
  depend on the row (with balanced classes noisy AUC − ½ = (1 − 2ρ)(clean AUC − ½)): the
  difference shrinks and its interval widens, so a candidate must show on the noisy labels
  that it ranks no worse, which a noise-trained one cannot.
- **too few rows** (`gate.champion.min_rows`): fewer usable fresh rows than this fall back
  to the held-out rows (as below `min_fresh_rows`); fewer held-out rows, and no comparison
  is made: the check fails as inconclusive (champion kept). The ROC AUC guard also needs
  `GUARD_MIN_CLASS_ROWS` fresh rows of each class, else it fails as inconclusive.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from raymlops.core.config import GATE_METRICS, ChampionComparison, GateConfig
from raymlops.core.errors import ConfigError
from raymlops.loop.gate_result import CheckResult, _fmt
from raymlops.loop.paired import PairedComparison, passes
from raymlops.loop.scoring import Scored, check_metric_for_task, known_rows, score, task_metrics

if TYPE_CHECKING:
    import pandas as pd

    from raymlops.model.predictor import Predictor

__all__ = ["FIRST_VERSION", "GateRows", "champion_check"]


class GateRows(Protocol):
    """What the comparison reads of a gate run: the gate config, the candidate, its
    held-out rows with their label column, and its metrics on them."""

    gate: GateConfig
    candidate: Predictor
    frame: pd.DataFrame
    label: str
    metrics: dict[str, float]


FIRST_VERSION = "first version: thresholds only"


def _comparison_metric(ev: GateRows) -> str:
    """gate.champion.metric, 'auto' resolved for the task (`comparison_metric`)."""
    from raymlops.model.metrics import comparison_metric

    metric = ev.gate.champion.metric if ev.gate.champion is not None else "auto"
    if metric == "auto":
        classes = ev.candidate.preprocessor.classes
        metric = comparison_metric(len(classes) if classes is not None else None)
    check_metric_for_task(metric, ev.metrics, "gate.champion.metric")
    return metric


def _improvement_needed(comparison: ChampionComparison, metric: str, champion: float) -> float:
    """How much better than the champion the candidate must be, in metric units (negative:
    how much worse it may be); for rmse and mae the margin is a share of the champion's."""
    if comparison.min_improvement is not None:
        delta = comparison.min_improvement
    else:
        delta = -(comparison.max_regression or 0.0)
    if metric in _RELATIVE_MARGIN and math.isfinite(champion):
        delta *= abs(champion)
    return delta


_RELATIVE_MARGIN = frozenset({"rmse", "mae"})


def _rule_text(comparison: ChampionComparison, metric: str) -> str:
    rel = " of the champion's" if metric in _RELATIVE_MARGIN else ""
    if comparison.min_improvement is not None:
        return f"beat by {_fmt(comparison.min_improvement)}{rel}"
    return f"worse by ≤ {_fmt(comparison.max_regression or 0.0)}{rel}"


def champion_check(
    ev: GateRows,
    champion: Predictor | None,
    skip_reason: str,
    fresh: pd.DataFrame | None = None,
    fresh_note: str = "",
) -> tuple[list[CheckResult], dict[str, Any] | None, dict[str, Any] | None]:
    """The candidate against the champion (gate.champion): a paired test on `fresh`
    labelled rows neither model trained on when there are some, else the two metric values
    on the candidate's held-out rows. Returns the checks, the champion's figures and what
    the comparison was based on (recorded with the gate)."""
    gate, metrics = ev.gate, ev.metrics
    task = ev.candidate.preprocessor.task
    if gate.champion is None:
        return [], None, {"basis": "off", "note": "gate.champion is null"}
    comparison = gate.champion
    metric = _comparison_metric(ev)
    rule = _rule_text(comparison, metric)
    reason = skip_reason
    if champion is not None and champion.task != task:
        reason = f"champion is a {champion.task} model"
    if champion is None or champion.task != task:
        kind = "first version" if skip_reason == FIRST_VERSION else "none"
        return (
            [CheckResult("champion", metric, "skipped", metrics[metric], rule, reason)],
            None,
            {"basis": kind, "note": reason},
        )
    usable, fresh_note, dropped = _usable_fresh(ev, champion, fresh, fresh_note)
    if usable is not None:
        return _paired_check(ev, champion, usable, metric, fresh_note, dropped)
    rows, unknown = known_rows(ev.frame, ev.label, champion)
    if not len(rows):
        reason = f"every held-out row's label is a class the champion never saw ({unknown})"
        return (
            [CheckResult("champion", metric, "skipped", metrics[metric], rule, reason)],
            None,
            {"basis": "none", "note": reason},
        )
    if len(rows) < comparison.min_rows:
        note = fresh_note or "no fresh labelled rows"
        return _inconclusive(ev, metric, len(rows), "held-out", note, dropped)
    theirs = score(champion, rows, ev.label)
    their_metrics = task_metrics(champion, theirs.y, theirs.outputs)
    higher = GATE_METRICS[metric]
    delta = _improvement_needed(comparison, metric, their_metrics[metric])
    required = their_metrics[metric] + delta if higher else their_metrics[metric] - delta
    ours = metrics[metric]
    if unknown:  # both models on the same rows: those whose class the champion knows
        mine = score(ev.candidate, rows, ev.label)
        ours = task_metrics(ev.candidate, mine.y, mine.outputs)[metric]
    ok = passes(ours, required) if higher else passes(-ours, -required)  # one rule, both paths
    version = champion.metadata.get("version")
    champion_info = {
        "version": version,
        "metrics": their_metrics,
        "metric": metric,
        "required": required,
    }
    note = fresh_note or "no fresh labelled rows"
    compared = {
        "basis": "held-out",
        "note": f"{note}: compared on the candidate's held-out rows ({len(rows)}), "
        "which the champion may have trained on; no paired test",
        "rows": len(rows),
        **dropped,
    }
    if unknown:
        compared["unknown_label_rows"] = len(ev.frame) - len(rows)
        compared["unknown_labels"] = unknown
        compared["note"] += (
            f"; {len(ev.frame) - len(rows)} rows of classes the champion never saw "
            f"({', '.join(unknown[:5])}) left out of both models' scores"
        )
    check = CheckResult(
        "champion",
        metric,
        "passed" if ok and not math.isnan(ours) else "failed",
        ours,
        f"{'≥' if higher else '≤'} {_fmt(required)} ({rule})",
        f"champion v{version} {_fmt(their_metrics[metric])}",
    )
    return [check], champion_info, compared


def _usable_fresh(
    ev: GateRows, champion: Predictor, fresh: pd.DataFrame | None, note: str
) -> tuple[pd.DataFrame | None, str, dict[str, Any]]:
    """The fresh rows the paired test can use: labelled, and of a class both models were
    trained on (rows of a class one model never saw are left out and counted: neither model
    can be scored fairly on them). Fewer than `gate.champion.min_fresh_rows` such rows: None,
    with a note saying why, and the comparison falls back to the held-out rows."""
    if fresh is None or not len(fresh):
        return None, note, {}
    labelled = fresh[fresh[ev.label].notna()].reset_index(drop=True)
    rows, unknown = known_rows(labelled, ev.label, ev.candidate, champion)
    dropped: dict[str, Any] = {"fresh_rows_given": len(fresh)}
    parts = []
    if len(labelled) < len(fresh):
        dropped["fresh_unlabelled"] = len(fresh) - len(labelled)
        parts.append(f"{len(fresh) - len(labelled)} unlabelled")
    if unknown:
        dropped["unknown_label_rows"] = len(labelled) - len(rows)
        dropped["unknown_labels"] = unknown
        parts.append(
            f"{len(labelled) - len(rows)} of a class one model never saw "
            f"({', '.join(unknown[:5])}), scored by neither"
        )
    left_out = f" ({'; '.join(parts)} left out)" if parts else ""
    assert ev.gate.champion is not None
    # Below either floor the held-out rows are compared instead: more fresh rows must never
    # make the decision worse (min_rows above min_fresh_rows would refuse 50 fresh rows as
    # inconclusive while 5 fell back to thousands of held-out ones).
    floor = max(ev.gate.champion.min_fresh_rows, ev.gate.champion.min_rows)
    if len(rows) < floor:
        which = "min_fresh_rows" if floor == ev.gate.champion.min_fresh_rows else "min_rows"
        return (
            None,
            f"{len(rows)} usable fresh rows of {len(fresh)}{left_out}, below "
            f"gate.champion.{which} ({floor})",
            dropped,
        )
    base = note or f"{len(rows)} fresh labelled rows neither model trained on"
    return rows, base + left_out, dropped


def _paired_check(
    ev: GateRows,
    champion: Predictor,
    rows: pd.DataFrame,
    metric: str,
    note: str,
    dropped: dict[str, Any],
) -> tuple[list[CheckResult], dict[str, Any], dict[str, Any]]:
    """Both models on the usable fresh `rows` (`_usable_fresh`), compared with a paired
    test (`raymlops.loop.paired`) on `metric` and, when one applies (`guard_metric`), on
    the guard metric: the candidate passes only if it passes both."""
    comparison = ev.gate.champion
    assert comparison is not None
    ours, theirs = score(ev.candidate, rows, ev.label), score(champion, rows, ev.label)
    their_metrics = task_metrics(champion, theirs.y, theirs.outputs)
    our_metrics = task_metrics(ev.candidate, ours.y, ours.outputs)
    delta = _improvement_needed(comparison, metric, their_metrics[metric])
    result = _paired_test(ev, champion, metric, (ours, theirs), -delta, comparison.test)
    guard_name = _guard_metric(ev, metric)
    guard = None
    guard_short = _guard_too_few(guard_name, ours.y, ev.candidate.preprocessor.classes)
    if guard_name is not None and guard_short is None:
        margin = comparison.guard_margin
        if guard_name in _RELATIVE_MARGIN and math.isfinite(their_metrics[guard_name]):
            margin *= abs(their_metrics[guard_name])
        guard = _paired_test(ev, champion, guard_name, (ours, theirs), margin, "auto")
    version = champion.metadata.get("version")
    champion_info = {
        "version": version,
        "metrics": their_metrics,
        "metric": metric,
        "required": result.required,
        "fresh_metrics": our_metrics,
    }
    summary = result.describe()
    if guard is not None:
        summary += f"; guard: {guard.describe()}"
    elif guard_short is not None:
        summary += f"; guard: {guard_short}"
    basis = {
        "basis": "fresh",
        "note": note,
        "rows": len(rows),
        **dropped,
        "paired": result.to_dict(),
        "summary": summary,
    }
    checks = [_paired_result(result, version, len(rows))]
    if guard is not None:
        basis["guard"] = guard.to_dict()
        checks.append(_paired_result(guard, version, len(rows), guard=True))
    elif guard_name is not None and guard_short is not None:
        basis["guard"] = {"metric": guard_name, "inconclusive": True, "note": guard_short}
        checks.append(
            CheckResult(
                "champion",
                f"{guard_name} guard vs v{version} on {len(rows)} fresh rows",
                "failed",
                float("nan"),
                f"≥ {GUARD_MIN_CLASS_ROWS} rows of each class",
                guard_short,
            )
        )
    return checks, champion_info, basis


#: Rows of each class the ROC AUC guard needs: with fewer, its interval spans most of
#: [0, 1] (with none, AUC is undefined), and it could only ever fail without saying why.
GUARD_MIN_CLASS_ROWS = 10


def _guard_too_few(guard: str | None, y: np.ndarray, classes: list[str] | None) -> str | None:
    """Why the guard cannot judge these fresh rows (too few of a class for ROC AUC: a
    binary model with rare positives), or None when it can. The check then fails as
    inconclusive with this reason — the champion stays — rather than on a NaN."""
    if guard != "roc_auc":
        return None
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=2)
    rarest = int(np.argmin(counts))
    if counts[rarest] >= GUARD_MIN_CLASS_ROWS:
        return None
    name = classes[rarest] if classes is not None and rarest < len(classes) else str(rarest)
    return (
        f"inconclusive: {counts[rarest]} fresh rows of class '{name}', ROC AUC needs "
        f"≥ {GUARD_MIN_CLASS_ROWS} of each class; champion kept (more labelled rows, or "
        "gate.champion.guard: none)"
    )


def _paired_result(
    result: PairedComparison, version: Any, rows: int, guard: bool = False
) -> CheckResult:
    """The gate table's line of one paired test (the comparison's, or its guard's)."""
    role = " guard" if guard else ""
    return CheckResult(
        "champion",
        f"{result.metric}{role} vs v{version} on {rows} fresh rows ({result.method})",
        "passed" if result.passed else "failed",
        result.difference,
        f"{result.confidence:.0%} low ≥ {_fmt(result.required)}",
        f"difference {result.difference:+.4f}, interval [{result.low:+.4f}, {result.high:+.4f}]",
    )


def _guard_metric(ev: GateRows, metric: str) -> str | None:
    """gate.champion.guard resolved for the compared `metric`: 'auto' is roc_auc for a
    binary classifier compared on a probability score (log_loss, loss) — labels flipped at
    random reward a less confident model on those, while the order ROC AUC measures
    survives symmetric noise — and no guard otherwise; 'none' is no guard."""
    comparison = ev.gate.champion
    guard = comparison.guard if comparison is not None else "none"
    if guard == "none":
        return None
    if guard == "auto":
        classes = ev.candidate.preprocessor.classes
        binary = classes is not None and len(classes) == 2
        return "roc_auc" if binary and metric in _PROBABILITY_SCORES else None
    check_metric_for_task(guard, ev.metrics, "gate.champion.guard")
    if guard == metric:
        raise ConfigError(f"gate.champion.guard: '{guard}' is the compared metric itself")
    return guard


#: Metrics that score the predicted probabilities themselves (and so a model's confidence).
_PROBABILITY_SCORES = frozenset({"log_loss", "loss"})


def _inconclusive(
    ev: GateRows, metric: str, rows: int, basis: str, note: str, dropped: dict[str, Any]
) -> tuple[list[CheckResult], None, dict[str, Any]]:
    """Too few rows to compare on (fewer than gate.champion.min_rows): no comparison is
    made and the check fails — the champion stays, the candidate is not promoted."""
    assert ev.gate.champion is not None
    minimum = ev.gate.champion.min_rows
    reason = (
        f"inconclusive: {rows} {basis} rows, below gate.champion.min_rows ({minimum}); "
        "too few to compare, champion kept"
    )
    check = CheckResult(
        "champion", metric, "failed", ev.metrics[metric], f"≥ {minimum} rows", reason
    )
    compared = {
        "basis": basis,
        "inconclusive": True,
        "note": f"{note}: {reason}" if note else reason,
        "rows": rows,
        **dropped,
    }
    return [check], None, compared


def _paired_test(
    ev: GateRows,
    champion: Predictor,
    metric: str,
    scored: tuple[Scored, Scored],
    margin: float,
    test: str,
) -> PairedComparison:
    """One paired test of `metric` on the candidate's and the champion's `scored` rows:
    McNemar (test 'mcnemar', or 'auto' on accuracy), else the paired bootstrap, vectorised
    where the metric allows. `margin` as `paired_bootstrap` takes it."""
    from raymlops.loop.paired import mcnemar_comparison, paired_bootstrap
    from raymlops.model.metrics import metric_value, resampled_f1_macro, row_terms

    comparison = ev.gate.champion
    assert comparison is not None
    ours, theirs = scored
    if test == "auto":
        test = "mcnemar" if metric == "accuracy" else "bootstrap"
    if test == "mcnemar":
        return mcnemar_comparison(
            ours.predicted == ours.y,
            theirs.predicted == theirs.y,
            margin=margin,
            confidence=comparison.confidence,
        )
    a_truth, b_truth = _truth(ev.candidate, ours.y), _truth(champion, theirs.y)
    a_terms = row_terms(metric, a_truth, ours.outputs)
    b_terms = row_terms(metric, b_truth, theirs.outputs)

    def one(index: np.ndarray) -> tuple[float, float]:
        # Only the compared metric (not every metric, ROC AUC included, of both models).
        a = metric_value(metric, a_truth[index], ours.outputs[index])
        b = metric_value(metric, b_truth[index], theirs.outputs[index])
        return a, b

    batch = None
    if a_terms is not None and b_terms is not None:
        root = metric == "rmse"

        def batch(picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            a, b = a_terms[picks].mean(axis=1), b_terms[picks].mean(axis=1)
            return (np.sqrt(a), np.sqrt(b)) if root else (a, b)

    elif metric == "f1_macro":  # from confusion counts, every resample of a chunk at once
        a_classes, b_classes = ours.outputs.shape[1], theirs.outputs.shape[1]

        def batch(picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            a = resampled_f1_macro(a_truth, ours.predicted, a_classes, picks)
            return a, resampled_f1_macro(b_truth, theirs.predicted, b_classes, picks)

    return paired_bootstrap(
        one,
        len(a_truth),
        name=metric,
        higher_is_better=GATE_METRICS[metric],
        margin=margin,
        confidence=comparison.confidence,
        resamples=comparison.resamples,
        seed=ev.gate.seed,
        batch_metric=batch,
    )


def _truth(predictor: Predictor, y: np.ndarray) -> np.ndarray:
    """Encoded targets as `row_terms` takes them: class indices, or regression targets in
    their own units."""
    prep = predictor.preprocessor
    if prep.classes is not None:
        return y
    return np.asarray(prep.decode_regression(y.astype(np.float64)))
