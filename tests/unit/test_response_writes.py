"""One socket write per response (`raymlops.serve.response_writes`) without Ray: a real
uvicorn in a thread whose connections count their writes, and real HTTP clients that check
every byte still arrives as HTTP says."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.protocols.http import h11_impl, httptools_impl

from raymlops.serve.response_writes import join_response_writes
from tests.unit.uvicorn_support import uvicorn_in_thread


class _Counting:
    """A connection's transport that keeps the writes made to it."""

    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        if data:  # h11 writes b"" to end a response with a length: not a socket write
            self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/plain: 200 with a length; /stream: three chunks; /empty: 204; /fail: raises before
    answering; /half: raises after the head."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    if path == "/fail":
        raise RuntimeError("boom")
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"bb", b"ccc"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b'{"ok": true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if path == "/half":
        raise RuntimeError("after the head")
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=["httptools", "h11"])
def server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[int, list[bytes]]]:
    """uvicorn on a free port with joined writes and counted transports; uvicorn's classes
    are restored afterwards."""
    http = str(request.param)
    protocol = httptools_impl.HttpToolsProtocol if http == "httptools" else h11_impl.H11Protocol
    for cls in (httptools_impl.RequestResponseCycle, h11_impl.RequestResponseCycle):
        monkeypatch.setattr(cls, "send", cls.send)
    assert join_response_writes()
    writes: list[bytes] = []
    made = protocol.connection_made

    def counted(self: Any, transport: Any) -> None:
        made(self, transport)
        self.transport = _Counting(self.transport, writes)

    monkeypatch.setattr(protocol, "connection_made", counted)
    with uvicorn_in_thread(_app, http) as port:
        yield port, writes


def test_a_response_with_a_length_is_one_write_and_keep_alive_still_works(
    server: tuple[int, list[bytes]],
) -> None:
    port, writes = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(3):
        conn.request("POST", "/plain", body=b"{}")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type") == "application/json"
        assert response.read() == b'{"ok": true}'
    conn.close()
    assert len(writes) == 3  # one per response, on one kept-alive connection
    assert all(w.startswith(b"HTTP/1.1 200") and w.endswith(b'{"ok": true}') for w in writes)


def test_a_streamed_response_joins_only_its_head_and_first_chunk(
    server: tuple[int, list[bytes]],
) -> None:
    port, writes = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/stream")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == b"abbccc"
    conn.close()
    assert writes[0].startswith(b"HTTP/1.1 200") and b"\r\n\r\n" in writes[0]
    assert b"a" in writes[0].split(b"\r\n\r\n", 1)[1]  # the first chunk rode with the head
    assert len(writes) >= 3


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_bodiless_answers_and_errors_still_reach_the_client(
    server: tuple[int, list[bytes]], method: str
) -> None:
    port, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, "/empty")
    response = conn.getresponse()
    assert (response.status, response.read()) == (204, b"")
    conn.request(method, "/plain")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == (b"" if method == "HEAD" else b'{"ok": true}')
    conn.request(method, "/fail")
    response = conn.getresponse()
    assert response.status == 500
    response.read()
    conn.close()


def test_an_application_failing_after_its_head_closes_the_connection_unanswered(
    server: tuple[int, list[bytes]],
) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /half HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    # The head waited for a body that never came: the client sees the connection close with
    # nothing (uvicorn alone sent a head, then closed: a response cut short either way).
    assert data == b""


def test_joining_twice_wraps_once(monkeypatch: pytest.MonkeyPatch) -> None:
    cycle = httptools_impl.RequestResponseCycle
    monkeypatch.setattr(cycle, "send", cycle.send)
    plain = cycle.send
    assert join_response_writes()
    once = cycle.send
    assert once is not plain
    assert join_response_writes()
    assert cycle.send is once
