"""The exceptions raymlops raises on purpose.

Every error a user can cause (bad config, bad data, a missing model) derives from
:class:`UserInputError`, which the CLI turns into one line and exit code 2; other
:class:`RaymlopsError` subclasses mean the work itself failed (exit code 1).
"""

from __future__ import annotations

__all__ = [
    "ArtifactIntegrityError",
    "ConfigError",
    "DataError",
    "RaymlopsError",
    "RegistryError",
    "ResourceError",
    "SearchStalledError",
    "ServiceUnreachableError",
    "TrainingError",
    "UserInputError",
]


class RaymlopsError(Exception):
    """Base class of every error raymlops raises deliberately."""

    exit_code: int = 1


class UserInputError(RaymlopsError):
    """The input (config, data, arguments) is wrong; fixing it is the user's move."""

    exit_code = 2


class ConfigError(UserInputError):
    """A pipeline config is invalid: unknown key, wrong type or impossible value."""


class DataError(UserInputError):
    """A dataset cannot be used: unreadable, empty, missing columns, wrong types."""


class ResourceError(UserInputError):
    """A request for CPUs/GPUs that the Ray cluster can never satisfy."""


class RegistryError(UserInputError):
    """A registered model, version or alias that does not exist or cannot be used."""


class ArtifactIntegrityError(RaymlopsError):
    """A model artifact's SHA-256 does not match the digest recorded in the registry."""


class TrainingError(RaymlopsError):
    """Training ran but produced no usable model (every trial failed, for instance)."""


class SearchStalledError(TrainingError):
    """A search stopped because it could make no progress (resources held, trials waiting)."""


class ServiceUnreachableError(RaymlopsError):
    """A service the work needs (the MLflow tracking server, the object store) does not
    answer: nothing was changed there, and the same command can run again once it does."""
