"""Secrets: envelope encryption bound to context, a versioned keyring, and a redactor.

The small API on top is `seal` / `unseal` (in `seal.py`), `Keyring` (`keyring.py`),
`digest` and `Redactor`. Callers never see a data key or a key-encryption key.
"""
