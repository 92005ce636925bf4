"""Counting the prediction-log rows a replica held in memory when it was killed.

A process killed with SIGKILL (or by the OOM killer, or a segfault) cannot count what it
loses, and a replica that answered a request has no way to hand its buffered rows to anyone
but itself. So every `PredictionLogWriter` keeps a ledger: a small file on the node's disk,
memory-mapped, in which it records how many rows it accepted into its buffer, how many it
settled (written to the log, or counted as dropped when a write failed) and which file it is
writing right now. The counters are plain stores into the mapping: no system call on the
request path, and the kernel keeps them when the process dies.

The ledger's owner holds an exclusive `flock` on it for its whole life; the kernel releases
it when the process dies, however it dies. Any other writer of the same log on the same node
(the survivors, the replacement replica) looks for ledgers nobody holds: their owner is
dead. It claims one by taking the lock, counts `accepted - settled` rows as lost (minus the
file being written, if it was published before the kill), marks it counted and removes it.
A writer that closes cleanly has settled everything and removes its own ledger.

What the count is, exactly: the rows accepted into a dead writer's buffer that never reached
the log. The replica logs a request before it sends the answer, so every answered row is in
that count; a request killed between the two is counted though its client saw no answer
(and retried it), so as a count of answered-but-unlogged rows it is an upper bound, off by
at most the requests in flight at the kill. Not counted: a node that is lost whole (its
ledgers go with it), and a platform without `fcntl`/`mmap` (Windows), where no ledger is kept.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LEDGER_SUFFIX", "DeadLedger", "Ledger", "claim_dead_ledgers"]

logger = logging.getLogger(__name__)

LEDGER_SUFFIX = ".ledger"
_SIZE = 4096
_MAGIC = 0x31474C444C4D4152  # b"RAMLDLG1", little-endian
# int64 words at the start of the file (aligned: one store each, never torn by a kill).
_W_MAGIC, _W_STATE, _W_ACCEPTED, _W_SETTLED, _W_INFLIGHT_ROWS, _W_INFLIGHT_BASE = range(6)
_W_STARTED_US, _W_INFLIGHT_LEN, _W_OWNER_LEN = 6, 7, 8
_INFLIGHT_AT, _INFLIGHT_MAX = 128, 1024  # the file being written, relative to the log
_OWNER_AT, _OWNER_MAX = _INFLIGHT_AT + _INFLIGHT_MAX, 256
_OPEN, _COUNTED = 0, 1
_STALE_TMP_S = 60.0

try:
    import fcntl
except ImportError:  # Windows: no ledger, losses on a kill go uncounted
    fcntl = None  # type: ignore[assignment]


class Ledger:
    """This process's ledger for one prediction log (see the module docstring)."""

    def __init__(self, path: Path, fd: int, mapping: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._map = mapping
        self._words = memoryview(mapping).cast("q")

    @classmethod
    def create(cls, folder: Path, owner: str) -> Ledger | None:
        """A new ledger in `folder`, locked by this process; None (and logged) where none
        can be kept."""
        if fcntl is None:
            return None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
            hidden = folder / f".{name}.tmp"  # scanners only look at *.ledger
            fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            os.ftruncate(fd, _SIZE)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mapping = mmap.mmap(fd, _SIZE)
        except OSError as exc:
            logger.warning("prediction log: no ledger in %s (%s); a kill's loss goes uncounted",
                           folder, exc)  # fmt: skip
            return None
        ledger = cls(folder / f"{name}{LEDGER_SUFFIX}", fd, mapping)
        encoded = owner.encode()[:_OWNER_MAX]
        mapping[_OWNER_AT : _OWNER_AT + len(encoded)] = encoded
        words = ledger._words
        words[_W_OWNER_LEN] = len(encoded)
        words[_W_STARTED_US] = int(time.time() * 1_000_000)
        words[_W_MAGIC] = _MAGIC
        os.rename(hidden, ledger.path)  # complete before any scanner can see it
        return ledger

    def accepted(self, rows: int) -> None:
        """Rows went into the buffer (called under the writer's buffer lock)."""
        self._words[_W_ACCEPTED] += rows

    def begin(self, relative_path: str, rows: int) -> None:
        """A file of `rows` rows is about to be published at `relative_path`."""
        encoded = relative_path.encode()[:_INFLIGHT_MAX]
        self._map[_INFLIGHT_AT : _INFLIGHT_AT + len(encoded)] = encoded
        words = self._words
        words[_W_INFLIGHT_LEN] = len(encoded)
        words[_W_INFLIGHT_BASE] = words[_W_SETTLED]
        words[_W_INFLIGHT_ROWS] = rows  # last: the slot is only read when this is set

    def settled(self, rows: int) -> None:
        """Rows were written, or counted as dropped; the file in flight (if any) is done.
        `settled` moves first: a scanner trusts the in-flight slot only while `settled`
        still equals the value it had when the slot was filled."""
        words = self._words
        words[_W_SETTLED] += rows
        words[_W_INFLIGHT_ROWS] = 0

    @property
    def unsettled(self) -> int:
        return int(self._words[_W_ACCEPTED] - self._words[_W_SETTLED])

    def close(self) -> None:
        """Remove the ledger if everything is settled (else leave it for a scanner to
        count), then let go of it."""
        if self.unsettled == 0:
            self.path.unlink(missing_ok=True)
        self._words.release()
        self._map.close()
        os.close(self._fd)  # releases the lock


@dataclass(frozen=True)
class DeadLedger:
    """What a dead writer's ledger said: its owner, and the rows it never wrote."""

    owner: str
    pid: int
    lost_rows: int


def claim_dead_ledgers(
    folder: Path, published: Callable[[str], bool], own: Path | None = None
) -> list[DeadLedger]:
    """Count and remove the ledgers in `folder` whose owner is dead. `published(relative
    path)` says whether a file a dead writer was writing reached the log."""
    if fcntl is None or not folder.is_dir():
        return []
    found: list[DeadLedger] = []
    for path in sorted(folder.iterdir()):
        if path == own:
            continue
        if path.name.endswith(LEDGER_SUFFIX):
            dead = _claim(path, published)
            if dead is not None:
                found.append(dead)
        elif path.name.startswith(".") and path.name.endswith(".tmp"):
            _remove_stale_tmp(path)
    return found


def _claim(path: Path, published: Callable[[str], bool]) -> DeadLedger | None:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # its owner is alive
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return None  # another scanner counted and removed it meanwhile
        except FileNotFoundError:
            return None
        data = os.pread(fd, _SIZE, 0)
        if len(data) < _SIZE:
            path.unlink(missing_ok=True)
            return None
        words = memoryview(data).cast("q")
        if words[_W_MAGIC] != _MAGIC or words[_W_STATE] == _COUNTED:
            path.unlink(missing_ok=True)
            return None
        lost = int(words[_W_ACCEPTED] - words[_W_SETTLED])
        inflight = int(words[_W_INFLIGHT_ROWS])
        if inflight and words[_W_INFLIGHT_BASE] == words[_W_SETTLED]:
            relative = data[_INFLIGHT_AT : _INFLIGHT_AT + words[_W_INFLIGHT_LEN]].decode()
            if published(relative):
                lost -= inflight
        owner = data[_OWNER_AT : _OWNER_AT + words[_W_OWNER_LEN]].decode(errors="replace")
        os.pwrite(fd, _COUNTED.to_bytes(8, "little"), _W_STATE * 8)
        path.unlink(missing_ok=True)
        pid = int(path.name.split("-", 1)[0]) if path.name[0].isdigit() else 0
        return DeadLedger(owner, pid, max(lost, 0))
    finally:
        os.close(fd)


def _remove_stale_tmp(path: Path) -> None:
    """A ledger whose owner died while creating it (nothing was accepted yet)."""
    try:
        if time.time() - path.stat().st_mtime > _STALE_TMP_S:
            path.unlink(missing_ok=True)
    except OSError:
        pass
