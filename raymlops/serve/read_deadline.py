"""The request-read deadline of the HTTP servers in front of the Serve application (Serve's
Python proxy, the replicas' own servers): headers and body must arrive within
`serve.request_read_timeout_s`, or the request is answered 408 and its connection closed, so
that slow clients cannot hold replica slots (slowloris). HAProxy gets the same deadline from
its config (`raymlops.serve.head`)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raymlops.serve.app_shared import (
    _REQUEST_ID,
    _error_body,
    _header,
    _send,
    logger,
    uvicorn_classes,
)
from raymlops.serve.response_writes import join_response_writes

#: The request-read deadline (seconds) of this process's HTTP server: set for the ingress
#: replicas, whose own HTTP servers HAProxy sends requests to, from their application's
#: config.
READ_TIMEOUT_ENV = "RAYMLOPS_REQUEST_READ_TIMEOUT_S"
#: The file (milliseconds) in which a deploy to a cluster on this machine records its
#: deadline for the cluster's shared front: Serve's Python proxy reads it, the HAProxy wrapper
#: reads it whenever HAProxy (re)loads.
READ_TIMEOUT_FILE_ENV = "RAYMLOPS_REQUEST_READ_TIMEOUT_FILE"
#: What Serve calls in its proxy and in the replicas' own HTTP servers for their ASGI
#: middlewares when $RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH names it.
READ_DEADLINE_CALLBACK = "raymlops.serve.read_deadline:read_deadline_middlewares"
#: Bodies up to this size are read whole before the wrapped application sees them.
BUFFERED_BODY_BYTES = 1 << 20


def default_read_timeout_s() -> float:
    """`serve.request_read_timeout_s`'s default."""
    from raymlops.core.config import ServeConfig

    return float(ServeConfig.model_fields["request_read_timeout_s"].default)


def read_timeout_ms(seconds: float) -> int:
    """A deadline in whole milliseconds, never 0 (to HAProxy, 0 means no deadline)."""
    return max(1, round(seconds * 1000))


class ReadDeadline:
    """The read deadline in seconds of this process's HTTP server: its own
    ($RAYMLOPS_REQUEST_READ_TIMEOUT_S), else the one the last deploy recorded (re-read at most
    once a second), else the default."""

    def __init__(self) -> None:
        own = _positive(os.environ.get(READ_TIMEOUT_ENV))
        self._fixed = own is not None
        self._value = own if own is not None else default_read_timeout_s()
        self._path = os.environ.get(READ_TIMEOUT_FILE_ENV)
        self._checked = float("-inf")

    def __call__(self) -> float:
        if self._fixed or not self._path:
            return self._value
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            with contextlib.suppress(OSError):
                ms = _positive(Path(self._path).read_text().strip())
                if ms is not None:
                    self._value = ms / 1000
        return self._value


def _positive(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


class BodyDeadline:
    """ASGI middleware: a request's body must arrive within the deadline, counted from when its
    headers did, or it is answered 408 and its connection closed. Up to BUFFERED_BODY_BYTES
    of it are read before the wrapped application is called, so a stalled upload never
    occupies what lies behind (a slot of a Serve replica); a longer body streams on to the
    application under the same deadline."""

    def __init__(self, app: Any, deadline: Callable[[], float]) -> None:
        self.app = app
        self.deadline = deadline

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        timeout = self.deadline()
        until = loop.time() + timeout
        read: list[dict[str, Any]] = []
        length = _header(scope, b"content-length") or b""
        # A body declared longer streams at once (the application may refuse it unread).
        declared = int(length) if length.isdigit() else 0
        received, complete = 0, False
        while not complete and max(declared, received) <= BUFFERED_BODY_BYTES:
            try:
                message = await receive_by(receive, until)
            except asyncio.TimeoutError:
                await _send_timeout(scope, send, timeout)
                return
            read.append(message)
            received += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body")
        if complete:
            await self.app(scope, _replay(read, receive), send)
            return
        await self._stream(scope, read, receive, send, until, timeout)

    async def _stream(
        self,
        scope: dict[str, Any],
        read: list[dict[str, Any]],
        receive: Any,
        send: Any,
        until: float,
        timeout: float,
    ) -> None:
        """The application reads the rest of a long body itself, still under the deadline:
        past it, it is told the client left, and the client gets 408 if nothing was sent."""
        state = {"complete": False, "expired": False, "started": False}

        async def bounded() -> dict[str, Any]:
            if read:
                return read.pop(0)
            if state["complete"]:
                return dict(await receive())
            if state["expired"]:
                return {"type": "http.disconnect"}
            try:
                message = await receive_by(receive, until)
            except asyncio.TimeoutError:
                state["expired"] = True
                return {"type": "http.disconnect"}
            state["complete"] = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def watched(message: dict[str, Any]) -> None:
            state["started"] = True
            await send(message)

        await self.app(scope, bounded, watched)
        if state["expired"] and not state["started"]:
            await _send_timeout(scope, send, timeout)


async def receive_by(receive: Any, until: float) -> dict[str, Any]:
    """The next ASGI message from `receive`; asyncio.TimeoutError once the event loop's
    clock passes `until`."""
    timeout_at = getattr(asyncio, "timeout_at", None)
    if timeout_at is None:  # Python 3.10: the costlier wait_for (a task per message)
        left = until - asyncio.get_running_loop().time()
        return dict(await asyncio.wait_for(receive(), left))
    async with timeout_at(until):
        return dict(await receive())


def _replay(read: list[dict[str, Any]], receive: Any) -> Any:
    """`receive` for an application, giving the messages already read first."""

    async def replay() -> dict[str, Any]:
        if read:
            return read.pop(0)
        return dict(await receive())

    return replay


async def _send_timeout(scope: dict[str, Any], send: Any, timeout: float) -> None:
    given = _header(scope, b"x-request-id")
    text = given.decode("latin-1") if given else ""
    request_id = text if _REQUEST_ID.match(text) else uuid.uuid4().hex
    body = _error_body(f"the request was not read within {timeout:g} s", request_id)
    await _send(send, 408, body, [(b"connection", b"close")])


def bound_header_reads(deadline: Callable[[], float]) -> bool:
    """Make this process's uvicorn close a connection whose next request's headers have not
    all arrived within the deadline, counted from the connection's opening or from the first
    byte after the previous answer; whether it was arranged.

    uvicorn has no such deadline: its keep-alive timer runs only between requests and any
    byte stops it. Its HTTP protocols' `connection_made` and `data_received` are wrapped
    (the classes' methods are looked up per connection and per read); a request whose
    headers arrived in time (a new `cycle`) is left alone. A later call only changes the
    deadline."""
    arranged = False
    for cls in uvicorn_classes("HttpToolsProtocol", "H11Protocol"):
        made, received = getattr(cls, "connection_made", None), getattr(cls, "data_received", None)
        if made is None or received is None:
            continue
        if not getattr(cls, "_raymlops_header_deadline", None):
            cls.connection_made = _arming_on_connect(made)
            cls.data_received = _arming_on_data(received)
        cls._raymlops_header_deadline = deadline
        arranged = True
    if not arranged:
        logger.warning(
            "raymlops: uvicorn's HTTP protocols are not where expected; headers unbounded"
        )
    return arranged


def _arm(protocol: Any) -> None:
    """Close `protocol`'s connection after the deadline unless a new request began by then."""
    timer = getattr(protocol, "_raymlops_timer", None)
    if timer is not None:
        timer.cancel()
    cycle = getattr(protocol, "cycle", None)

    def expire() -> None:
        protocol._raymlops_timer = None
        if getattr(protocol, "cycle", None) is cycle and not protocol.transport.is_closing():
            protocol.transport.close()

    deadline = type(protocol)._raymlops_header_deadline
    protocol._raymlops_cycle = cycle
    protocol._raymlops_timer = asyncio.get_running_loop().call_later(deadline(), expire)


def _arming_on_connect(made: Callable[..., Any]) -> Any:
    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        _arm(self)

    return connection_made


def _arming_on_data(received: Callable[..., Any]) -> Any:
    def data_received(self: Any, data: bytes) -> None:
        cycle = getattr(self, "cycle", None)
        between = cycle is None or getattr(cycle, "response_complete", False)
        if between and (
            getattr(self, "_raymlops_timer", None) is None
            or getattr(self, "_raymlops_cycle", None) is not cycle
        ):
            _arm(self)
        received(self, data)
        timer = getattr(self, "_raymlops_timer", None)
        if timer is not None and getattr(self, "cycle", None) is not self._raymlops_cycle:
            timer.cancel()  # the headers are in: no timer waits out the deadline per request
            self._raymlops_timer = None

    return data_received


def read_deadline_middlewares() -> list[Any]:
    """Serve's HTTP-server callback (READ_DEADLINE_CALLBACK): bounds this process's header
    reads, joins each response's writes (`raymlops.serve.response_writes`: the callback is
    the one hook Serve gives into the servers' process) and returns the body-deadline
    middleware. Never raises: a raising callback would keep Serve's proxy from starting."""
    from starlette.middleware import Middleware

    deadline = ReadDeadline()
    try:
        bound_header_reads(deadline)
    except Exception:
        logger.exception("raymlops: could not bound header reads")
    try:
        join_response_writes()
    except Exception:
        logger.exception("raymlops: could not join response writes")
    return [Middleware(BodyDeadline, deadline=deadline)]
