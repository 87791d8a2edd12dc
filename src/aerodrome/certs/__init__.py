"""TLS certificates: a local CA, ACME issuance, the certificate manager, and what the edge
loads (`load_edge_certificates`, `load_challenges`). See docs/architecture.md,
"Certificates", and docs/decisions/0005-certificates.md."""
