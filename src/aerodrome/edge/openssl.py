"""The two OpenSSL context settings Python's `ssl` has no call for, through `SSL_CTX_ctrl`.

`ctypes` reaches the `libssl` this interpreter's `ssl` module loaded. The context pointer is
read from CPython's `PySSLContext` and checked against `SSL_CTX_get_options` before any call;
if anything does not match, nothing is called and the caller keeps a safe default.
"""

from __future__ import annotations

import ctypes
import ssl
import sys
from functools import cache

SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
SSL_CTRL_SET_GROUPS_LIST = 92


@cache
def _libssl() -> ctypes.CDLL | None:
    if sys.implementation.name != "cpython":
        return None
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


def ctx_ctrl(ctx: ssl.SSLContext, command: int, larg: int, parg: bytes) -> bool:
    """`SSL_CTX_ctrl(ctx, command, larg, parg)`; False (nothing called) if it cannot be done."""
    lib = _libssl()
    if lib is None:
        return False
    # CPython's PySSLContext starts with PyObject_HEAD, then the SSL_CTX pointer.
    pointer = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    if not pointer or lib.SSL_CTX_get_options(pointer) != int(ctx.options):
        return False
    buffer = ctypes.create_string_buffer(parg, len(parg) + 1)  # NUL-terminated for lists
    return bool(lib.SSL_CTX_ctrl(pointer, command, larg, buffer))


def set_groups(ctx: ssl.SSLContext, groups: str) -> bool:
    """The key-exchange groups `ctx` accepts, most preferred first (`SSL_CTX_set1_groups_list`).
    Python's `set_ecdh_curve` takes a single curve."""
    return ctx_ctrl(ctx, SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii"))


def set_ticket_keys(ctx: ssl.SSLContext, keys: bytes) -> bool:
    """The 80-byte session-ticket key block of `ctx` (name, HMAC key, AES key)."""
    return ctx_ctrl(ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len(keys), keys)
