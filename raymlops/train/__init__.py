"""train: one trial's torch loop, data-parallel trials on Ray Train, streaming input, the
Ray Tune search, its live tracking in MLflow, and the guards that keep a search from
holding CPUs for good.

Layer 4 (beside serve, batch and monitor, none of which it imports): may import
`registry`, `model`, `data` and `core`.
"""
