"""model: what turns rows into predictions — fitted preprocessing (features), torch
architectures, metrics, the torch-free artifact format and the `Predictor`, the one code
path from rows to predictions that trials, Serve replicas and Ray Data actors all call.

Layer 2: may import `data` and `core`.
"""
