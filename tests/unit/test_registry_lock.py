"""The alias lock's answer to a server that words a contended create as "not found" (#14).

An MLflow server whose insert of a lock name fails reads the existing model to word its
error; when the holder releases the lock in between, the answer is RESOURCE_DOES_NOT_EXIST
(seen in CI with 16 writers on two nodes). The stand-in below answers exactly that sequence
(a real server gives it only under a race no test can time).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2

from raymlops.registry.lock import LOCK_PREFIX, alias_lock


class _RacingServer:
    """Answers the first creates with the given error codes, then creates."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.models: dict[str, dict[str, str]] = {}

    def create_registered_model(self, name: str, tags: Any = None, description: Any = None) -> None:
        if self.answers:
            code = getattr(databricks_pb2, self.answers.pop(0))
            raise MlflowException(f"create {name}", error_code=code)
        self.models[name] = dict(tags or {})

    def get_registered_model(self, name: str) -> Any:
        if name not in self.models:
            raise MlflowException(
                f"{name} not found", error_code=databricks_pb2.RESOURCE_DOES_NOT_EXIST
            )
        return SimpleNamespace(tags=self.models[name])

    def delete_registered_model(self, name: str) -> None:
        del self.models[name]


def test_a_contended_create_answered_not_found_is_retried(tmp_path: Path) -> None:
    server = _RacingServer("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")
    with alias_lock(server, "http://mlflow:5000", tmp_path, "m"):  # type: ignore[arg-type]
        assert LOCK_PREFIX + "m" in server.models  # held after two contended tries
    assert server.models == {}  # released


def test_any_other_error_of_the_server_is_raised(tmp_path: Path) -> None:
    server = _RacingServer("INTERNAL_ERROR")
    lock = alias_lock(server, "http://mlflow:5000", tmp_path, "m")  # type: ignore[arg-type]
    with pytest.raises(MlflowException, match="create"), lock:
        pass
