"""`raymlops serve status` as printed, without Ray: the scaling figures of each deployment
(running, Serve's target, autoscaling bounds, ongoing requests per replica) in the summary
and the JSON, and the status a controller that did not answer still gives."""

from __future__ import annotations

import json
from typing import Any

from ray.serve.config import AutoscalingConfig

from raymlops.serve.api import ServeStatus
from raymlops.serve.scaling import _bounds


def _status(**ingress: Any) -> ServeStatus:
    deployments = {
        "Coordinator": {"status": "HEALTHY", "replicas": {"RUNNING": 1}, "message": ""},
        "Ingress": {"status": "UPSCALING", "replicas": {"RUNNING": 2, "STARTING": 1}, **ingress},
    }
    url = "http://127.0.0.1:8000"
    return ServeStatus("clf", "clf", url, "haproxy", "RUNNING", 1, deployments=deployments)


def _line(status: ServeStatus, name: str) -> str:
    return next(x for x in status.summary().splitlines() if x.strip().startswith(name))


def test_summary_shows_target_bounds_and_ongoing_per_replica() -> None:
    status = _status(
        running=2,
        target=3,
        autoscaling={"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2.0},
        ongoing={"a1": 7, "b2": None},
        ongoing_total=7,
    )
    line = _line(status, "Ingress")
    assert line.endswith(
        "replicas: 2 running, 1 starting; target 3 (autoscaling 1-3 at 2 ongoing/replica); "
        "ongoing 7 (7, ?)"
    ), line
    document = json.loads(json.dumps(status.to_dict()))
    assert document["deployments"]["Ingress"]["ongoing"] == {"a1": 7, "b2": None}
    assert document["deployments"]["Ingress"]["replicas"] == {"RUNNING": 2, "STARTING": 1}


def test_fixed_count_and_unanswered_figures() -> None:
    status = _status(
        running=1, target=1, autoscaling=None, ongoing={"a1": None}, ongoing_total=None
    )
    assert _line(status, "Ingress").endswith("; target 1; ongoing ? (?)")
    # No figures at all (the controller did not answer): the line is the states alone.
    assert _line(status, "Coordinator").endswith("replicas: 1 running")


def test_bounds_of_each_autoscaling_config_form() -> None:
    from ray.serve._private.utils import DEFAULT

    wanted = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2.0}
    model = AutoscalingConfig(min_replicas=1, max_replicas=3, target_ongoing_requests=2.0)
    assert _bounds(model) == wanted
    assert _bounds({**wanted, "upscale_delay_s": 3.0}) == wanted
    assert _bounds(None) is None and _bounds(DEFAULT.VALUE) is None
