"""A real uvicorn serving an ASGI application in a thread, for the tests of raymlops's hooks
into the HTTP servers of Serve's proxy and replicas."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


@contextlib.contextmanager
def uvicorn_in_thread(app: Any, http: str) -> Iterator[int]:
    """uvicorn with `http` ('httptools' or 'h11') serving `app` on a free loopback port,
    which it yields; stopped on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=http, lifespan="off", log_level="critical", access_log=False)
    served = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=lambda: loop.run_until_complete(served.serve(sockets=[sock])), daemon=True
    )
    thread.start()
    while not served.started:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        served.should_exit = True
        thread.join(10)
        loop.close()
        sock.close()
