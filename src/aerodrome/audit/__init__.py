"""The tamper-evident audit log: a SHA-256 hash chain with Ed25519-signed checkpoints."""
