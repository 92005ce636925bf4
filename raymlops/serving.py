"""Compatibility path for one release: `raymlops.serving:app_builder` (Ray Serve configs
written by `raymlops serve config` name it) and the names this module used to hold, which
now live in `raymlops.serve.api`."""

from raymlops.serve.api import *  # noqa: F403
from raymlops.serve.api import __all__ as __all__
