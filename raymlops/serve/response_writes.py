"""One socket write per HTTP response in the uvicorn servers of the replicas and of Serve's
proxy (installed by Serve's HTTP-server callback, `raymlops.serve.read_deadline`).

uvicorn writes a response's status line and headers as soon as the application sends
`http.response.start`, then its body in a second write: two `send` system calls and two
trips through asyncio's transport for every prediction, 12% of a replica's CPU under load
(benchmarks/RESULTS.md, serve_throughput's profile). Holding the head until the first body
message joins them into one write; a client sees the same bytes, only never a head without
its first body chunk."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from raymlops.serve.app_shared import logger, uvicorn_classes

_MARK = "_raymlops_one_write"


class _HeldHead:
    """Stands in for a response cycle's transport while uvicorn writes the response's head:
    the bytes are kept for the body's write instead of going to the socket."""

    __slots__ = ("held", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.held: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.held.append(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _HeadFirst:
    """Stands in for a response cycle's transport while uvicorn writes the first body chunk:
    its first write carries the held head in front of it."""

    __slots__ = ("head", "transport")

    def __init__(self, transport: Any, head: bytes) -> None:
        self.transport = transport
        self.head = head

    def write(self, data: bytes) -> None:
        head, self.head = self.head, b""
        self.transport.write(head + data if head else data)

    def close(self) -> None:
        if self.head:  # a body that writes nothing (HEAD) on a connection that ends here
            self.write(b"")
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def _one_write(send: Callable[[Any, Any], Awaitable[None]]) -> Any:
    async def one_write_send(self: Any, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            real = self.transport
            holder = _HeldHead(real)
            self.transport = holder
            try:
                await send(self, message)
            finally:
                self.transport = real
            self._raymlops_head = b"".join(holder.held)
            return
        head = getattr(self, "_raymlops_head", b"")
        if not head:
            await send(self, message)
            return
        self._raymlops_head = b""
        real = self.transport
        first = _HeadFirst(real, head)
        self.transport = first
        try:
            await send(self, message)
        finally:
            self.transport = real
            if first.head and not getattr(self, "disconnected", False):
                real.write(first.head)  # the body wrote nothing: the head alone, as before

    setattr(one_write_send, _MARK, True)
    return one_write_send


def join_response_writes() -> bool:
    """Make this process's uvicorn write each response's head and first body chunk in one
    socket write; whether it was arranged (a later call changes nothing)."""
    arranged = False
    for cls in uvicorn_classes("RequestResponseCycle", "RequestResponseCycle"):
        send = getattr(cls, "send", None)
        if send is None:
            continue
        if not getattr(send, _MARK, False):
            cls.send = _one_write(send)
        arranged = True
    if not arranged:
        logger.warning("raymlops: uvicorn's response cycles are not where expected")
    return arranged
