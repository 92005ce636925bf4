"""Serving pieces that need no Ray: the `serve` config section, the Client's retries against
a local HTTP server, the HAProxy bind wrapper, and `raymlops serve config`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from raymlops.core.config import ServeConfig, load_config
from raymlops.core.errors import ConfigError, UserInputError
from raymlops.serve.api import Client, ServingError, application_args, serve_config_yaml
from raymlops.serve.head import haproxy_wrapper, read_deadline_file, serve_env
from raymlops.serve.read_deadline import READ_DEADLINE_CALLBACK, READ_TIMEOUT_FILE_ENV

# --------------------------------------------------------------------------- config


def test_serve_defaults_keep_existing_configs_valid() -> None:
    config = load_config(None)
    serve = config.serve
    assert (serve.host, serve.port, serve.route_prefix) == ("127.0.0.1", 8000, "/")
    assert serve.max_body_bytes == 1024 * 1024
    assert serve.prediction_log.flush_interval_s == 1.0


@pytest.mark.parametrize(
    ("override", "text"),
    [
        ("serve.autoscaling.initial_replicas=5", "min (1) <= initial (5) <= max (2)"),
        ("serve.autoscaling.min_replicas=3", "min (3) <= initial (2) <= max (2)"),
        ("serve.canary.percent=120", "serve.canary.percent"),
        ("serve.canary.error_rate_margin=-0.1", "serve.canary.error_rate_margin"),
        ("serve.max_batch_size=1000", "cannot exceed max_ongoing_requests"),
        ("serve.port=0", "serve.port"),
        ("serve.route_prefix=predict", "serve.route_prefix"),
        ("serve.prediction_log.max_buffered_rows=10", "max_buffered_rows must be >="),
        ("serve.proxy=nginx", "serve.proxy"),
        ("serve.colour=blue", "serve.colour: unknown key"),
        ("serve.token=short", "serve.token"),
        ("serve.autoscaling.look_back_period_s=1", "must exceed metrics_interval_s"),
    ],
)
def test_impossible_serve_settings_are_rejected(override: str, text: str) -> None:
    with pytest.raises(ConfigError, match="invalid config") as info:
        load_config(None, [override])
    assert text in str(info.value)


def test_canary_shares_cannot_exceed_everything() -> None:
    with pytest.raises(ValueError, match="cannot exceed 100"):
        ServeConfig.model_validate({"canary": {"percent": 60, "shadow_percent": 50}})


def test_every_serve_field_has_a_description() -> None:
    from raymlops.core.config import (
        ServeAutoscalingConfig,
        ServeCanaryConfig,
        ServePredictionLogConfig,
    )

    for model in (ServeConfig, ServeAutoscalingConfig, ServeCanaryConfig, ServePredictionLogConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


def test_application_args_carry_only_a_token_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYMLOPS_SERVE_TOKEN", "s3cret-token")
    config = load_config(None)
    args = application_args(config, 3, home="/tmp/h")
    assert "s3cret-token" not in json.dumps(args)
    assert args["token_sha256"] and len(args["token_sha256"]) == 64
    assert (args["version"], args["app_name"], args["model_name"]) == (3, config.name, config.name)
    assert args["log_root"] == "/tmp/h/predictions"
    monkeypatch.delenv("RAYMLOPS_SERVE_TOKEN")
    assert application_args(config, 3, home="/tmp/h")["token_sha256"] is None


def test_serve_config_yaml_is_a_serve_deploy_file() -> None:
    text = serve_config_yaml(None, ["serve.port=9100"], version=2)
    document = yaml.safe_load(text)
    assert document["http_options"] == {"host": "127.0.0.1", "port": 9100}
    [app] = document["applications"]
    assert app["import_path"] == "raymlops.serving:app_builder"
    # The config travels inside the file, overrides applied: no path of this machine.
    assert set(app["args"]) == {"config_data", "version"} and app["args"]["version"] == 2
    assert app["args"]["config_data"]["serve"]["port"] == 9100
    assert "&id" not in text  # no YAML anchors
    from ray.serve.schema import ServeDeploySchema  # what `serve deploy` validates against

    assert ServeDeploySchema.model_validate(document).applications[0].name == "breast-cancer"


def test_serve_config_ships_a_home_only_with_the_embedded_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(load_config(None).model_dump(mode="json")))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    text = serve_config_yaml(str(config), [], home=tmp_path / "home")
    assert str(tmp_path) not in text  # neither the config's path nor the home
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    [app] = yaml.safe_load(serve_config_yaml(str(config), [], home=tmp_path / "home"))[
        "applications"
    ]
    assert app["args"]["home"] == str((tmp_path / "home").resolve())  # the SQLite store's folder


def test_serve_env_per_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", raising=False)
    default = serve_env("default", "127.0.0.1", tmp_path)
    assert default["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert default["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    haproxy = serve_env("haproxy", "127.0.0.1", tmp_path)
    assert haproxy["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    ports = {haproxy[k] for k in haproxy if k.endswith("_PORT")}
    assert len(ports) == 3 and "8404" not in ports and "9101" not in ports
    assert haproxy["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "5"
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0.5")
    faster = serve_env("haproxy", "127.0.0.1", tmp_path)
    assert faster["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "0.5"
    # HAProxy's config and sockets in a folder of this home's own, nobody else's.
    folder = Path(haproxy["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent
    assert folder == tmp_path / "serve" / "haproxy" or folder.name.startswith("rmo-")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    other = serve_env("haproxy", "127.0.0.1", tmp_path / "other")
    assert Path(other["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent != folder
    for key in ("CONFIG_FILE_LOC", "METRICS_SOCKET_PATH", "SERVER_STATE_FILE"):
        assert Path(haproxy[f"RAY_SERVE_HAPROXY_{key}"]).parent == folder


def test_serve_env_gives_the_front_the_recorded_read_deadline(tmp_path: Path) -> None:
    """On this machine Serve's proxy and HAProxy read the deadline a deploy recorded; on a
    cluster elsewhere nothing of this machine's is named (its replicas' servers still read
    with their application's deadline)."""
    for proxy in ("default", "haproxy"):
        local = serve_env(proxy, "127.0.0.1", tmp_path)
        assert local["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == READ_DEADLINE_CALLBACK
        assert local[READ_TIMEOUT_FILE_ENV] == str(read_deadline_file(tmp_path))
        elsewhere = serve_env(proxy, "127.0.0.1", None)
        assert "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH" not in elsewhere
        assert READ_TIMEOUT_FILE_ENV not in elsewhere


# --------------------------------------------------------------------------- HAProxy wrapper


def test_haproxy_wrapper_binds_listeners_to_the_host_and_keeps_the_admin_socket_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "fake-haproxy"
    fake.write_text('#!/bin/sh\necho "ARGS $*"\nprev=""\nfor a in "$@"; do\n'
                    '  if [ "$prev" = "-f" ]; then cat "$a"; fi\n  prev="$a"\ndone\n')  # fmt: skip
    fake.chmod(0o755)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(fake))
    wrapper = haproxy_wrapper(tmp_path / "home", "127.0.0.1")
    assert wrapper is not None and wrapper != str(fake) and os.access(wrapper, os.X_OK)
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "global\n    stats socket /x/admin.sock mode 666 level admin expose-fd listeners\n"
        "frontend prometheus\n    bind :9101\nfrontend http_frontend\n"
        "    bind 127.0.0.1:8000\nlisten stats\n  bind *:8404\n"
    )
    out = subprocess.run(
        [wrapper, "-db", "-f", str(config), "-sf", "12"], capture_output=True, text=True, check=True
    ).stdout
    assert f"ARGS -db -f {config}.raymlops -sf 12" in out
    assert "bind 127.0.0.1:9101" in out
    assert "bind 127.0.0.1:8404" in out
    assert "bind 127.0.0.1:8000" in out
    assert "bind :" not in out and "bind *" not in out
    assert "stats socket /x/admin.sock mode 600 level admin" in out and "666" not in out
    # Every interface asked for: binds as they are, the admin socket still private.
    everywhere = haproxy_wrapper(tmp_path / "home", "0.0.0.0")
    assert everywhere is not None and everywhere != wrapper
    out = subprocess.run(
        [everywhere, "-f", str(config)], capture_output=True, text=True, check=True
    ).stdout
    assert "bind :9101" in out and "bind *:8404" in out and "mode 600 level admin" in out


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [(None, "5000ms"), ("2500", "2500ms"), ("0", "5000ms"), ("x", "5000ms")],
)
def test_haproxy_wrapper_reads_requests_within_the_recorded_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: str | None, expected: str
) -> None:
    """Headers and body (buffered before a replica sees them) within the deadline the last
    deploy recorded, else the default; never HAProxy's 0 (no deadline)."""
    fake = tmp_path / "fake-haproxy"
    fake.write_text('#!/bin/sh\nprev=""\nfor a in "$@"; do\n'
                    '  if [ "$prev" = "-f" ]; then cat "$a"; fi\n  prev="$a"\ndone\n')  # fmt: skip
    fake.chmod(0o755)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(fake))
    home = tmp_path / "home"
    wrapper = haproxy_wrapper(home, "127.0.0.1")
    assert wrapper is not None
    if recorded is not None:
        read_deadline_file(home).write_text(recorded)
    config = tmp_path / "haproxy.cfg"
    config.write_text("global\n    maxconn 10\ndefaults\n    mode http\nfrontend f\n    bind :1\n")
    out = subprocess.run([wrapper, "-f", str(config)], capture_output=True, text=True, check=True)
    defaults = out.stdout.split("defaults\n", 1)[1].split("frontend", 1)[0]
    assert defaults.split("\n")[:3] == [
        "    option http-buffer-request",
        f"    timeout http-request {expected}",
        "    mode http",
    ]


# --------------------------------------------------------------------------- client


class _Script:
    """Responses a test server gives in order (status, body, headers)."""

    def __init__(self, responses: list[tuple[int, dict[str, Any] | str, dict[str, str]]]) -> None:
        self.responses = list(responses)
        self.requests: list[dict[str, Any]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, _Script]]:
    script = _Script([])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            script.requests.append(
                {"path": self.path, "body": json.loads(body), "headers": dict(self.headers)}
            )
            status, payload, headers = script.responses.pop(0)
            data = (json.dumps(payload) if isinstance(payload, dict) else payload).encode()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/app", script
    finally:
        httpd.shutdown()
        httpd.server_close()


_OK = {"predictions": ["a"], "model": "m", "version": 2, "role": "champion", "request_id": "r"}
_OURS = {"x-raymlops": "1", "content-type": "application/json"}


def test_client_retries_overload_and_proxy_failures(server: tuple[str, _Script]) -> None:
    url, script = server
    script.responses = [
        (503, "Request dropped due to backpressure", {}),
        (500, "Internal Server Error", {}),  # a proxy's page: the replica died mid-request
        (502, "bad gateway", {}),
        (200, _OK, _OURS),
    ]
    client = Client(url, token="t0ken-value", backoff_s=0.001)
    result = client.predict({"x": 1.0}, request_id="abc")
    assert (result.version, result.predictions, client.retries) == (2, ["a"], 3)
    assert script.requests[0]["path"] == "/app/predict"
    assert script.requests[0]["body"] == {"instances": [{"x": 1.0}]}
    headers = {k.lower(): v for k, v in script.requests[-1]["headers"].items()}
    assert headers["authorization"] == "Bearer t0ken-value"
    assert headers["x-request-id"] == "abc"


def test_client_does_not_retry_request_errors(server: tuple[str, _Script]) -> None:
    url, script = server
    error = {"error": "instances[0].x must be a number", "field": "instances[0].x"}
    error["request_id"] = "q"
    script.responses = [(422, error, _OURS)]
    client = Client(url, backoff_s=0.001)
    with pytest.raises(ServingError) as info:
        client.predict([{"x": "no"}])
    failure = info.value
    assert (failure.status, failure.field, failure.request_id) == (422, "instances[0].x", "q")
    assert client.retries == 0


def test_client_does_not_retry_the_apps_own_500(server: tuple[str, _Script]) -> None:
    url, script = server
    script.responses = [(500, {"error": "prediction failed (RuntimeError)"}, _OURS)]
    with pytest.raises(ServingError, match="prediction failed"):
        Client(url, backoff_s=0.001).predict([{"x": 1}])


def test_client_gives_up_after_max_retries(server: tuple[str, _Script]) -> None:
    url, script = server
    script.responses = [(503, "busy", {})] * 3
    with pytest.raises(ServingError, match="after 3 attempts") as info:
        Client(url, max_retries=2, backoff_s=0.001).predict([{"x": 1}])
    assert info.value.status == 503


def test_client_retries_connection_errors_then_reports_them() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", max_retries=2, backoff_s=0.001)
    with pytest.raises(ServingError, match="ConnectionRefusedError") as info:
        client.predict([{"x": 1}])
    assert info.value.status is None and client.retries == 2


def test_client_sends_dataframe_nan_as_null(server: tuple[str, _Script]) -> None:
    import pandas as pd

    url, script = server
    script.responses = [(200, _OK, _OURS)]
    Client(url).predict(pd.DataFrame({"x": [1.0, float("nan")], "c": ["a", "b"]}))
    assert script.requests[0]["body"]["instances"] == [{"x": 1.0, "c": "a"}, {"x": None, "c": "b"}]


def test_client_rejects_a_non_http_url() -> None:
    with pytest.raises(UserInputError):
        Client("ftp://example.com")


def test_an_empty_or_short_token_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token variable that is set must hold a real token: an endpoint must not quietly
    serve without the token its operator meant to give it (#15)."""
    from raymlops.core.errors import UserInputError
    from raymlops.serve.api import _token

    config = load_config(None)
    monkeypatch.delenv("RAYMLOPS_SERVE_TOKEN", raising=False)
    assert _token(config) is None  # unset: no token (loopback only, see below)
    for value, shown in (("", "empty"), ("   ", "empty"), ("abc", "3 characters")):
        monkeypatch.setenv("RAYMLOPS_SERVE_TOKEN", value)
        with pytest.raises(UserInputError, match=rf"\$RAYMLOPS_SERVE_TOKEN is {shown}"):
            _token(config)
    monkeypatch.setenv("RAYMLOPS_SERVE_TOKEN", "a-long-enough-token")
    assert _token(config) == "a-long-enough-token"


def test_an_endpoint_beyond_loopback_needs_a_token_or_insecure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from raymlops.core.errors import UserInputError
    from raymlops.serve.api import check_exposure

    monkeypatch.delenv("RAYMLOPS_SERVE_TOKEN", raising=False)
    check_exposure(load_config(None), insecure=False)  # 127.0.0.1: fine without one
    exposed = load_config(None, ["serve.host=0.0.0.0"])
    with pytest.raises(UserInputError, match=r"serve.host 0.0.0.0 exposes .* --insecure"):
        check_exposure(exposed, insecure=False)
    said: list[str] = []
    check_exposure(exposed, insecure=True, say=said.append)
    assert said and "without a token (--insecure)" in said[0]
    monkeypatch.setenv("RAYMLOPS_SERVE_TOKEN", "a-long-enough-token")
    check_exposure(exposed, insecure=False)  # a token: fine


def test_a_stale_head_record_never_signals_processes_that_are_not_the_head(
    tmp_path: Path,
) -> None:
    """The recorded session id now belongs to an unrelated `sleep` (ids are reused): the
    record is removed and the sleep left alone. A session that proves to be the head's (a
    process naming its temp dir, as Ray's daemons do) is stopped (#15)."""
    import json
    import subprocess
    import sys
    import time
    from dataclasses import asdict

    from raymlops.serve.head import OwnedHead, _state_path, load_owned_head, stop_owned_head

    temp_dir = str(tmp_path / "serve" / "ray")
    path = _state_path(tmp_path)
    path.parent.mkdir(parents=True)

    def record(pid: int) -> None:
        head = OwnedHead("127.0.0.1:1", "", 0, temp_dir, pid, time.time(), "default", {})
        path.write_text(json.dumps(asdict(head)))

    sleeper = subprocess.Popen(["sleep", "120"], start_new_session=True)
    owned = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", temp_dir], start_new_session=True
    )
    try:
        record(sleeper.pid)
        assert load_owned_head(tmp_path) is None
        assert sleeper.poll() is None and not path.exists()  # untouched; record gone
        record(sleeper.pid)
        assert stop_owned_head(tmp_path) is False
        assert sleeper.poll() is None and not path.exists()
        record(owned.pid)
        assert stop_owned_head(tmp_path) is True
        assert owned.wait(timeout=30) is not None and not path.exists()
    finally:
        for proc in (sleeper, owned):
            proc.kill()
            proc.wait(timeout=10)


def test_replica_grpc_is_narrowed_to_loopback_only_on_a_loopback_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray.serve._private import replica

    from raymlops.serve.app_shared import LOOPBACK_ONLY_ENV, keep_replica_grpc_on_loopback

    bound: list[str] = []
    monkeypatch.setattr(replica, "add_port_to_grpc_server", lambda _s, a: bound.append(a) or 7)
    monkeypatch.delenv(LOOPBACK_ONLY_ENV, raising=False)
    assert not keep_replica_grpc_on_loopback()
    replica.add_port_to_grpc_server(None, "[::]:0")
    monkeypatch.setenv(LOOPBACK_ONLY_ENV, "1")
    assert keep_replica_grpc_on_loopback() and keep_replica_grpc_on_loopback()  # once only
    assert replica.add_port_to_grpc_server(None, "[::]:0") == 7
    replica.add_port_to_grpc_server(None, "10.0.0.1:5")
    assert bound == ["[::]:0", "127.0.0.1:0", "10.0.0.1:5"]


def test_joining_the_owned_head_is_undone_after_the_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray._private import ray_constants

    from raymlops.serve.head import head_token, joining

    monkeypatch.setenv("RAY_AUTH_TOKEN", "another-clusters-token")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    flag = ray_constants.ENABLE_RAY_CLUSTER
    with joining(tmp_path) as extra:
        assert extra == {"_node_ip_address": "127.0.0.1"}
        assert os.environ["RAY_AUTH_TOKEN"] == head_token(tmp_path) != "another-clusters-token"
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert os.environ["RAY_AUTH_TOKEN"] == "another-clusters-token"
    assert "RAY_AUTH_MODE" not in os.environ and flag == ray_constants.ENABLE_RAY_CLUSTER
    token = tmp_path / "serve" / "auth-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(head_token(tmp_path)) == 64


def test_a_stopped_challenger_gets_no_request_while_the_next_table_loads() -> None:
    """A replica that gets a table whose challenger is another (a rollback, then a new canary
    at once) stops routing to the old challenger before it loads the new one; the champion
    keeps every request meanwhile."""
    import asyncio

    from raymlops.serve.canary import RoutingTable
    from raymlops.serve.ingress import Ingress

    async def scenario() -> tuple[RoutingTable, RoutingTable]:
        replica: Any = object.__new__(Ingress)
        started, release = threading.Event(), threading.Event()

        def slow_load(version: int) -> str:  # a model load of seconds, in its worker thread
            started.set()
            release.wait(10)
            return f"model v{version}"

        replica._load_lock = asyncio.Lock()
        replica._load = slow_load
        replica.loaded = {1: "model v1", 2: "model v2"}
        replica.load_errors = {}
        replica.routing = RoutingTable(champion=1, challenger=2, percent=50.0, epoch=4)
        applying = asyncio.create_task(
            replica._apply(RoutingTable(champion=1, challenger=3, percent=50.0, epoch=6))
        )
        while not started.is_set():
            await asyncio.sleep(0.01)
        during = replica.routing
        release.set()
        await applying
        return during, replica.routing

    during, after = asyncio.run(scenario())
    assert (during.champion, during.challenger, during.percent) == (1, None, 0.0)
    assert during.epoch == 4  # not applied yet: the next sync still brings the table
    assert (after.champion, after.challenger, after.percent, after.epoch) == (1, 3, 50.0, 6)
