"""Safe artifact files: SHA-256 digests and pickle-free tensor state."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from raymlops.core.errors import ArtifactIntegrityError

MANIFEST = "manifest.json"

#: What a digest list (a version's tags, a folder's manifest) may name: a plain file in the
#: model folder (no folder part, not hidden), so that a tampered list cannot make a loader
#: read or write outside that folder.
_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def plain_artifact_name(name: str) -> bool:
    """Whether `name` is a plain artifact file name (see `_ARTIFACT_NAME`)."""
    return bool(_ARTIFACT_NAME.fullmatch(name)) and ".." not in name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")


def write_manifest(folder: Path) -> dict[str, str]:
    """Record the SHA-256 of every file in `folder` (except the manifest) and return them."""
    digests = {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    write_json(folder / MANIFEST, digests)
    return digests


def verify_folder(folder: Path, expected: dict[str, str]) -> None:
    """Raise ArtifactIntegrityError unless every expected file exists with its digest (and
    is named as a plain file of `folder`)."""
    for name, digest in expected.items():
        if not plain_artifact_name(name):
            raise ArtifactIntegrityError(f"artifact file name {name!r} is not a plain file name")
        path = folder / name
        if not path.is_file():
            raise ArtifactIntegrityError(f"artifact file {name} is missing from {folder}")
        actual = sha256_file(path)
        if actual != digest:
            raise ArtifactIntegrityError(
                f"artifact file {name} has sha256 {actual[:12]}…, the registry recorded "
                f"{digest[:12]}…; refusing to load it"
            )


def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], Any]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: Any) -> dict[str, Any]:
    """Inverse of flatten_optimizer_state."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}
