"""serve: online inference on Ray Serve — the head, the coordinator and ingress, the request
schema, canary and rollback, the prediction log and the HTTP client.

Layer 4 (beside train, batch and monitor, none of which it imports): may import
`registry`, `model`, `data` and `core`.
"""
