"""loop: the closed loop — the gate (thresholds, champion vs challenger), model cards,
promotion and its governance, the retrain policy and the main job that runs it all.

Layer 5: may import every capability below it (train, serve, batch, monitor, registry,
model, data, core).
"""
