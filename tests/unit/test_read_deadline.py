"""The request-read deadline of raymlops's HTTP servers (Serve's proxy, the replicas' own
servers) without Ray: a real uvicorn in a thread, serving an application behind the
middleware Serve's callback returns, and real sockets that send too slowly."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.h11_impl import RequestResponseCycle as H11Cycle
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as HttpToolsCycle

from raymlops.serve.read_deadline import (
    BUFFERED_BODY_BYTES,
    READ_TIMEOUT_ENV,
    read_deadline_middlewares,
)
from tests.unit.uvicorn_support import uvicorn_in_thread

DEADLINE_S = 0.5


@dataclass
class _App:
    """Answers 200 with the size of the body it read; counts its calls."""

    calls: int = 0
    disconnects: int = 0
    chunks: list[int] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            size += len(message.get("body", b""))
            self.chunks.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        body = json.dumps({"size": size}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=["httptools", "h11"])
def server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[int, _App]]:
    """uvicorn on a free port with the app behind Serve's callback (deadline DEADLINE_S);
    uvicorn's classes are restored afterwards."""
    for cls in (H11Protocol, HttpToolsProtocol):
        monkeypatch.setattr(cls, "connection_made", cls.connection_made)
        monkeypatch.setattr(cls, "data_received", cls.data_received)
        monkeypatch.setattr(cls, "_raymlops_header_deadline", None, raising=False)
    for cycle in (HttpToolsCycle, H11Cycle):  # the callback also joins response writes
        monkeypatch.setattr(cycle, "send", cycle.send)
    monkeypatch.setenv(READ_TIMEOUT_ENV, str(DEADLINE_S))
    [middleware] = read_deadline_middlewares()
    app = _App()
    wrapped = middleware.cls(app, *middleware.args, **middleware.kwargs)
    with uvicorn_in_thread(wrapped, str(request.param)) as port:
        yield port, app


def _until_closed(sock: socket.socket, timeout_s: float = 10.0) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when (time.monotonic())."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return data, time.monotonic()
        data += chunk


def _post_head(length: int) -> bytes:
    return f"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()


def test_a_complete_body_reaches_the_application(server: tuple[int, _App]) -> None:
    port, app = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/predict", body=b"x" * 200_000)
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (200, {"size": 200_000})
    assert app.calls == 1


def test_a_stalled_body_gets_408_and_is_disconnected_without_reaching_the_application(
    server: tuple[int, _App],
) -> None:
    port, app = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        opened = time.monotonic()
        sock.sendall(_post_head(1000) + b"{")
        time.sleep(DEADLINE_S / 2)
        sock.sendall(b" ")  # still trickling: no idle timeout would catch it
        reply, closed = _until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in reply.lower()
    assert b"not read within 0.5 s" in reply
    assert closed - opened >= DEADLINE_S * 0.9
    assert app.calls == 0


def test_a_long_body_streams_on_under_the_same_deadline(server: tuple[int, _App]) -> None:
    port, app = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post_head(BUFFERED_BODY_BYTES * 2) + b"x" * (BUFFERED_BODY_BYTES + 10))
        reply, _ = _until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408 ")
    # The application saw the first part, then was told the client left.
    assert (app.calls, app.disconnects) == (1, 1)
    assert sum(app.chunks) > BUFFERED_BODY_BYTES


@pytest.mark.parametrize(
    ("sent", "then"),
    [(b"", b""), (b"", b"G"), (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: a", b"a")],
    ids=["silent", "first-byte-late", "headers-trickling"],
)
def test_headers_that_do_not_arrive_in_time_close_the_connection(
    server: tuple[int, _App], sent: bytes, then: bytes
) -> None:
    port, app = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        opened = time.monotonic()
        sock.sendall(sent)
        time.sleep(DEADLINE_S / 2)
        sock.sendall(then)
        reply, closed = _until_closed(sock)
    assert reply == b""
    assert closed - opened >= DEADLINE_S * 0.9
    assert app.calls == 0


def test_a_kept_alive_connection_may_idle_and_then_ask_again(server: tuple[int, _App]) -> None:
    """The header deadline starts with a request's first byte, not at the previous answer
    (idle connections are uvicorn's keep-alive timeout's business)."""
    port, app = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(2):
        conn.request("POST", "/predict", body=b"{}")
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())) == (200, {"size": 2})
        time.sleep(DEADLINE_S * 3)
    conn.request("POST", "/predict", body=b"{}")
    assert conn.getresponse().status == 200
    assert app.calls == 3
