"""The Ray Serve application behind `raymlops serve`: an HTTP `Ingress` deployment and a
one-replica `Coordinator`.

Each Ingress replica holds the served versions' Predictors in memory and answers
`POST /predict` itself: validation, routing (champion / canary share / shadow mirror), one
batching queue per role (raymlops.serve.batch_queue) calling `Predictor.predict` (THE
prediction path), the prediction log and the metrics. Keeping the model in the ingress
process avoids a replica-to-replica hop per request: measured on 2 cores, a separate model
deployment behind a handle served 7x fewer requests/s (benchmarks/RESULTS.md).

The Coordinator owns the routing table and the canary figures: replicas send it their
per-version counts every SYNC_INTERVAL_S and get the current table back; it decides
automatic rollbacks, follows the registry's `champion` alias, and records canary, promote
and rollback events in the registry's alias history. A new version is always loaded by the
replicas before traffic moves to it, and the old one is dropped after.

This module imports Ray Serve at import time; only raymlops.serve.api imports it, lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import serve

from raymlops.core.config import ServeConfig
from raymlops.serve.app_shared import SYNC_INTERVAL_S
from raymlops.serve.coordinator import Coordinator
from raymlops.serve.ingress import Ingress
from raymlops.serve.read_deadline import (
    READ_DEADLINE_CALLBACK,
    READ_TIMEOUT_ENV,
    READ_TIMEOUT_FILE_ENV,
    read_timeout_ms,
)

__all__ = ["SYNC_INTERVAL_S", "Coordinator", "Ingress", "build_application"]


# --------------------------------------------------------------------------- application


def _replica_env(args: dict[str, Any]) -> dict[str, str]:
    env = {
        k: v
        for k, v in dict(args.get("env") or {}).items()
        if k
        in (
            "RAY_SERVE_THROUGHPUT_OPTIMIZED",
            "RAY_SERVE_ENABLE_HA_PROXY",
            "RAY_SERVE_ENABLE_DIRECT_INGRESS",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
        )
    }
    cfg = ServeConfig.model_validate(args["serve"])
    env["OMP_NUM_THREADS"] = str(cfg.torch_threads)
    # The replicas' own HTTP servers (HAProxy sends requests to them) read with this
    # application's deadline.
    env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = READ_DEADLINE_CALLBACK
    env[READ_TIMEOUT_ENV] = repr(cfg.request_read_timeout_s)
    return env


def _record_read_deadline(args: dict[str, Any], cfg: ServeConfig) -> None:
    """Write this deploy's read deadline where the cluster's shared front (HAProxy at its
    next reload, which this deploy causes; Serve's Python proxy within a second) reads it,
    when the cluster is on this machine."""
    path = dict(args.get("env") or {}).get(READ_TIMEOUT_FILE_ENV)
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.write_text(str(read_timeout_ms(cfg.request_read_timeout_s)))
    os.replace(tmp, target)


def build_application(args: dict[str, Any]) -> Any:
    """The bound Serve application for `args` (see raymlops.serve.api.application_args)."""
    cfg = ServeConfig.model_validate(args["serve"])
    _record_read_deadline(args, cfg)
    runtime_env = {"env_vars": _replica_env(args)}
    extra_path = args.get("pythonpath")
    if extra_path:
        runtime_env["env_vars"]["PYTHONPATH"] = extra_path
    coordinator = serve.deployment(Coordinator).options(
        name="Coordinator",
        num_replicas=1,
        max_ongoing_requests=1000,
        ray_actor_options={"num_cpus": 0, "runtime_env": runtime_env},
    )
    scaling = cfg.autoscaling
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name="Ingress",
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        autoscaling_config={
            "min_replicas": scaling.min_replicas,
            "initial_replicas": scaling.initial_replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
            "upscale_delay_s": scaling.upscale_delay_s,
            "downscale_delay_s": scaling.downscale_delay_s,
            # In Ray 2.60 each replica pushes its figures every metrics_interval_s (Ray
            # marks the field deprecated in favour of an environment variable it does not
            # read yet) and the controller averages them over look_back_period_s.
            "metrics_interval_s": scaling.metrics_interval_s,
            "look_back_period_s": scaling.look_back_period_s,
        },
        ray_actor_options={
            "num_cpus": cfg.cpus_per_replica,
            "num_gpus": cfg.gpus_per_replica,
            "runtime_env": runtime_env,
        },
    )
    return ingress.bind(coordinator.bind(args), args)
