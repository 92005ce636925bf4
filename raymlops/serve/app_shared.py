"""What the Serve application's deployments share: the sync interval, request-id and
error-body helpers, the per-request records, the registry they open, and a hook on the
replica process's SIGTERM."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
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


def uvicorn_classes(httptools_name: str, h11_name: str) -> list[type[Any]]:
    """The classes of uvicorn's two HTTP implementations that raymlops hooks (the protocol,
    the request-response cycle), each named as its module names it; those missing (h11 or
    httptools not installed, a uvicorn that moved them) are left out."""
    import importlib

    found: list[type[Any]] = []
    for module, name in (
        ("uvicorn.protocols.http.httptools_impl", httptools_name),
        ("uvicorn.protocols.http.h11_impl", h11_name),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), name))
    return found
