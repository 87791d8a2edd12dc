"""The wire format: `aero1_<base64url biscuit>_<checksum>`.

The checksum (CRC-32 of everything before it, base62, 6 characters) lets a token that was
cut short on paste be told apart from a forged one before any signature is checked.
"""

from __future__ import annotations

import base64
import binascii
import zlib

PREFIX = "aero1_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CHECKSUM_LEN = 6
MAX_TOKEN_LEN = 16384


class TokenFormatError(ValueError):
    """The text is not a complete aerodrome token. `truncated` says whether it looks cut."""

    def __init__(self, message: str, *, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode("ascii"))
    out = []
    for _ in range(CHECKSUM_LEN):
        value, digit = divmod(value, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def encode(raw: bytes) -> str:
    body = PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    return f"{body}_{_checksum(body)}"


def decode(text: str) -> bytes:
    """The biscuit bytes inside `text`, or `TokenFormatError` saying what is wrong."""
    token = text.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if not token.isascii():
        raise TokenFormatError("token holds non-ASCII characters (a stray paste?)")
    if len(token) > MAX_TOKEN_LEN:
        raise TokenFormatError(f"token is longer than {MAX_TOKEN_LEN} characters")
    if not token.startswith(PREFIX):
        if PREFIX.startswith(token) or not token:
            raise TokenFormatError("token is empty or cut short", truncated=True)
        raise TokenFormatError(f"not an aerodrome token (it should start with {PREFIX!r})")
    body, sep, checksum = token.rpartition("_")
    if not sep or body in ("", PREFIX.rstrip("_")) or checksum != _checksum(body):
        raise TokenFormatError(
            "token is incomplete or altered (checksum mismatch): it was probably cut short "
            "when copied",
            truncated=True,
        )
    payload = body[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenFormatError("token payload is not valid base64url") from exc
    if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != payload:
        raise TokenFormatError("token payload is not canonical base64url")
    return raw


def encode_b64(raw: bytes) -> str:
    """The padded base64url form that biscuit-python's `from_base64` reads."""
    return base64.urlsafe_b64encode(raw).decode("ascii")
