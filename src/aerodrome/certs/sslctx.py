"""`ssl` contexts from PEM held in memory.

The standard library loads certificates and keys only from files. To keep private keys off
every filesystem, they are handed over through anonymous in-memory files (`memfd_create`,
Linux) read via `/proc/self/fd/N`; where that is unavailable, through a file in a private
temporary directory that is removed at once, the key in it encrypted under a random one-time
password (so no private key reaches a disk in plaintext, not even for a moment).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization

ACME_TLS_ALPN_PROTOCOL = "acme-tls/1"  # RFC 8737


@contextlib.contextmanager
def _memory_file(name: str, data: bytes) -> Iterator[str]:
    if _in_memory():
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="aero-tls-") as tmp:  # 0700
        path = Path(tmp) / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            yield str(path)
        finally:
            path.unlink(missing_ok=True)


def _in_memory() -> bool:
    return hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir()


def load_cert_chain(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """`context.load_cert_chain` from PEM bytes (chain leaf first, then intermediates)."""
    password: bytes | None = None
    if not _in_memory():
        password = secrets.token_urlsafe(32).encode()
        private = serialization.load_pem_private_key(key_pem, password=None)
        key_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
    with _memory_file("chain.pem", chain_pem) as chain, _memory_file("key.pem", key_pem) as key:
        context.load_cert_chain(chain, key, password=password)


def server_context(
    chain_pem: bytes, key_pem: bytes, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A TLS 1.2+ server context serving this chain."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_chain(context, chain_pem, key_pem)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context
