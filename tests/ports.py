"""Ports for servers that tests start later (a Serve endpoint, a Ray head, an MLflow server)."""

from __future__ import annotations

import random
import socket

#: Drawn from here: above Ray's default worker ports (10002-19999) and below Linux's
#: ephemeral range (32768-60999), where Ray's own processes and every outgoing connection
#: are handed ports.
_LOW, _HIGH = 20_000, 32_000


def free_port() -> int:
    """A loopback port nothing listens on now, and that nothing else is likely to be handed
    before the test's server binds it seconds later: a port the kernel chose (bind to 0) can
    be given to one of the processes Ray starts in between (an endpoint then failed to start
    with "Address already in use")."""
    draw = random.SystemRandom()
    for _ in range(200):
        port = draw.randrange(_LOW, _HIGH)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {_LOW}-{_HIGH}")
