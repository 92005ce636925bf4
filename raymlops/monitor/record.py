"""Where a monitoring result goes: the JSON and HTML files, and an MLflow run (metrics,
KPI history, the report) with the version tagged."""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from raymlops.core.errors import UserInputError
from raymlops.monitor.result import (
    MonitorResult,
    _iso,
)
from raymlops.registry.store import metric_key

if TYPE_CHECKING:
    from raymlops.core.config import PipelineConfig
    from raymlops.registry.store import Registry


# --------------------------------------------------------------------------- outputs


def report_location(
    result: MonitorResult, report: str | Path | None, home: Path, storage: str | None
) -> str:
    """Where a run's HTML report goes (its JSON beside it): `report` as given (a path or a
    URI), else under the shared storage when one is configured (a cluster's jobs write where
    the laptop can read, not on a node's disk), else under the home."""
    from raymlops.core.storage import join, storage_root

    if report is not None:
        return str(report) if "://" in str(report) else str(Path(report).expanduser().resolve())
    stamp = result.generated_at.strftime("%Y%m%d-%H%M%S")
    name = f"monitor-v{result.version}-{stamp}.html"
    shared = storage_root(storage)
    if shared is not None:
        return join(shared, "reports", result.model_name, name)
    return str(home / "reports" / result.model_name / name)


@contextlib.contextmanager
def staged_report(result: MonitorResult, location: str | None) -> Iterator[Path | None]:
    """A local path for the report while the run writes and logs it (None when no files are
    written); when `location` is a URI, the HTML and JSON files are stored there at the end
    and the result names them by their URIs."""
    from raymlops.core.storage import is_local, write_bytes

    if location is None or is_local(location):
        yield Path(location) if location is not None else None
        return
    with tempfile.TemporaryDirectory(prefix="raymlops-report-") as tmp:
        local = Path(tmp) / location.rsplit("/", 1)[-1]
        yield local
        json_location = location.rsplit(".", 1)[0] + ".json"
        try:
            write_bytes(location, local.read_bytes())
            write_bytes(json_location, local.with_suffix(".json").read_bytes())
        except OSError as exc:
            raise UserInputError(f"cannot store the report at {location}: {exc}") from None
        result.report_path, result.json_path = location, json_location


def _write_outputs(result: MonitorResult, path: Path) -> None:
    from raymlops.monitor.report import render_html

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create the report folder {path.parent}: {exc}") from None
    result.report_path = path
    result.json_path = path.with_suffix(".json")
    path.write_text(render_html(result), encoding="utf-8")
    result.json_path.write_text(json.dumps(result.to_dict(), indent=2))


def _log_to_mlflow(registry: Registry, config: PipelineConfig, result: MonitorResult) -> str:
    """One run in the registry's experiment: verdict and per-feature scores as metrics,
    KPIs per window as metric history, the JSON result and the HTML report as artifacts;
    the version gets tags pointing at its latest monitoring run."""
    run_name = f"monitor-{result.model_name}-v{result.version}-" + result.generated_at.strftime(
        "%Y%m%d-%H%M%S"
    )
    tags = {
        "raymlops.step": "monitor",
        "raymlops.model": result.model_name,
        "raymlops.model_version": str(result.version),
        "raymlops.monitor.verdict": result.verdict,
        "raymlops.monitor.source": result.source,
        # How the verdict was taken: 'weighted' by importance, or 'share' (also the fallback
        # for a version without stored importance).
        "raymlops.monitor.verdict_method": result.dataset.method,
    }
    with registry.run(run_name, tags, experiment=config.registry.experiment) as run_id:
        metrics: list[tuple[str, float, int]] = [
            ("dataset_drift", float(result.drift_detected), 0),
            ("rows_read", float(result.rows_read), 0),
            ("rows_compared", float(result.rows_compared), 0),
            ("drifted_features", float(len(result.dataset.drifted_features)), 0),
        ]
        if result.dataset.share is not None:
            metrics.append(("drift_share", result.dataset.share, 0))
        for f in result.features:
            for key, value in (
                ("statistic", f.statistic),
                ("p_value", f.p_value),
                ("psi", f.psi),
                ("wasserstein", f.wasserstein),
                ("js_distance", f.js_distance),
            ):
                if value is not None and math.isfinite(value):
                    metrics.append((metric_key("drift", f.name, key), float(value), 0))
            if f.drifted is not None:
                metrics.append((metric_key("drift", f.name, "drifted"), float(f.drifted), 0))
        for k in result.kpis:
            tag = f"v{k.version}" if k.version is not None else "all"
            base = ("kpi", tag, k.role)
            metrics.append((metric_key(*base, "requests"), float(k.requests), 0))
            if k.error_rate is not None:
                metrics.append((metric_key(*base, "error_rate"), k.error_rate, 0))
            if k.latency_p95_ms is not None:
                metrics.append((metric_key(*base, "latency_p95_ms"), k.latency_p95_ms, 0))
            if k.latency_p50_ms is not None:
                metrics.append((metric_key(*base, "latency_p50_ms"), k.latency_p50_ms, 0))
        for p in result.performance:
            for key, value in p.metrics.items():
                if math.isfinite(value):
                    metrics.append((metric_key("performance", f"v{p.version}", key), value, 0))
        params = {
            "since": _iso(result.since) or "",
            "source": result.source,
            "window": result.window,
            "numeric_threshold": str(result.settings.numeric_threshold),
            "categorical_threshold": str(result.settings.categorical_threshold),
            "p_value": str(result.settings.p_value),
            "min_samples": str(result.settings.min_samples),
            "large_sample": str(result.settings.large_sample),
            "drift_share": str(result.settings.drift_share),
            "verdict": result.settings.verdict,
        }
        registry.log(run_id, metrics=metrics, params=params)
        _log_window_history(registry, run_id, result)
        if isinstance(result.report_path, Path):
            registry.log_file(run_id, result.report_path, "monitor")
        if isinstance(result.json_path, Path):
            result.run_id = run_id
            result.json_path.write_text(json.dumps(result.to_dict(), indent=2))
            registry.log_file(run_id, result.json_path, "monitor")
        latest: tuple[tuple[str, str], ...] = (
            ("raymlops.monitor.last_run_id", run_id),
            ("raymlops.monitor.last_verdict", result.verdict),
            ("raymlops.monitor.last_time", _iso(result.generated_at) or ""),
        )
        for key, tag in latest:
            registry.set_version_tag(result.model_name, result.version, key, tag)
    return run_id


def _log_window_history(registry: Registry, run_id: str, result: MonitorResult) -> None:
    """KPIs and labelled metrics per window as MLflow metric history (timestamp = window)."""
    history: list[tuple[str, float, int]] = []
    times: list[int] = []
    for i, k in enumerate(sorted(result.kpi_windows, key=lambda r: r.window_start or _EPOCH)):
        when = int((k.window_start or _EPOCH).timestamp() * 1000)
        tag = f"v{k.version}" if k.version is not None else "all"
        history.append((metric_key("window", tag, k.role, "requests"), k.requests, i))
        times.append(when)
        if k.latency_p95_ms is not None:
            history.append(
                (metric_key("window", tag, k.role, "latency_p95_ms"), k.latency_p95_ms, i)
            )
            times.append(when)
    for i, p in enumerate(result.performance_windows):
        when = int((p.window_start or _EPOCH).timestamp() * 1000)
        for key, value in p.metrics.items():
            if math.isfinite(value):
                history.append((metric_key("window", f"v{p.version}", key), value, i))
                times.append(when)
    registry.log(run_id, metrics=history, timestamps=times)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
