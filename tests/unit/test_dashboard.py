"""The Grafana dashboard (deploy/grafana/raymlops.json) and the Prometheus config
(deploy/prometheus.yml): valid, every panel queries something, every query's metric and
variable is one that exists. tests/integration/test_dashboard_metrics.py checks the metric
names and labels against a real scrape of a running endpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "raymlops.json"
PROMETHEUS = REPO / "deploy" / "prometheus.yml"

#: A metric selector: a name, then its label matchers in braces.
_SELECTOR = re.compile(r"\b(ray_[A-Za-z0-9_:]+)\s*(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
#: What raymlops (and Ray Serve, through Ray) exports is named ray_*: a query of another
#: name would chart nothing.
_ANY_NAME = re.compile(r"\b[a-z_][a-z0-9_]*_(?:total|bucket|sum|count|ms|rows)\b")


def load_dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: the panels' targets and the query variables'."""
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append(variable["definition"])
    return found


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names it matches on) for each selector in a PromQL expression."""
    return [
        (name, set(_MATCHER.findall(matchers or ""))) for name, matchers in _SELECTOR.findall(expr)
    ]


def grouping_labels(expr: str) -> set[str]:
    """Labels of the `by (…)`/`without (…)` clauses."""
    return {label.strip() for clause in _GROUPING.findall(expr) for label in clause.split(",")} - {
        ""
    }


def test_the_dashboard_is_valid_and_every_panel_has_a_query() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"] and dashboard["uid"]
    panels = dashboard["panels"]
    assert len(panels) >= 7
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["title"] and panel["description"], panel.get("title")
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            expr = target["expr"]
            assert expr.strip(), panel["title"]
            assert selectors(expr), f"{panel['title']}: no ray_* metric in {expr!r}"
            for opening, closing in ("()", "{}", "[]"):
                assert expr.count(opening) == expr.count(closing), expr


def test_every_variable_a_query_uses_is_defined() -> None:
    dashboard = load_dashboard()
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    builtin = {"__rate_interval", "__interval", "__range", "__all"}
    text = json.dumps(dashboard["panels"]) + json.dumps(dashboard["templating"])
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used - builtin <= defined, used - builtin - defined


def test_the_dashboard_charts_what_the_issue_asks_for() -> None:
    """Request rate, error rate, latency quantiles, batch size, replicas, prediction-log
    losses and unseen categories, per model version and role where the metric has them."""
    dashboard = load_dashboard()
    names = {name for expr in queries(dashboard) for name, _ in selectors(expr)}
    assert {
        "ray_raymlops_serve_requests_total",
        "ray_raymlops_serve_errors_total",
        "ray_raymlops_serve_latency_ms_bucket",
        "ray_raymlops_serve_batch_rows_bucket",
        "ray_serve_deployment_replica_healthy",
        "ray_raymlops_prediction_log_dropped_rows_total",
        "ray_raymlops_prediction_log_lost_rows_total",
        "ray_raymlops_unseen_categories_total",
    } <= names
    quantiles = [
        re.search(r"histogram_quantile\(([0-9.]+)", expr)
        for expr in queries(dashboard)
        if "latency_ms_bucket" in expr
    ]
    assert {m.group(1) for m in quantiles if m} == {"0.5", "0.95", "0.99"}
    for expr in queries(dashboard):
        if "raymlops_serve_requests_total" in expr and "rate(" in expr:
            assert {"version", "role"} <= grouping_labels(expr), expr
        # No metric outside ray_* slips in (it would chart nothing).
        assert set(_ANY_NAME.findall(expr)) <= {n for n, _ in selectors(expr)}, expr


def test_the_extractors_read_promql() -> None:
    expr = (
        'sum by (le, version) (rate(ray_a_bucket{model=~"$model", role!="shadow"}[5m]))'
        " / ray_b_total"
    )
    assert selectors(expr) == [("ray_a_bucket", {"model", "role"}), ("ray_b_total", set())]
    assert grouping_labels(expr) == {"le", "version"}


def test_the_prometheus_config_scrapes_rays_discovery_file() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["global"]["scrape_interval"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    files = [f for sd in jobs["ray"]["file_sd_configs"] for f in sd["files"]]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]
