"""Telling "the object store does not answer" from every other storage error (#14)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymlops.core.errors import ServiceUnreachableError
from raymlops.core.storage import check_reachable, network_failure, reaching

#: What pyarrow's S3 client says when nothing listens at the endpoint.
_REFUSED = OSError(
    "When creating bucket 'b': AWS Error NETWORK_CONNECTION during HeadBucket operation: "
    "curlCode: 7, Could not connect to server; Details: Failed to connect to 127.0.0.1 "
    "port 9 after 0 ms: Could not connect to server"
)


def test_a_store_that_does_not_answer_is_told_from_other_errors() -> None:
    assert network_failure(_REFUSED) == (
        "Failed to connect to 127.0.0.1 port 9 after 0 ms: Could not connect to server"
    )
    try:
        try:
            raise _REFUSED
        except OSError as exc:
            raise RuntimeError("a wrapper") from exc
    except RuntimeError as wrapped:
        assert network_failure(wrapped) is not None
    assert network_failure(FileNotFoundError("s3://b/x: no such key")) is None
    assert network_failure(PermissionError("AWS Error ACCESS_DENIED")) is None
    assert network_failure(ValueError("Connection refused")) is None  # not an I/O error


def test_reaching_names_the_location_and_passes_other_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    named = r"for s3://b/x \(endpoint http://127"
    with pytest.raises(ServiceUnreachableError, match=named), reaching("s3://b/x"):
        raise _REFUSED
    with pytest.raises(FileNotFoundError), reaching("s3://b/x"):
        raise FileNotFoundError("no such key")
    check_reachable(str(tmp_path / "not-there-yet"))  # a local path: nothing to reach


def test_another_service_refusing_is_not_called_the_object_store() -> None:
    """An MLflow server or Ray refusing a connection says so in its own words."""
    refused = ConnectionRefusedError(111, "Connection refused")
    assert network_failure(refused) is None
    assert network_failure(OSError("HTTPConnectionPool(host='h', port=5000): timed out")) is None
