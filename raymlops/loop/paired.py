"""Paired comparison of two models scored on the same rows: is the candidate not worse than
the champion by more than a margin, with a stated confidence?

Both models predict the same rows, so their errors are correlated; comparing two separate
metric values (or two independent confidence intervals) throws that pairing away and needs
far more rows to see a real difference. Two paired tests:

- the **paired bootstrap** (any metric): resample the rows with replacement, compute the
  metric of both models on each resample, and take the percentile interval of the
  difference. Seeded, so the same rows give the same interval.
- **McNemar** (accuracy only): only the rows where exactly one model is right carry
  information. Given `d` such discordant rows of which the candidate wins `b`, `b` is
  binomial(d, p) and the accuracy difference is `d/n · (2p − 1)`; the exact (Clopper–Pearson)
  interval of `p` gives the interval of the difference, `scipy.stats.binomtest` the p-value
  of "equally accurate".

The difference is always oriented so that positive means the candidate is better (for a
lower-is-better metric, champion − candidate). The candidate passes when the lower end of the
two-sided interval at `confidence` is at least `-margin` (non-inferiority), or at least
`+margin` when an improvement is required. "At least" (to within 1e-12) is the same rule as
the held-out comparison's (`raymlops.loop.comparison`): a candidate identical to the
champion (interval [0, 0]) passes with a margin of 0 — it is not worse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["EPS", "PairedComparison", "mcnemar_comparison", "paired_bootstrap", "passes"]

Method = Literal["paired bootstrap", "McNemar"]
#: Slack of the pass rule `low ≥ required` (the held-out comparison uses the same).
EPS = 1e-12
#: Resamples scored per numpy call in the bootstrap (bounds its memory at ~chunk × rows).
_CHUNK = 64


@dataclass(frozen=True)
class PairedComparison:
    """The outcome of one paired test of candidate against champion on the same rows.

    `difference`, `low` and `high` are in metric units, oriented so that positive means the
    candidate is better; `required` is what `low` had to reach (−margin, or +margin when an
    improvement is required)."""

    method: Method
    metric: str
    rows: int
    candidate: float
    champion: float
    difference: float
    low: float
    high: float
    confidence: float
    required: float
    passed: bool
    p_value: float | None = None
    resamples: int | None = None
    seed: int | None = None
    discordant: tuple[int, int] | None = None  # McNemar: (candidate right only, champion …)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line: what was compared, on how many rows, the difference and its interval."""
        pct = f"{self.confidence:.0%}"
        extra = ""
        if self.discordant is not None:
            extra = f", discordant {self.discordant[0]}/{self.discordant[1]}"
        if self.p_value is not None:
            extra += f", p={self.p_value:.3g}"
        return (
            f"{self.method} on {self.rows} fresh rows: {self.metric} candidate "
            f"{self.candidate:.4f} vs champion {self.champion:.4f}, difference "
            f"{self.difference:+.4f} (better > 0), {pct} interval [{self.low:+.4f}, "
            f"{self.high:+.4f}]{extra}; needs lower end ≥ {self.required:+.4f}"
        )


def passes(low: float, required: float) -> bool:
    """The one pass rule of both comparisons: the candidate's lower end (or, on held-out
    rows, its oriented value) reaches `required`, to within `EPS` — so an identical
    candidate passes a margin of 0 (not worse) on either path."""
    return low >= required - EPS


def _check(confidence: float, rows: int) -> None:
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must lie in [0.5, 1), got {confidence}")
    if rows < 1:
        raise ValueError("a paired comparison needs at least one row")


def paired_bootstrap(
    metric: Callable[[np.ndarray], tuple[float, float]],
    rows: int,
    *,
    name: str,
    higher_is_better: bool,
    margin: float,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    batch_metric: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> PairedComparison:
    """Paired percentile bootstrap of the metric difference.

    `metric(indices)` returns (candidate, champion) on the rows `indices` (with repeats).
    `batch_metric(index_matrix)`, when given, does the same for a (resamples × rows) matrix
    at once, which is how the decomposable metrics (means of per-row values) stay fast.
    `margin` is the allowed shortfall (≥ 0), or with a negative value the improvement the
    candidate must show (−margin). Deterministic for a given `seed`.
    """
    _check(confidence, rows)
    if resamples < 100:
        raise ValueError(f"use at least 100 resamples, got {resamples}")
    sign = 1.0 if higher_is_better else -1.0
    ours, theirs = metric(np.arange(rows))
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        count = min(_CHUNK, resamples - start)
        picks = rng.integers(0, rows, size=(count, rows))
        if batch_metric is not None:
            a, b = batch_metric(picks)
        else:
            pairs = [metric(p) for p in picks]
            a = np.array([p[0] for p in pairs])
            b = np.array([p[1] for p in pairs])
        diffs[start : start + count] = sign * (a - b)
    finite = diffs[np.isfinite(diffs)]  # AUC is undefined on a one-class resample
    alpha = 1.0 - confidence
    if len(finite) < resamples // 2:
        low = high = math.nan
    else:
        low, high = (float(v) for v in np.quantile(finite, [alpha / 2, 1 - alpha / 2]))
    difference = sign * (ours - theirs)
    required = -margin
    passed = math.isfinite(low) and passes(low, required)
    return PairedComparison(
        "paired bootstrap",
        name,
        rows,
        float(ours),
        float(theirs),
        float(difference),
        low,
        high,
        confidence,
        required,
        passed,
        resamples=resamples,
        seed=seed,
    )


def mcnemar_comparison(
    candidate_right: np.ndarray,
    champion_right: np.ndarray,
    *,
    margin: float,
    confidence: float = 0.95,
) -> PairedComparison:
    """McNemar's exact test on the rows where exactly one model is right, with the exact
    conditional interval of the accuracy difference (see the module docstring)."""
    from scipy.stats import binomtest

    ours = np.asarray(candidate_right, dtype=bool)
    theirs = np.asarray(champion_right, dtype=bool)
    n = len(ours)
    _check(confidence, n)
    if len(theirs) != n:
        raise ValueError("both models must be scored on the same rows")
    b = int(np.sum(ours & ~theirs))
    c = int(np.sum(~ours & theirs))
    d = b + c
    if d == 0:
        low = high = 0.0
        p_value = 1.0
    else:
        test = binomtest(b, d, 0.5)
        p_value = float(test.pvalue)
        interval = test.proportion_ci(confidence_level=confidence, method="exact")
        low = d / n * (2 * float(interval.low) - 1)
        high = d / n * (2 * float(interval.high) - 1)
    required = -margin
    return PairedComparison(
        "McNemar",
        "accuracy",
        n,
        float(ours.mean()),
        float(theirs.mean()),
        (b - c) / n,
        low,
        high,
        confidence,
        required,
        passes(low, required),
        p_value=p_value,
        discordant=(b, c),
    )
