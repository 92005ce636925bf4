"""Where state lives that more than one machine must see, and reading and writing it
wherever it is: a local folder on one machine, an object store (s3://, gs://, …) on a
cluster whose nodes share nothing but the network.

`storage` (the config key, default $RAYMLOPS_STORAGE) is the one root a cluster needs: the
job chain's run folders live under `<storage>/runs`, and Tune's storage and the prediction
log default to `<storage>/tune` and `<storage>/predictions` when their own keys are unset.
Unset, everything stays under the home folder, as on a laptop.

Locations are plain strings (a path or a URI) opened with pyarrow's file systems, which
take S3's settings from the usual places (AWS_* variables, AWS_ENDPOINT_URL for an
S3-compatible store such as MinIO).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from raymlops.core.errors import ServiceUnreachableError, UserInputError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = [
    "ENV_STORAGE",
    "check_reachable",
    "exists",
    "is_local",
    "join",
    "network_failure",
    "open_location",
    "reaching",
    "read_bytes",
    "storage_root",
    "write_bytes",
]

#: Environment variable that sets `storage` when the config does not.
ENV_STORAGE = "RAYMLOPS_STORAGE"


def storage_root(configured: str | None = None) -> str | None:
    """The shared storage root: the config's `storage`, else $RAYMLOPS_STORAGE, else None."""
    root = configured or os.environ.get(ENV_STORAGE) or None
    return root.rstrip("/") if root else None


def is_local(location: str) -> bool:
    """Whether `location` is on this machine's disk (a path or a file:// URI): somewhere
    another machine cannot read."""
    return "://" not in location or location.startswith("file://")


def join(root: str, *parts: str) -> str:
    """`root/part/…` for a path or a URI alike."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts if p)])


def open_location(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system and the path within it of a local path or a URI
    (file://, s3://, gs://, hdfs://…)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        if "://" in location:
            with reaching(location):  # resolving an S3 bucket's region asks the store
                fs, path = pafs.FileSystem.from_uri(location)
            return fs, path.rstrip("/")
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UserInputError(f"cannot open {location}: {exc}") from None
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


#: What pyarrow's object-store clients say when the store itself did not answer (as
#: opposed to a missing file or a refused permission). Only their own phrases: a plain
#: "Connection refused" may come from any service (an MLflow server's, Ray's).
_NETWORK_SIGNS = (
    "AWS Error NETWORK_CONNECTION",
    "curlCode",
    "Could not resolve host",
    "Couldn't resolve host",
)


def network_failure(exc: BaseException) -> str | None:
    """The line of `exc` (or of an exception it was raised from) that says a store did not
    answer, or None when the error is something else."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if isinstance(seen, OSError | ConnectionError) and any(s in text for s in _NETWORK_SIGNS):
            detail = text.split("Details:", 1)[-1].strip() if "Details:" in text else text
            return detail.splitlines()[0][:200] if detail else type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def reaching(location: str) -> Iterator[None]:
    """Turn "the object store did not answer" while working on `location` into a
    ServiceUnreachableError naming it (exit 1); other errors pass unchanged."""
    try:
        yield
    except ServiceUnreachableError:
        raise
    except Exception as exc:
        detail = network_failure(exc)
        if detail is None:
            raise
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        where = f" (endpoint {endpoint})" if endpoint and location.startswith("s3://") else ""
        raise ServiceUnreachableError(
            f"the object store does not answer for {location}{where}: {detail}"
        ) from None


def check_reachable(location: str) -> None:
    """Fail fast, before any work, when `location` is in an object store that does not
    answer (ServiceUnreachableError naming it). A local path always passes."""
    if is_local(location):
        return
    exists(location)


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file (its folder created as needed). On a local disk the file appears
    complete or not at all (written aside, then renamed); object stores do that anyway."""
    import pyarrow.fs as pafs

    fs, path = open_location(location)
    parent = path.rsplit("/", 1)[0]
    with reaching(location):
        fs.create_dir(parent, recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            hidden = f"{parent}/.{path.rsplit('/', 1)[1]}.tmp"
            with fs.open_output_stream(hidden) as out:
                out.write(data)
            os.replace(hidden, path)
            return
        with fs.open_output_stream(path) as out:
            out.write(data)


def read_bytes(location: str) -> bytes | None:
    """A whole file's bytes, or None when there is no such file."""
    import pyarrow.fs as pafs

    fs, path = open_location(location)
    with reaching(location):
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())


def exists(location: str) -> bool:
    """Whether a file or folder is there."""
    import pyarrow.fs as pafs

    fs, path = open_location(location)
    with reaching(location):
        return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)
