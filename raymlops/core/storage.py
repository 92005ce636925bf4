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

import os
from pathlib import Path
from typing import TYPE_CHECKING

from raymlops.core.errors import UserInputError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = [
    "ENV_STORAGE",
    "exists",
    "is_local",
    "join",
    "open_location",
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
            fs, path = pafs.FileSystem.from_uri(location)
            return fs, path.rstrip("/")
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UserInputError(f"cannot open {location}: {exc}") from None
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file (its folder created as needed). On a local disk the file appears
    complete or not at all (written aside, then renamed); object stores do that anyway."""
    import pyarrow.fs as pafs

    fs, path = open_location(location)
    parent = path.rsplit("/", 1)[0]
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
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read())


def exists(location: str) -> bool:
    """Whether a file or folder is there."""
    import pyarrow.fs as pafs

    fs, path = open_location(location)
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)
