"""What the Serve application's deployments share: the sync interval, request-id and
error-body helpers, the per-request records, the registry they open, a hook on the
replica process's SIGTERM, and the request-read deadline of the HTTP servers in front of
them (Serve's Python proxy, the replicas' own servers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raymlops.serve.schema import RequestSchema

logger = logging.getLogger("ray.serve")

#: How often each replica reports its figures to the coordinator and picks up routing.
SYNC_INTERVAL_S = 0.25
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_JSON = (b"content-type", b"application/json")
_MARK = (b"x-raymlops", b"1")
_BATCH_ROWS_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384]


class _Disconnected(Exception):
    """The client went away before its body arrived."""


@dataclass
class _Loaded:
    """One served version in this replica."""

    version: int
    predictor: Any
    schema: RequestSchema
    classes: list[str] | None
    info: dict[str, Any]


@dataclass
class _Item:
    loaded: _Loaded
    columns: dict[str, np.ndarray]
    rows: int


@dataclass
class _Outcome:
    predictions: np.ndarray
    probabilities: np.ndarray | None


@dataclass
class _PendingMetrics:
    latencies: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    errors: dict[tuple[int, str], int] = field(default_factory=dict)
    batch_rows: dict[int, list[int]] = field(default_factory=dict)


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _send(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                _JSON,
                _MARK,
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _error_body(message: str, request_id: str, field_name: str | None = None) -> bytes:
    out: dict[str, Any] = {"error": message}
    if field_name is not None:
        out["field"] = field_name
    out["request_id"] = request_id
    return json.dumps(out).encode()


_SIGTERM_HOOKS: list[Callable[[], None]] = []
_RAY_EXIT = "raise_sys_exit_with_custom_error_message"


def on_sigterm(hook: Callable[[], None]) -> bool:
    """Run `hook` in this Ray worker when it gets SIGTERM, before Ray's handler starts the
    worker's exit; False (and logged) where that handler cannot be chained.

    Why not a handler of our own: only the main thread may install one, and a replica's code
    never runs there. Ray's worker handles SIGTERM with a handler that calls
    `raise_sys_exit_with_custom_error_message`, looked up in its module at call time; that
    name is wrapped so the hooks run first. Nor atexit alone: Ray 2.60's worker exit first
    waits for the tasks the worker submitted to finish, and under traffic we saw a SIGTERMed
    replica keep answering for a minute, until Serve force-killed it; that kill runs no
    exit hook."""
    handler = signal.getsignal(signal.SIGTERM)
    code = getattr(handler, "__code__", None)
    scope = getattr(handler, "__globals__", None)
    if code is None or scope is None or _RAY_EXIT not in code.co_names or _RAY_EXIT not in scope:
        logger.warning("raymlops: SIGTERM handler %r is not Ray's; not hooked", handler)
        return False
    if not _SIGTERM_HOOKS:
        original = scope[_RAY_EXIT]

        def chained(*args: Any, **kwargs: Any) -> Any:
            logger.warning("raymlops: SIGTERM; running %d hook(s)", len(_SIGTERM_HOOKS))
            for each in list(_SIGTERM_HOOKS):
                try:
                    each()
                except Exception:
                    logger.exception("raymlops: a SIGTERM hook failed")
            return original(*args, **kwargs)

        scope[_RAY_EXIT] = chained
    _SIGTERM_HOOKS.append(hook)
    return True


#: Set (to "1") in the environment of a head whose listeners must all be on loopback.
LOOPBACK_ONLY_ENV = "RAYMLOPS_LOOPBACK_ONLY"
_ANY_PORT = "[::]:0"


def keep_replica_grpc_on_loopback() -> bool:
    """On a loopback-only head, make this replica's inter-deployment gRPC server listen on
    127.0.0.1 instead of every interface; whether it was arranged.

    Ray 2.60's replica starts that server after the deployment's constructor with the
    address "[::]:0" hard-coded and no setting for it; the helper it binds with is looked
    up in the replica module at call time, so that name is wrapped to rewrite exactly that
    address (any other passes unchanged). Called from the deployments' constructors."""
    if os.environ.get(LOOPBACK_ONLY_ENV) != "1":
        return False
    try:
        from ray.serve._private import replica
    except ImportError:
        return False
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None:
        logger.warning("raymlops: Ray's replica gRPC bind is not where expected; not narrowed")
        return False
    if getattr(bind, "_raymlops_loopback", False):
        return True

    def on_loopback(server: Any, address: str) -> Any:
        return bind(server, "127.0.0.1:0" if address == _ANY_PORT else address)

    on_loopback._raymlops_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = on_loopback
    return True


def _registry(args: dict[str, Any]) -> Any:
    from raymlops.registry.store import Registry

    return Registry(args["tracking_uri"], args["home"])


# --------------------------------------------------------------------------- read deadline

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
READ_DEADLINE_CALLBACK = "raymlops.serve.app_shared:read_deadline_middlewares"
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
    classes: list[type[Any]] = []
    with contextlib.suppress(ImportError):
        from uvicorn.protocols.http.h11_impl import H11Protocol

        classes.append(H11Protocol)
    with contextlib.suppress(ImportError):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        classes.append(HttpToolsProtocol)
    arranged = False
    for cls in classes:
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
    reads and returns the body-deadline middleware. Never raises: a raising callback would
    keep Serve's proxy from starting."""
    from starlette.middleware import Middleware

    deadline = ReadDeadline()
    try:
        bound_header_reads(deadline)
    except Exception:
        logger.exception("raymlops: could not bound header reads")
    return [Middleware(BodyDeadline, deadline=deadline)]
