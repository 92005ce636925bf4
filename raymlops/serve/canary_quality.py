"""Canary quality on delayed labels: the prediction log joined to a labels feed by request
id, champion and challenger compared on the requests each answered.

Errors and latency are known the moment a request is answered; whether the answer was right
is known only when its label arrives (a fraud confirmed, a delivery late). The labels feed is
a Parquet/CSV file or URI of `request_id` + label. Each logged row gets a loss — log loss of
the label's probability for classification (0/1 error when the log has no probabilities),
squared error for regression (compared as RMSE) — and the two samples (different requests,
so unpaired) are compared by a seeded bootstrap of the difference of their metric. The
challenger is worse when the one-sided lower bound of (challenger − champion) at the stated
confidence exceeds the margin: a difference that noise cannot explain, not a lucky draw.

The coordinator runs this every quality interval, so its cost is bounded: only the log
columns the losses need are read (`LOG_COLUMNS`), labels are kept only for the requests
being judged, each side is a seeded sample of at most `QualityPolicy.max_rows` labelled rows
(said in the verdict), the bootstrap draws at most `_MAX_DRAWS` indices at once, and above
`QualityPolicy.bootstrap_rows` rows a side the normal approximation of the difference (the
delta method for RMSE) replaces the bootstrap: with thousands of rows the two agree and the
approximation costs one pass.

Pure pyarrow/numpy (no Ray): the coordinator runs it in a thread; the unit tests call it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymlops.core.errors import DataError
from raymlops.serve.canary import CHALLENGER, CHAMPION, SHADOW

__all__ = [
    "LOG_COLUMNS",
    "QualityPolicy",
    "QualityVerdict",
    "compare_losses",
    "judge_quality",
    "log_columns",
    "read_labels",
    "row_losses",
]

#: Probabilities are clipped here before the log (a 0 would make the loss infinite).
_EPS = 1e-15
#: Bootstrap resamples drawn at once, at most (fewer for large samples: see _MAX_DRAWS).
_CHUNK = 100
#: Bootstrap indices drawn at once per side (8 MB of int64): bounds the bootstrap's memory.
_MAX_DRAWS = 1_000_000
#: The prediction log's columns the judge reads (plus every `proba_<class>` column).
LOG_COLUMNS = ("request_id", "model_version", "role", "error", "prediction")
_LABEL = "__label__"


@dataclass(frozen=True)
class QualityPolicy:
    """When the challenger's quality counts as worse (see ServeCanaryConfig)."""

    margin: float = 0.0
    confidence: float = 0.95
    min_rows: int = 30
    resamples: int = 2000
    seed: int = 0
    #: Labelled rows per side judged at most: more are a seeded sample of this many.
    max_rows: int = 100_000
    #: Above this many rows on either side the normal approximation replaces the bootstrap.
    bootstrap_rows: int = 5_000


@dataclass
class QualityVerdict:
    """The comparison of champion and challenger on labelled requests.

    `difference` is challenger − champion in the metric (a loss: positive = challenger
    worse); `low`/`high` bound it at `confidence` each side (one-sided bounds of the
    bootstrap); `worse` when `low` exceeds `margin`. `judged` is False when either side has
    fewer than the policy's labelled rows (then nothing is decided on quality)."""

    metric: str
    champion_rows: int
    challenger_rows: int
    champion: float | None
    challenger: float | None
    difference: float | None
    low: float | None
    high: float | None
    confidence: float
    margin: float
    judged: bool
    worse: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def log_columns(names: Iterable[str]) -> list[str]:
    """Which of a prediction log's columns `names` the judge needs (`LOG_COLUMNS` and the
    class probabilities): reading only these keeps the periodic check light."""
    return [n for n in names if n in LOG_COLUMNS or n.startswith("proba_")]


def read_labels(uri: str, label_column: str, keep: pa.Array | None = None) -> pa.Table:
    """The labels feed as (request_id string, `__label__`): rows without a request id or a
    label dropped, the last label given for a request wins (a correction replaces the first
    answer). Read batch by batch keeping two columns, and with `keep` (request ids) only the
    labels of those requests: memory follows the requests judged, not the feed."""
    from raymlops.data.dataset import iter_tables

    parts: list[pa.Table] = []
    for batch in iter_tables(uri):
        for column in ("request_id", label_column):
            if column not in batch.column_names:
                raise DataError(
                    f"labels {uri} have no column '{column}' (columns: "
                    f"{', '.join(batch.column_names[:20])}); they need request_id and the label"
                )
        batch = batch.select(["request_id", label_column]).rename_columns(["request_id", _LABEL])
        batch = batch.set_column(0, "request_id", batch.column("request_id").cast(pa.string()))
        valid = pc.and_(pc.is_valid(batch.column("request_id")), pc.is_valid(batch.column(_LABEL)))
        if keep is not None:
            valid = pc.and_(valid, pc.is_in(batch.column("request_id"), value_set=keep))
        parts.append(batch.filter(valid))
    if not parts:
        return pa.table({"request_id": pa.array([], pa.string()), _LABEL: pa.array([])})
    table = pa.concat_tables(parts)
    ids = table.column("request_id").to_numpy(zero_copy_only=False)
    _, last = np.unique(ids[::-1], return_index=True)
    return table.take(pa.array(np.sort(len(ids) - 1 - last)))


def row_losses(rows: pa.Table) -> tuple[str, np.ndarray]:
    """(metric, one loss per row) of log rows joined to their labels (`__label__`).

    Classification (a string `prediction`): `log_loss` when the log has `proba_<class>`
    columns, else `error_rate` (0/1); a label outside the classes counts as probability 0.
    Regression: squared error, compared as `rmse`."""
    prediction = rows.column("prediction")
    if pa.types.is_string(prediction.type) or pa.types.is_large_string(prediction.type):
        labels = rows.column(_LABEL).cast(pa.string()).to_numpy(zero_copy_only=False)
        classes = [c.removeprefix("proba_") for c in rows.column_names if c.startswith("proba_")]
        if classes:
            probs = np.column_stack(
                [rows.column(f"proba_{c}").to_numpy(zero_copy_only=False) for c in classes]
            ).astype(np.float64)
            index = {c: i for i, c in enumerate(classes)}
            position = np.array([index.get(str(label), -1) for label in labels], dtype=np.int64)
            picked = np.where(
                position >= 0, probs[np.arange(len(labels)), np.maximum(position, 0)], 0.0
            )
            return "log_loss", -np.log(np.clip(picked, _EPS, 1.0))
        predicted = prediction.to_numpy(zero_copy_only=False)
        return "error_rate", (predicted != labels).astype(np.float64)
    truth = rows.column(_LABEL).cast(pa.float64()).to_numpy(zero_copy_only=False)
    predicted = prediction.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return "rmse", (predicted - truth) ** 2


def _statistic(metric: str, losses: np.ndarray) -> np.ndarray:
    """The metric of each row of `losses` (resamples × rows): RMSE from squared errors, else
    the mean loss."""
    means: np.ndarray = np.asarray(losses.mean(axis=-1))
    return np.sqrt(means) if metric == "rmse" else means


def _bootstrap_bounds(
    metric: str, champion: np.ndarray, challenger: np.ndarray, policy: QualityPolicy
) -> tuple[float, float]:
    """One-sided bounds of (challenger − champion) by a seeded bootstrap; at most
    `_MAX_DRAWS` indices a side are drawn at once (small samples: `_CHUNK` resamples a
    draw, so their draws and bounds do not depend on the memory bound)."""
    n0, n1 = len(champion), len(challenger)
    rng = np.random.default_rng(policy.seed)
    chunk = max(1, min(_CHUNK, _MAX_DRAWS // max(n0, n1)))
    diffs: list[np.ndarray] = []
    for start in range(0, policy.resamples, chunk):
        k = min(chunk, policy.resamples - start)
        a = champion[rng.integers(0, n0, size=(k, n0))]
        b = challenger[rng.integers(0, n1, size=(k, n1))]
        diffs.append(_statistic(metric, b) - _statistic(metric, a))
    spread = np.concatenate(diffs)
    return (
        float(np.quantile(spread, 1.0 - policy.confidence)),
        float(np.quantile(spread, policy.confidence)),
    )


def _normal_bounds(
    metric: str, champion: np.ndarray, challenger: np.ndarray, confidence: float
) -> tuple[float, float]:
    """One-sided bounds of (challenger − champion) by the normal approximation: the
    standard error of each mean (for RMSE, by the delta method: se(√m) = se(m) / 2√m)."""

    def value_and_se(losses: np.ndarray) -> tuple[float, float]:
        mean = float(losses.mean())
        se = float(losses.std(ddof=1)) / np.sqrt(len(losses))
        if metric == "rmse":
            root = np.sqrt(mean)
            return float(root), se / (2.0 * root) if root > 0 else 0.0
        return mean, se

    value0, se0 = value_and_se(champion)
    value1, se1 = value_and_se(challenger)
    z = NormalDist().inv_cdf(confidence) * float(np.hypot(se0, se1))
    difference = value1 - value0
    return difference - z, difference + z


def _sample(losses: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most `limit` of the losses, a seeded sample without replacement."""
    if len(losses) <= limit:
        return losses
    return losses[np.sort(rng.choice(len(losses), size=limit, replace=False))]


def compare_losses(
    metric: str, champion: np.ndarray, challenger: np.ndarray, policy: QualityPolicy
) -> QualityVerdict:
    """Compare two unpaired samples of per-row losses by a seeded bootstrap of the
    difference of their metric (challenger − champion); each side is first cut to a seeded
    sample of `policy.max_rows`, and above `policy.bootstrap_rows` rows a side the normal
    approximation gives the bounds (the reason says which, and any sampling)."""
    total0, total1 = len(champion), len(challenger)
    if min(total0, total1) < policy.min_rows:
        return QualityVerdict(
            metric, total0, total1, None, None, None, None, None, policy.confidence,
            policy.margin, False, False,
            f"quality not judged: {total0} labelled champion and {total1} labelled challenger "
            f"rows (each needs {policy.min_rows})",
        )  # fmt: skip
    sampler = np.random.default_rng([policy.seed, 1])  # not the bootstrap's stream
    champion = _sample(champion, policy.max_rows, sampler)
    challenger = _sample(challenger, policy.max_rows, sampler)
    n0, n1 = len(champion), len(challenger)
    value0 = float(_statistic(metric, champion))
    value1 = float(_statistic(metric, challenger))
    if max(n0, n1) > policy.bootstrap_rows:
        low, high = _normal_bounds(metric, champion, challenger, policy.confidence)
        method = "normal approximation"
    else:
        low, high = _bootstrap_bounds(metric, champion, challenger, policy)
        method = f"bootstrap of {policy.resamples}"
    difference = value1 - value0
    worse = low > policy.margin
    sampled = (
        f"; a seeded sample of {policy.max_rows} rows a side of {total0} champion and "
        f"{total1} challenger rows"
        if (n0, n1) != (total0, total1)
        else ""
    )
    reason = (
        f"{metric} {value1:.4f} on {n1} labelled challenger rows vs {value0:.4f} on {n0} "
        f"champion rows: difference {difference:+.4f}, {policy.confidence:.0%} lower bound "
        f"{low:+.4f} {'>' if worse else '<='} margin {policy.margin:g} ({method}{sampled})"
    )
    return QualityVerdict(
        metric, total0, total1, value0, value1, difference, low, high, policy.confidence,
        policy.margin, True, worse, reason,
    )  # fmt: skip


def _rows_of(log: pa.Table, version: int, roles: Iterable[str]) -> pa.Table:
    keep = pc.and_(
        pc.equal(log.column("model_version"), pa.scalar(version, pa.int64())),
        pc.is_in(log.column("role"), value_set=pa.array(list(roles), pa.string())),
    )
    if "error" in log.column_names:  # a failed request has no prediction to judge
        keep = pc.and_(keep, pc.is_null(log.column("error")))
    return log.filter(keep)


def judge_quality(
    log: pa.Table, labels: pa.Table, champion: int, challenger: int, policy: QualityPolicy
) -> QualityVerdict:
    """Join the prediction log's rows of the champion (answered as champion) and of the
    challenger (answered, or shadowed) to the labels by request id and compare them.

    A request of several rows logs them under one request id; one label per request id
    labels each of its rows (the feed labels requests, as the log's id names them)."""
    if log.num_rows == 0 or "prediction" not in log.column_names:
        return compare_losses("loss", np.zeros(0), np.zeros(0), policy)
    metric = "loss"
    losses: list[np.ndarray] = []
    for version, roles in ((champion, [CHAMPION]), (challenger, [CHALLENGER, SHADOW])):
        rows = _rows_of(log, version, roles).join(labels, "request_id", join_type="inner")
        if rows.num_rows:
            metric, values = row_losses(rows)
        else:
            values = np.zeros(0)
        losses.append(values)
    return compare_losses(metric, losses[0], losses[1], policy)
