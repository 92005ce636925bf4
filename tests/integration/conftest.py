"""What every integration module shares: the environment scrubbed of settings that would
point raymlops elsewhere, and one local Ray per module (`ray_cluster`, 2 CPUs, no dashboard,
the environment `raymlops.core.ray_session` sets). A module with other needs (an object
store bound, environment for its workers) overrides `ray_cluster` with `local_ray(...)`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.ray_support import SCRUBBED_ENV, local_ray


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SCRUBBED_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[dict[str, float]]:
    """One local Ray for the module (2 CPUs); yields its resources."""
    with local_ray() as resources:
        yield resources
