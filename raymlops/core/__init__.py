"""core: what every layer stands on — config loading and the config schema, errors, the
home folder and paths, durations, the captured environment, process sessions and the Ray
session (local or joined).

Layer 0: imports nothing else of raymlops.
"""
