"""The names of the main job's steps (kept apart so that launching them needs no import of
the steps themselves)."""

from __future__ import annotations

__all__ = ["PIPELINE_STEPS"]

#: The main job's steps, in order: `raymlops run` runs them in one process, `raymlops run
#: --address http://…` each as a Ray job (`raymlops run --step STEP --work FOLDER`).
PIPELINE_STEPS: tuple[str, ...] = (
    "train",
    "gate",
    "promote",
    "batch",
    "serve",
    "traffic",
    "monitor",
    "retrain",
    "finish",
)
