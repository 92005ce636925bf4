"""monitor: drift statistics against the training profile (no Ray), the Ray Data pass over
recent rows or the prediction log, KPIs, and the HTML report.

Layer 4 (beside train, serve and batch, none of which it imports): may import `registry`,
`model`, `data` and `core`.
"""
