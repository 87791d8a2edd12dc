"""The control-plane HTTP API under `/v1`."""
