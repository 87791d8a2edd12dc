"""Session-ticket keys shared by every edge worker, rotated on a schedule.

Each worker is its own process, and OpenSSL gives every context random ticket keys, so a
client resuming on another worker would pay for a full handshake. The workers instead derive
the same key from a seed the edge's main process creates at start, one key per epoch.

Python's `ssl` has no call for this, so it goes through OpenSSL's `SSL_CTX_ctrl` with
`ctypes`. The context pointer is checked against `SSL_CTX_get_options` first; if anything
does not match, the workers keep OpenSSL's per-process keys (resumption still works on the
same worker).
"""

from __future__ import annotations

import ctypes
import ssl
import sys
import time
from functools import cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
TICKET_KEYS_LEN = 80  # 16-byte key name, 32-byte HMAC key, 32-byte AES key
EPOCH_SECONDS = 12 * 3600


@cache
def _libssl() -> ctypes.CDLL | None:
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libssl.so" in line), None)
    except OSError:
        return None
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    return lib


def _ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    # CPython's PySSLContext starts with PyObject_HEAD, then the SSL_CTX pointer.
    pointer = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    if not pointer or lib.SSL_CTX_get_options(pointer) != int(ctx.options):
        return None
    return pointer


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
    if sys.implementation.name != "cpython" or len(keys) != TICKET_KEYS_LEN:
        return False
    lib = _libssl()
    if lib is None:
        return False
    pointer = _ctx_pointer(ctx, lib)
    if pointer is None:
        return False
    buffer = ctypes.create_string_buffer(keys, TICKET_KEYS_LEN)
    return bool(lib.SSL_CTX_ctrl(pointer, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, TICKET_KEYS_LEN, buffer))
