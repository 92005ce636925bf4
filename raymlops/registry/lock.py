"""One model's alias lock, held while an alias moves and the move is appended to the alias
history (read the alias, compare, set, number the event): the compare-and-set that keeps
"exactly one champion, every change recorded, in order" true under concurrent writers.

Where the writers are decides the mechanism:

- **The embedded store** (a SQLite file, one machine): a file lock next to it. Every
  process that can open that SQLite file can open the lock file.
- **A tracking server** (a cluster's nodes, a laptop, CI — machines that share nothing but
  the network): a lock in MLflow itself. Creating a registered model is atomic in every
  MLflow store (a unique name, one row in a transaction), so `create_registered_model` of
  a lock name either succeeds — the lock is ours — or fails with RESOURCE_ALREADY_EXISTS.
  It needs nothing the writers do not already reach (no database credentials on the nodes,
  no extra service), and works against any MLflow server. The lock carries a lease: a
  holder that died (SIGKILL mid-move) leaves a lock that the next writer removes once the
  lease has run out, so a crash delays writers by at most the lease, never blocks them.

A lock model is named `raymlops-lock--<model>`; it lives for the few hundred milliseconds
of one alias move, and `Registry.list_models` leaves such names out.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from raymlops.core.errors import RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["LOCK_PREFIX", "alias_lock", "is_lock_name"]

#: Registered-model names of locks start with this.
LOCK_PREFIX = "raymlops-lock--"
_HOLDER_TAG = "raymlops.lock.holder"
_EXPIRES_TAG = "raymlops.lock.expires"
#: Seconds a lock holder may hold it; a lock older than that is taken as left by a crash.
LEASE_S = 30.0
#: Seconds a writer waits for the lock before giving up.
WAIT_S = 120.0
#: What a failed create of a lock that someone else holds (or just released) answers.
_CONTENDED = ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")


def is_lock_name(name: str) -> bool:
    """Whether a registered model name is one of these locks."""
    return name.startswith(LOCK_PREFIX)


@contextmanager
def alias_lock(client: MlflowClient, tracking_uri: str, home: Path, model: str) -> Iterator[None]:
    """Hold the alias lock of `model` for the block (see the module's docstring)."""
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        from filelock import FileLock

        folder = home / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / f"alias-{model}.lock"), timeout=WAIT_S):
            yield
        return
    with _registry_lock(client, LOCK_PREFIX + model):
        yield


@contextmanager
def _registry_lock(client: MlflowClient, name: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    holder = uuid.uuid4().hex
    deadline = time.monotonic() + WAIT_S
    pause = 0.02
    while True:
        try:
            client.create_registered_model(
                name,
                tags={_HOLDER_TAG: holder, _EXPIRES_TAG: repr(time.time() + LEASE_S)},
                description="raymlops alias lock (held while an alias moves; removed after)",
            )
            break
        except MlflowException as exc:
            # Held by another writer. The server may also answer RESOURCE_DOES_NOT_EXIST:
            # after its insert fails it reads the existing model to word the error, and the
            # holder can release it in between (seen with 16 writers on two nodes).
            if exc.error_code not in _CONTENDED:
                raise
        _remove_if_expired(client, name)
        if time.monotonic() > deadline:
            raise RegistryError(
                f"the alias lock {name} was held by others for {WAIT_S:.0f} s; "
                "try again (a lock left by a crashed process expires after "
                f"{LEASE_S:.0f} s)"
            )
        time.sleep(pause * (0.5 + random.random()))
        pause = min(pause * 2, 0.5)
    try:
        yield
    finally:
        _release(client, name, holder)


def _remove_if_expired(client: MlflowClient, name: str) -> None:
    """Remove a lock whose lease ran out (its holder died): only the very lock that was
    seen expired, not one a faster writer created since."""
    from mlflow.exceptions import MlflowException

    try:
        held = client.get_registered_model(name)
    except MlflowException:
        return  # released meanwhile
    tags = held.tags or {}
    expires = float(tags.get(_EXPIRES_TAG, "0") or 0)
    if time.time() <= expires:
        return
    with contextlib.suppress(MlflowException):
        again = client.get_registered_model(name)
        if (again.tags or {}).get(_HOLDER_TAG) == tags.get(_HOLDER_TAG):
            client.delete_registered_model(name)


def _release(client: MlflowClient, name: str, holder: str) -> None:
    """Delete the lock if it is still ours (a holder that overran its lease may have lost
    it to another writer)."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        held = client.get_registered_model(name)
        if (held.tags or {}).get(_HOLDER_TAG) == holder:
            client.delete_registered_model(name)
