"""registry: one `Registry` interface over MLflow's tracking store and model registry —
runs, registered versions, aliases and the alias history MLflow lacks. No raw MLflow client
leaves it.

Layer 3: may import `model`, `data` and `core`.
"""
