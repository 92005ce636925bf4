"""Fixtures shared by the unit tests.

Unit tests must never start Ray: like Ray's own unit tests, every test here runs with
`ray.init` replaced by a function that fails the test. Importing ray for the patch costs
about half a second once per session.
"""

from __future__ import annotations

from typing import Any, NoReturn

import pytest

FORBIDDEN_MESSAGE = (
    "unit tests must not start Ray: ray.init() was called; move this test to tests/integration"
)


def _forbidden_ray_init(*args: Any, **kwargs: Any) -> NoReturn:
    # pytest.fail raises a BaseException subclass, so `except Exception` in the code under
    # test cannot swallow it.
    pytest.fail(FORBIDDEN_MESSAGE, pytrace=False)


@pytest.fixture(autouse=True)
def forbid_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any unit test that calls ray.init (under either of its import paths)."""
    monkeypatch.setattr("ray.init", _forbidden_ray_init)
    monkeypatch.setattr("ray._private.worker.init", _forbidden_ray_init)
