"""Session-ticket keys shared by every edge worker, rotated on a schedule.

Each worker is its own process, and OpenSSL gives every context random ticket keys, so a
client resuming on another worker would pay for a full handshake. The workers instead derive
the same key from a seed the edge's main process creates at start, one key per epoch.

Python's `ssl` has no call for this (see `edge.openssl`); if it cannot be done, the workers
keep OpenSSL's per-process keys (resumption still works on the same worker).
"""

from __future__ import annotations

import ssl
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aerodrome.edge import openssl

TICKET_KEYS_LEN = 80  # 16-byte key name, 32-byte HMAC key, 32-byte AES key
EPOCH_SECONDS = 12 * 3600


def epoch(now: float | None = None) -> int:
    return int((now or time.time()) // EPOCH_SECONDS)


def ticket_keys(seed: bytes, at_epoch: int) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=TICKET_KEYS_LEN,
        salt=None,
        info=f"aerodrome/edge/tickets/{at_epoch}".encode(),
    ).derive(seed)


def install(ctx: ssl.SSLContext, keys: bytes) -> bool:
    """Set the ticket keys of `ctx`; False (and nothing changed) if it cannot be done."""
    return len(keys) == TICKET_KEYS_LEN and openssl.set_ticket_keys(ctx, keys)
