"""Finding and stopping every process of a process session.

`ray start` and a driver's local Ray start daemons and workers that leave their parent's
process group but stay in its session, so the session of a subprocess started with
`start_new_session=True` holds a Ray node and everything it started. Such a node is stopped
by signalling its session's processes by PID — never with `ray stop`, which stops every Ray
on the machine, other users' included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

__all__ = ["session_processes", "stop_session"]


def session_processes(sid: int) -> dict[int, str]:
    """Live processes of session `sid`, PID → command line; zombies and this process are
    left out."""
    # -ww: whole command lines (ps cuts them to $COLUMNS otherwise).
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True
    )
    found = {}
    for line in out.stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 3:
            continue
        pid, session, stat = int(parts[0]), int(parts[1]), parts[2]
        if session == sid and not stat.startswith("Z") and pid != os.getpid():
            found[pid] = parts[3] if len(parts) > 3 else ""
    return found


def stop_session(sid: int, term_s: float = 10.0, kill_s: float = 20.0) -> dict[int, str]:
    """Signal every process of session `sid` until none is left: SIGTERM for `term_s`
    seconds, then SIGKILL for up to `kill_s` more (`term_s=0`: SIGKILL at once, as a crash
    would). Each round lists the session again, so a process started while the others go
    down (HAProxy respawned by its dying manager) is caught too.

    Returns the processes found at the start; `session_processes(sid)` afterwards says
    whether any outlived the deadline."""
    found = session_processes(sid)
    started = time.monotonic()
    pids = found
    while pids and time.monotonic() - started < term_s + kill_s:
        sig = signal.SIGTERM if time.monotonic() - started < term_s else signal.SIGKILL
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        time.sleep(0.3)
        pids = session_processes(sid)
    return found
