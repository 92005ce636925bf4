"""What a monitoring run found: the `MonitorResult` (drift, KPIs per window, version and
role, performance on labelled rows) with its JSON form, and the time helpers it shares with
the pass that computes it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from raymlops.core.durations import DURATION, parse_duration
from raymlops.core.errors import DataError
from raymlops.monitor.drift import (
    DatasetDrift,
    DriftSettings,
    FeatureDrift,
)

# --------------------------------------------------------------------------- time


def parse_since(
    value: str | datetime | date | None, now: datetime | None = None
) -> datetime | None:
    """`--since`: a duration back from now (`2h`, `1d`), an ISO date (`2024-05-01`, midnight
    UTC) or an ISO date-time (UTC unless it names a zone); None for no lower bound."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    text = str(value).strip()
    if DURATION.match(text):
        return (now or datetime.now(timezone.utc)) - parse_duration(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(
            f"invalid --since '{value}' (expected a duration such as 2h or 1d, or an ISO "
            "date/time such as 2024-05-01 or 2024-05-01T12:00)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _to_us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


# --------------------------------------------------------------------------- result


@dataclass
class KpiRow:
    """Serving KPIs of one version and role, over the whole period (`window_start` None) or
    one time window."""

    version: int | None
    role: str
    window_start: datetime | None
    requests: int
    errors: int | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None

    @property
    def error_rate(self) -> float | None:
        """Share of the logged requests that failed, when the log has an `error` column."""
        if self.errors is None:
            return None
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "role": self.role,
            "window_start": _iso(self.window_start),
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
        }


@dataclass
class WindowMetrics:
    """Model performance on the labelled rows of one version in one time window
    (`window_start` None: the whole period)."""

    version: int | None
    window_start: datetime | None
    rows: int
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "window_start": _iso(self.window_start),
            "rows": self.rows,
            "metrics": {k: (v if math.isfinite(v) else None) for k, v in self.metrics.items()},
        }


@dataclass
class MonitorResult:
    """What `monitor` found. `drift_detected` is the dataset-level verdict (False when there
    is none: see `verdict`); `features` holds every feature's comparison, the prediction's
    included (role 'prediction')."""

    model_name: str
    version: int
    source: str
    since: datetime | None
    generated_at: datetime
    rows_read: int
    rows_compared: int
    period: tuple[datetime, datetime] | None
    features: list[FeatureDrift]
    dataset: DatasetDrift
    kpis: list[KpiRow]
    kpi_windows: list[KpiRow]
    performance: list[WindowMetrics]
    performance_windows: list[WindowMetrics]
    settings: DriftSettings
    window: str
    reference_rows: int
    prediction_reference: str = ""
    report_path: Path | str | None = None  # a URI when stored in an object store
    json_path: Path | str | None = None
    run_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: 'prediction-log' (requests served) or 'dataset' (rows given with --source).
    source_kind: str = "prediction-log"
    #: Rows the version's Predictor ran over for the prediction's drift (a dataset without
    #: predictions), None when the predictions came from the source.
    predicted_rows: int | None = None

    def compared(self) -> str:
        """Which rows were compared, in words: source, row count and sample."""
        is_log = self.source_kind == "prediction-log"
        what = "requests of the prediction log" if is_log else "rows of the dataset"
        text = f"{self.rows_compared} {what} {self.source} (of {self.rows_read} read)"
        if self.predicted_rows is not None:
            text += (
                f"; prediction by the version's Predictor on a uniform sample of "
                f"{self.predicted_rows} of them"
            )
        return text

    @property
    def drift_detected(self) -> bool:
        """True when the dataset drifts (enough features drift); False otherwise, including
        when there is no verdict."""
        return self.dataset.drifted is True

    @property
    def verdict(self) -> str:
        """'drift', 'no drift' or 'no verdict' (fewer than min_samples rows compared)."""
        if self.dataset.drifted is None:
            return "no verdict"
        return "drift" if self.dataset.drifted else "no drift"

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        return {
            "model": self.model_name,
            "version": self.version,
            "verdict": self.verdict,
            "drift_detected": self.drift_detected,
            "dataset": self.dataset.to_dict(),
            "source": self.source,
            "since": _iso(self.since),
            "generated_at": _iso(self.generated_at),
            "period": [_iso(self.period[0]), _iso(self.period[1])] if self.period else None,
            "rows_read": self.rows_read,
            "rows_compared": self.rows_compared,
            "reference_rows": self.reference_rows,
            "prediction_reference": self.prediction_reference,
            "source_kind": self.source_kind,
            "predicted_rows": self.predicted_rows,
            "compared": self.compared(),
            "settings": {
                "numeric_threshold": s.numeric_threshold,
                "categorical_threshold": s.categorical_threshold,
                "p_value": s.p_value,
                "min_samples": s.min_samples,
                "large_sample": s.large_sample,
                "drift_share": s.drift_share,
                "verdict": s.verdict,
                "features": {
                    k: {"method": r.method, "threshold": r.threshold} for k, r in s.features.items()
                },
                "window": self.window,
            },
            "features": [f.to_dict() for f in self.features],
            "kpis": [k.to_dict() for k in self.kpis],
            "kpi_windows": [k.to_dict() for k in self.kpi_windows],
            "performance": [p.to_dict() for p in self.performance],
            "performance_windows": [p.to_dict() for p in self.performance_windows],
            "report": str(self.report_path) if self.report_path else None,
            "json": str(self.json_path) if self.json_path else None,
            "mlflow_run_id": self.run_id,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def summary(self) -> str:
        """The terminal summary: verdict, one line per feature, KPIs per version."""
        period = f"{_iso(self.period[0])} … {_iso(self.period[1])}" if self.period else "no rows"
        d = self.dataset
        lines = [
            f"{self.model_name} v{self.version}: {self.verdict.upper()} ({d.method}) — "
            f"{d.explain()}",
            f"  compared: {self.compared()}, against {self.reference_rows} training rows"
            + (f"; period {period}" if self.source_kind == "prediction-log" else ""),
            *([f"  note: {d.note}"] if d.note else []),
            "",
            f"  {'FEATURE':<24} {'KIND':<11} {'METHOD':<13} {'STATISTIC':>10} {'BOUND':>7} "
            f"{'P':>9} {'PSI':>7} {'N':>8}  DRIFT",
        ]
        for f in self.features:
            name = f.name if f.role == "feature" else f"{f.name} (pred.)"
            stat = f"{f.statistic:.4f}" if f.statistic is not None else "-"
            bound = f"{f.threshold:g}" if f.threshold is not None else "-"
            p = f"{f.p_value:.2e}" if f.p_value is not None else "-"
            psi = f"{f.psi:.3f}" if f.psi is not None and math.isfinite(f.psi) else "-"
            flag = {True: "DRIFT", False: "ok", None: "n/a"}[f.drifted]
            lines.append(
                f"  {name[:24]:<24} {f.kind:<11} {f.method or '-':<13} {stat:>10} {bound:>7} "
                f"{p:>9} {psi:>7} {f.n_current:>8}  {flag}" + (f" ({f.reason})" if f.reason else "")
            )
        if self.kpis:
            lines += [
                "",
                f"  {'VERSION':>7} {'ROLE':<11} {'REQUESTS':>9} {'ERR RATE':>8} "
                f"{'P50 MS':>8} {'P95 MS':>8}",
            ]
            for k in self.kpis:
                rate = f"{k.error_rate:.1%}" if k.error_rate is not None else "-"
                p50 = f"{k.latency_p50_ms:.2f}" if k.latency_p50_ms is not None else "-"
                p95 = f"{k.latency_p95_ms:.2f}" if k.latency_p95_ms is not None else "-"
                version = f"v{k.version}" if k.version is not None else "-"
                lines.append(
                    f"  {version:>7} {k.role:<11} {k.requests:>9} {rate:>8} {p50:>8} {p95:>8}"
                )
        if self.performance:
            lines.append("")
            for perf in self.performance:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in perf.metrics.items())
                lines.append(f"  labelled v{perf.version}: {perf.rows} rows — {shown}")
        if self.report_path:
            lines += ["", f"  report: {self.report_path}"]
        if self.run_id:
            lines.append(f"  MLflow run: {self.run_id}")
        return "\n".join(lines)
