"""How a served application is scaled right now: per deployment, the replicas running, the
replica count Serve's autoscaler aims for, its bounds, and each running replica's queue
length (its ongoing requests). What `raymlops serve status` shows under each deployment.

Sources, all asked of the connected cluster when status is read:
- the controller's Serve instance details (the `ServeInstanceDetails` schema, stable public
  API: what `serve.status()` is built from and what the dashboard's
  `GET /api/serve/applications/` returns; the dashboard itself may not run, so the
  controller is asked directly) for the target replica count, the autoscaling config and
  the live replicas;
- each running replica's `get_num_ongoing_requests`, the queue-length probe Serve's own
  request routers (Python and Java) send to replicas: requests the replica is working on
  now, measured at the replica, not averaged. Serve's controller-side aggregate that the
  autoscaler decides on (averaged over `look_back_period_s`) has no public accessor, and
  the Prometheus gauges lag by their export interval, so neither is used.
Each source is private transport to a public figure: a failure degrades to missing figures
(None) rather than failing the status command.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds one status read waits for the controller and for the replicas' answers.
_TIMEOUT_S = 10.0


def scaling_figures(app: str) -> dict[str, dict[str, Any]]:
    """Per deployment of `app`: `running` (replicas in state RUNNING), `target` (Serve's
    target replica count), `autoscaling` (min/max replicas and target_ongoing_requests, None
    for a fixed count), `ongoing` ({replica id: ongoing requests, None if it did not
    answer}) and `ongoing_total` (their sum over the replicas that answered). Empty when
    the controller could not be asked."""
    details = _instance_details()
    application = details.applications.get(app) if details is not None else None
    if application is None:
        return {}
    figures: dict[str, dict[str, Any]] = {}
    for name, deployment in application.deployments.items():
        running = [r for r in deployment.replicas if _state(r.state) == "RUNNING"]
        ongoing = _ongoing(running)
        answered = [n for n in ongoing.values() if n is not None]
        figures[name] = {
            "running": len(running),
            "target": int(deployment.target_num_replicas),
            "autoscaling": _bounds(deployment.deployment_config.autoscaling_config),
            "ongoing": ongoing,
            "ongoing_total": sum(answered) if answered or not ongoing else None,
        }
    return figures


def _instance_details() -> Any:
    """The controller's ServeInstanceDetails, or None when it cannot be asked."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve.schema import ServeInstanceDetails

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        raw = ray.get(controller.get_serve_instance_details.remote(), timeout=_TIMEOUT_S)
        return ServeInstanceDetails(**raw)
    except Exception as exc:  # private transport: report states only rather than fail
        logger.debug("raymlops: no Serve instance details (%s)", exc)
        return None


def _state(state: Any) -> str:
    return str(getattr(state, "value", state))


def _bounds(config: Any) -> dict[str, Any] | None:
    """min/max replicas and target_ongoing_requests of an autoscaling config (a dict or
    Serve's AutoscalingConfig model), None when the deployment has a fixed count."""
    if isinstance(config, dict):
        values = config
    elif hasattr(config, "model_dump"):
        values = config.model_dump()
    else:  # None, or Serve's DEFAULT placeholder for an unset option
        return None
    keys = ("min_replicas", "max_replicas", "target_ongoing_requests")
    return {k: values.get(k) for k in keys}


def _ongoing(replicas: list[Any]) -> dict[str, int | None]:
    """Each replica's ongoing requests, asked of all at once; None for one that did not
    answer within the timeout (starting, stopping, or its node unreachable)."""
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE

    asked: dict[str, Any] = {}
    for replica in replicas:
        try:
            actor = ray.get_actor(replica.actor_name, namespace=SERVE_NAMESPACE)
            asked[replica.replica_id] = actor.get_num_ongoing_requests.remote()
        except Exception as exc:  # gone between the listing and the call
            logger.debug("raymlops: replica %s not reachable (%s)", replica.replica_id, exc)
    refs = list(asked.values())
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=_TIMEOUT_S) if refs else ([], [])
    done = set(ready)
    counts: dict[str, int | None] = {}
    for replica in replicas:
        ref = asked.get(replica.replica_id)
        counts[replica.replica_id] = _value(ref) if ref is not None and ref in done else None
    return counts


def _value(ref: Any) -> int | None:
    import ray

    try:
        return int(ray.get(ref, timeout=1.0))
    except Exception:  # the replica died after answering `wait`
        return None
