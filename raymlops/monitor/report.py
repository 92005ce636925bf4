"""The monitoring report: one self-contained HTML file (plots embedded as base64 PNG).

Plots use matplotlib's object-oriented API on the Agg canvas (no pyplot, no global state, no
display needed): reference vs current distribution per feature, drift scores against their
bounds, and KPIs (and labelled metrics) over time per version.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from raymlops.core.durations import parse_duration

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from raymlops.monitor.drift import FeatureDrift
    from raymlops.monitor.result import MonitorResult

_REF_COLOUR = "#4C72B0"
_CUR_COLOUR = "#DD8452"
_DRIFT_COLOUR = "#C44E52"
_OK_COLOUR = "#55A868"
_COLUMNS = 4


def _png(fig: Figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _numeric_panel(ax: Any, feature: FeatureDrift) -> None:
    import numpy as np

    dist = feature.distribution
    edges = np.asarray(dist["edges"], dtype=float)
    if len(edges) < 2:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        return
    # Merge the fine equal-mass bins five by five for a readable density plot.
    step = 5 if len(edges) > 40 else 1
    idx = np.unique(np.append(np.arange(0, len(edges) - 1, step), len(edges) - 1))
    xs = edges[idx]
    ref = np.add.reduceat(np.asarray(dist["reference"], dtype=float), idx[:-1])
    cur = np.add.reduceat(np.asarray(dist["current"], dtype=float), idx[:-1])
    widths = np.maximum(np.diff(xs), 1e-12)
    ref_density, cur_density = ref / widths, cur / widths
    span = float(xs[-1] - xs[0]) or 1.0
    lo, hi = dist.get("current_min"), dist.get("current_max")
    # The current mass outside the training range, as bars beside it.
    if dist["below"] > 0 and lo is not None and lo < xs[0]:
        width = max(float(xs[0]) - lo, span * 0.02)
        ax.bar(xs[0] - width, dist["below"] / width, width, align="edge", color=_CUR_COLOUR)
    if dist["above"] > 0 and hi is not None and hi > xs[-1]:
        width = max(hi - float(xs[-1]), span * 0.02)
        ax.bar(xs[-1], dist["above"] / width, width, align="edge", color=_CUR_COLOUR)
    ax.stairs(ref_density, xs, color=_REF_COLOUR, fill=True, alpha=0.35, label="training")
    ax.stairs(cur_density, xs, color=_CUR_COLOUR, linewidth=1.5, label="current")
    ax.set_yticks([])


def _categorical_panel(ax: Any, feature: FeatureDrift) -> None:
    dist = feature.distribution
    cats = [str(c)[:12] for c in dist.get("categories", [])][:12]
    if not cats:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        return
    positions = list(range(len(cats)))
    ax.bar(
        [p - 0.2 for p in positions],
        dist["reference"][: len(cats)],
        0.4,
        color=_REF_COLOUR,
        label="training",
    )
    ax.bar(
        [p + 0.2 for p in positions],
        dist["current"][: len(cats)],
        0.4,
        color=_CUR_COLOUR,
        label="current",
    )
    ax.set_xticks(positions)
    ax.set_xticklabels(cats, rotation=45, ha="right", fontsize=7)


def _distribution_grid(features: list[FeatureDrift]) -> str:
    from matplotlib.figure import Figure

    shown = [f for f in features if f.distribution]
    if not shown:
        return "<p>No distributions to show (no rows compared).</p>"
    rows = math.ceil(len(shown) / _COLUMNS)
    fig = Figure(figsize=(3.2 * _COLUMNS, 2.4 * rows))
    axes = fig.subplots(rows, _COLUMNS, squeeze=False)
    for ax, feature in zip(axes.flat, shown, strict=False):
        if feature.kind == "numeric":
            _numeric_panel(ax, feature)
        else:
            _categorical_panel(ax, feature)
        colour = {True: _DRIFT_COLOUR, False: "black", None: "grey"}[feature.drifted]
        label = feature.name + (" (prediction)" if feature.role == "prediction" else "")
        detail = _score_text(feature)
        ax.set_title(f"{label}\n{detail}", fontsize=8, color=colour)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 0.97 if rows > 1 else 0.92))
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=8, frameon=False)
    return _png(fig)


def _score_text(feature: FeatureDrift) -> str:
    if feature.method is None:
        return feature.reason or "no verdict"
    if feature.method in ("ks", "chi2"):
        return f"{feature.method} p={feature.p_value:.2g}"
    return f"{feature.method} {feature.statistic:.3f} (bound {feature.threshold:g})"


def _scores_chart(features: list[FeatureDrift]) -> str:
    from matplotlib.figure import Figure

    scored = [(f, f.score) for f in features if f.score is not None]
    if not scored:
        return ""
    scored.sort(key=lambda pair: pair[1] or 0.0)
    fig = Figure(figsize=(7, 0.28 * len(scored) + 1.2))
    ax = fig.subplots()
    names = [f.name + (" (pred.)" if f.role == "prediction" else "") for f, _ in scored]
    values = [min(max(s or 0.0, 1e-3), 1e3) for _, s in scored]
    colours = [_DRIFT_COLOUR if f.drifted else _OK_COLOUR for f, _ in scored]
    ax.barh(names, values, color=colours)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("score relative to its bound (≥ 1 = drift; tests: log p / log α)")
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig)


def _kpi_chart(result: MonitorResult) -> str:
    from matplotlib.figure import Figure

    rows = [k for k in result.kpi_windows if k.window_start is not None]
    if not rows:
        return ""
    series: dict[str, list[Any]] = {}
    for k in sorted(rows, key=lambda r: r.window_start):  # type: ignore[arg-type, return-value]
        name = (f"v{k.version}" if k.version is not None else "all") + f" {k.role}"
        series.setdefault(name, []).append(k)
    has_errors = any(k.errors is not None for k in rows)
    panels = 3 if has_errors else 2
    fig = Figure(figsize=(10, 2.4 * panels))
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    gap = timedelta(seconds=parse_duration(result.window).total_seconds() * 1.5)
    for name, points in series.items():
        # A line joins consecutive windows only: a window without requests breaks it.
        times: list[Any] = []
        values: dict[str, list[Any]] = {"n": [], "p95": [], "p50": [], "err": []}
        for p in points:
            if times and p.window_start - times[-1] > gap:
                times.append(times[-1] + gap / 1.5)
                for v in values.values():
                    v.append(math.nan)
            times.append(p.window_start)
            values["n"].append(p.requests)
            values["p95"].append(_nan(p.latency_p95_ms))
            values["p50"].append(_nan(p.latency_p50_ms))
            values["err"].append(_nan(p.error_rate))
        axes[0].plot(times, values["n"], marker=".", label=name)
        axes[1].plot(times, values["p95"], marker=".", label=f"{name} p95")
        axes[1].plot(times, values["p50"], linestyle=":", label=f"{name} p50")
        if has_errors:
            axes[2].plot(times, values["err"], marker=".", label=name)
    axes[0].set_ylabel(f"requests / {result.window}")
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylabel("latency ms")
    if has_errors:
        axes[2].set_ylabel("error rate")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    return _png(fig)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _performance_chart(result: MonitorResult) -> str:
    from matplotlib.figure import Figure

    rows = [p for p in result.performance_windows if p.window_start is not None and p.metrics]
    if not rows:
        return ""
    names = [k for k in rows[0].metrics if k != "log_loss"]
    fig = Figure(figsize=(10, 2.6))
    ax = fig.subplots()
    rows.sort(key=lambda r: r.window_start)  # type: ignore[arg-type, return-value]
    times: list[Any] = [r.window_start for r in rows]
    for metric in names:
        ax.plot(
            times,
            [r.metrics.get(metric, math.nan) for r in rows],
            marker=".",
            label=metric,
        )
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_ylabel("labelled rows")
    fig.autofmt_xdate()
    fig.tight_layout()
    return _png(fig)


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec) if math.isfinite(value) else "∞"
    return html.escape(str(value))


def _features_table(features: list[FeatureDrift]) -> str:
    head = (
        "<tr><th>feature</th><th>kind</th><th>method</th><th>statistic</th><th>bound</th>"
        "<th>p-value</th><th>Wasserstein/std</th><th>JS</th><th>PSI</th><th>rows</th>"
        "<th>missing (train → now)</th><th>drift</th></tr>"
    )
    body = []
    for f in features:
        flag = {True: "DRIFT", False: "ok", None: "no verdict"}[f.drifted]
        cls = {True: "drift", False: "ok", None: "na"}[f.drifted]
        name = html.escape(f.name) + (" <em>(prediction)</em>" if f.role == "prediction" else "")
        body.append(
            f"<tr class='{cls}'><td>{name}</td><td>{f.kind}</td><td>{_fmt(f.method)}</td>"
            f"<td>{_fmt(f.statistic)}</td><td>{_fmt(f.threshold)}</td><td>{_fmt(f.p_value, '.3g')}"
            f"</td><td>{_fmt(f.wasserstein)}</td><td>{_fmt(f.js_distance)}</td>"
            f"<td>{_fmt(f.psi)}</td><td>{f.n_current}</td>"
            f"<td>{f.missing_reference:.1%} → {f.missing_current:.1%}</td>"
            f"<td>{flag}{(' — ' + html.escape(f.reason)) if f.reason else ''}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _kpi_table(result: MonitorResult) -> str:
    if not result.kpis:
        return "<p>No KPIs (no rows in the period).</p>"
    head = (
        "<tr><th>version</th><th>role</th><th>requests</th><th>error rate</th>"
        "<th>p50 ms</th><th>p95 ms</th></tr>"
    )
    body = "".join(
        f"<tr><td>{_fmt(k.version)}</td><td>{k.role}</td><td>{k.requests}</td>"
        f"<td>{_fmt(k.error_rate, '.2%')}</td><td>{_fmt(k.latency_p50_ms, '.3g')}</td>"
        f"<td>{_fmt(k.latency_p95_ms, '.3g')}</td></tr>"
        for k in result.kpis
    )
    return f"<table>{head}{body}</table>"


def _performance_table(result: MonitorResult) -> str:
    if not result.performance:
        return ""
    metrics = sorted({k for p in result.performance for k in p.metrics})
    head = "<tr><th>version</th><th>rows</th>" + "".join(f"<th>{m}</th>" for m in metrics)
    body = "".join(
        f"<tr><td>{_fmt(p.version)}</td><td>{p.rows}</td>"
        + "".join(f"<td>{_fmt(p.metrics.get(m))}</td>" for m in metrics)
        + "</tr>"
        for p in result.performance
    )
    return f"<table>{head}</tr>{body}</table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
tr.drift td { background: #fbe3e4; }
tr.na td { color: #888; }
.verdict { font-size: 1.4em; font-weight: bold; }
.verdict.drift { color: #C44E52; } .verdict.ok { color: #55A868; } .verdict.na { color: #888; }
img { max-width: 100%; }
"""


def _verdict_text(result: MonitorResult) -> str:
    """How the dataset verdict is taken, in words, with its fallback when there is one."""
    d = result.dataset
    if d.method == "weighted":
        top = sorted(d.weights.items(), key=lambda kv: -kv[1])[:5]
        weights = ", ".join(f"{html.escape(k)} {v:.0%}" for k, v in top)
        text = (
            "weighted — each feature's drift counts by its permutation importance to the "
            f"model ({weights}); drift when the drifted features carry at least "
            f"{d.threshold:.0%} of it, or when the prediction drifts."
        )
    else:
        text = (
            f"share — drift when at least {d.threshold:.0%} of the features with a verdict "
            "drift (the prediction counted as one)."
        )
    return text + (f" <em>{html.escape(d.note)}.</em>" if d.note else "")


def render_html(result: MonitorResult) -> str:
    """The whole report as one HTML string (no external files or scripts)."""
    d = result.dataset
    cls = {True: "drift", False: "ok", None: "na"}[d.drifted]
    is_log = result.source_kind == "prediction-log"
    period = (
        f"{result.period[0]:%Y-%m-%d %H:%M} – {result.period[1]:%Y-%m-%d %H:%M} UTC"
        if result.period
        else "no rows"
    )
    since = f"{result.since:%Y-%m-%d %H:%M} UTC" if result.since else "the whole log"
    s = result.settings
    sections = [
        f"<h1>Monitoring: {html.escape(result.model_name)} v{result.version}</h1>",
        f"<p class='verdict {cls}'>{result.verdict.upper()}: {html.escape(d.explain())}</p>",
        f"<p>Verdict: {_verdict_text(result)}</p>",
        "<table>"
        f"<tr><th>source</th><td>{html.escape(result.source)} "
        f"({'prediction log' if is_log else 'dataset'})</td></tr>"
        f"<tr><th>rows compared</th><td>{html.escape(result.compared())}</td></tr>"
        + (
            f"<tr><th>since</th><td>{since}</td></tr><tr><th>period seen</th><td>{period}</td></tr>"
            if is_log
            else ""
        )
        + f"<tr><th>training rows</th><td>{result.reference_rows}</td></tr>"
        f"<tr><th>generated</th><td>{result.generated_at:%Y-%m-%d %H:%M:%S} UTC</td></tr>"
        "</table>",
        "<p>Numeric: Wasserstein-1 / training std ≥ "
        f"{s.numeric_threshold:g} from {s.large_sample} rows, two-sample KS p &lt; "
        f"{s.p_value:g} below; categorical: Jensen–Shannon distance ≥ "
        f"{s.categorical_threshold:g} from {s.large_sample} rows, chi-square p &lt; "
        f"{s.p_value:g} below; no verdict under {s.min_samples} rows."
        + (
            f" The prediction is compared with the {html.escape(result.prediction_reference)}."
            if result.prediction_reference
            else ""
        )
        + "</p>",
        "<h2>Drift scores</h2>",
        _scores_chart(result.features),
        _features_table(result.features),
        "<h2>Training vs current distributions</h2>",
        _distribution_grid(result.features),
    ]
    if is_log:  # a dataset has no requests, times or latencies
        sections += [
            f"<h2>Serving KPIs (per {html.escape(result.window)})</h2>",
            _kpi_table(result),
            _kpi_chart(result),
        ]
    if result.performance:
        sections += [
            "<h2>Performance on labelled requests</h2>",
            _performance_table(result),
            _performance_chart(result),
        ]
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>raymlops monitor — {html.escape(result.model_name)} v{result.version}</title>"
        f"<style>{_STYLE}</style></head><body>" + "\n".join(sections) + "</body></html>"
    )
