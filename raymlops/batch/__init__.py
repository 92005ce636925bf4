"""batch: offline inference on Ray Data — the plan (actor pool, resources, units of work),
the actors and the exactly-once pass from Parquet/CSV in to Parquet out.

Layer 4 (beside train, serve and monitor, none of which it imports): may import
`registry`, `model`, `data` and `core`.
"""
