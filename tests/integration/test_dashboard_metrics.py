"""What the Grafana dashboard queries, against a real scrape of a running endpoint; and
unseen categories through real HTTP. A real local Ray with Serve and its HAProxy ingress, the
module's model of tests/integration/test_serving.py (`serving`), real HTTP, and the node's
Prometheus export as Prometheus would scrape it (read with prometheus_client's parser).

One replica, a prediction log that only writes when 8 rows are buffered (or after 60 s): a
request beyond that bound is dropped from the log and counted, and a SIGKILL of the replica
loses the rows it held, which its replacement counts from the ledger. Every series the
dashboard charts then was in a scrape — requests, errors, latency, batch size, replicas,
rows dropped and lost, unseen categories — with the labels its queries use, and the figures
are those of the requests sent.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raymlops.serve.api import prediction_log_root, read_prediction_log
from tests.integration.test_prediction_log_durability import _pid, _replica_names
from tests.integration.test_serving import MODEL, Served, _auth, _raw, _wait_for, serving
from tests.unit.test_dashboard import grouping_labels, load_dashboard, queries, selectors

pytestmark = [pytest.mark.integration, pytest.mark.long]

UNSEEN = "v-never-seen"  # the categorical column c0 holds v0..v7


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(
        tmp_path_factory,
        "dashboard-home",
        autoscaling={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1},
        prediction_log={"flush_interval_s": 60, "max_rows_per_flush": 8, "max_buffered_rows": 8},
    ) as app:
        yield app


def _scrape() -> dict[str, list[dict[str, Any]]]:
    """Sample name -> the label sets of its series, from this node's metrics export."""
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    series: dict[str, list[dict[str, Any]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(dict(sample.labels) | {"": sample.value})
    return series


def _value(series: dict[str, list[dict[str, Any]]], name: str, **labels: str) -> float:
    """The sum of `name` over this module's model's series with `labels`."""
    return sum(
        float(s[""])
        for s in series.get(name, [])
        if s.get("model") == MODEL and all(s.get(k) == v for k, v in labels.items())
    )


def _predict(
    served: Served, rows: list[dict[str, Any]], request_id: str
) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"instances": rows}).encode()
    headers = {**_auth(), "x-request-id": request_id}
    status, _, payload = _raw(served, "POST", "/predict", body, headers)
    return status, json.loads(payload)


def test_unseen_categories_are_warned_and_every_metric_the_dashboard_queries_is_exported(
    served: Served,
) -> None:
    # An unseen category: answered (unknown bucket), with a warning on its row only.
    rows = served.records(3)
    rows[1]["c0"] = UNSEEN
    status, answer = _predict(served, rows, "pre-1")
    assert status == 200, answer
    assert len(answer["predictions"]) == 3
    assert answer["warnings"] == [None, {"unseen_category": {"c0": UNSEEN}}, None]
    # Nothing unseen: answered as before, no warnings key.
    status, answer = _predict(served, served.records(1, start=3), "pre-2")
    assert status == 200 and "warnings" not in answer, answer
    # An error: the output overflows float32 (422, counted as an error, logged).
    big = {**served.records(1, start=4)[0], **{f"f{i}": 1e300 for i in range(4)}}
    assert _predict(served, [big], "pre-3")[0] == 422
    # 10 rows do not fit the 8-row log buffer: answered, dropped from the log and counted.
    assert _predict(served, served.records(10, start=5), "dropped")[0] == 200

    # Exported as sent (Ray pushes a worker's metrics to its node's agent every few seconds).
    before: dict[str, list[dict[str, Any]]] = {}

    def counted() -> bool:
        nonlocal before
        before = _scrape()
        return (
            _value(before, "ray_raymlops_serve_requests_total", version="1", role="champion") == 4
            and _value(before, "ray_raymlops_prediction_log_dropped_rows_total") == 10
        )

    _wait_for(counted, 60, "the requests in the metrics export")
    assert _value(before, "ray_raymlops_unseen_categories_total", version="1", column="c0") == 1
    assert _value(before, "ray_raymlops_serve_errors_total", version="1", role="champion") == 1
    assert _value(before, "ray_raymlops_serve_latency_ms_count", version="1") == 4
    # Rows per Predictor call: 3, 1, 1, 10 (Ray rebuilds a histogram's sum from its bucket
    # midpoints, so the buckets are the exact figures).
    batch_rows = {
        float(s["le"]): float(s[""])
        for s in before["ray_raymlops_serve_batch_rows_bucket"]
        if s.get("model") == MODEL and s.get("version") == "1"
    }
    assert [batch_rows[le] for le in (1.0, 2.0, 4.0, 8.0, 16.0)] == [2, 2, 3, 3, 4], batch_rows

    # Two more rows, then SIGKILL: the replica holds up to 7 unwritten rows (a flush comes
    # after 8 rows or 60 s), which its replacement counts from the ledger as lost.
    for i in (4, 5):
        assert _predict(served, served.records(1, start=20 + i), f"pre-{i}")[0] == 200
    [victim] = _replica_names()
    os.kill(_pid(victim), signal.SIGKILL)
    lost = "ray_raymlops_prediction_log_lost_rows_total"
    after: dict[str, list[dict[str, Any]]] = {}

    def counted_lost() -> bool:
        nonlocal after
        after = _scrape()
        return _value(after, lost) > 0

    _wait_for(counted_lost, 120, "the replacement counting the lost rows")
    log = read_prediction_log(prediction_log_root(served.config, served.home)).to_pandas()
    written = int(log.request_id.str.startswith("pre-").sum()) if len(log) else 0
    assert _value(after, lost) == 7 - written

    # Every series the dashboard queries was in a scrape, with the labels it uses.
    seen = {name: before.get(name, []) + after.get(name, []) for name in {*before, *after}}
    dashboard = load_dashboard()
    wanted = {name for expr in queries(dashboard) for name, _ in selectors(expr)}
    assert wanted <= set(seen), f"not exported: {sorted(wanted - set(seen))}"
    for expr in queries(dashboard):
        names = [name for name, _ in selectors(expr)]
        for name, matched in selectors(expr):
            labels = {k for s in seen[name] for k in s}
            assert matched <= labels, f"{name} lacks {matched - labels} ({expr})"
        grouped = grouping_labels(expr)
        on_any = {k for name in names for s in seen[name] for k in s}
        assert grouped <= on_any, f"{expr}: no series has {grouped - on_any}"
    healthy = [
        s
        for s in seen["ray_serve_deployment_replica_healthy"]
        if s.get("application") == MODEL and s.get("deployment") == "Ingress"
    ]
    assert healthy, seen["ray_serve_deployment_replica_healthy"]
