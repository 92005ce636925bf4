"""What the Serve application's deployments share: the sync interval, request-id and
error-body helpers, the per-request records, and the registry they open."""

from __future__ import annotations

import json
import logging
import re
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
    dropped_rows: int = 0


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


def _registry(args: dict[str, Any]) -> Any:
    from raymlops.registry.store import Registry

    return Registry(args["tracking_uri"], args["home"])
