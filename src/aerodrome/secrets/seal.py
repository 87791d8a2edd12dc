"""Envelope encryption of one secret version, bound to where it belongs.

The value is sealed with its own data key (AES-256-GCM); the data key is wrapped with the
keyring's active KEK. Both carry the context (org, app, name, version) as associated data,
and the wrapped key also its KEK version, so a ciphertext copied onto another app, name or
version, or a data key paired with the wrong KEK version, fails to open.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aerodrome.errors import AeroError
from aerodrome.secrets.keyring import Keyring
from aerodrome.secrets.values import SecretValue

FORMAT = "aero:v1"


class SealError(AeroError):
    status = 500
    code = "unseal_failed"


@dataclass(frozen=True)
class Context:
    org_id: str
    app_id: str
    name: str
    version: int

    def aad(self) -> bytes:
        body = {"org": self.org_id, "app": self.app_id, "name": self.name, "v": self.version}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Sealed:
    """What the store keeps: `aero:v1:<b64 nonce|ct>` and `aero:v1:k<N>:<b64 nonce|wrapped>`."""

    ciphertext: str
    wrapped_key: str

    @property
    def key_version(self) -> int:
        return _parse_wrapped(self.wrapped_key)[0]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    """A stored blob: nonce (12) and GCM tag (16) at least; anything else is refused."""
    try:
        blob = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise SealError("stored secret data is not valid base64") from exc
    if len(blob) < 12 + 16:
        raise SealError("stored secret data is truncated")
    return blob


def _dek_aad(context: Context, key_version: int) -> bytes:
    return context.aad() + f"|kek=v{key_version}".encode()


def _wrap(keyring: Keyring, context: Context, dek: bytes, version: int) -> str:
    nonce = os.urandom(12)
    wrapped = keyring.kek(version).encrypt(nonce, dek, _dek_aad(context, version))
    return f"{FORMAT}:k{version}:{_b64(nonce + wrapped)}"


def _parse_wrapped(wrapped_key: str) -> tuple[int, bytes]:
    prefix, _, rest = wrapped_key.partition(":k")
    version_text, _, body = rest.partition(":")
    if prefix != FORMAT or not version_text.isdigit():
        raise SealError("stored data key has an unknown format")
    return int(version_text), _unb64(body)


def _unwrap(keyring: Keyring, context: Context, wrapped_key: str) -> bytes:
    version, blob = _parse_wrapped(wrapped_key)
    try:
        return keyring.kek(version).decrypt(blob[:12], blob[12:], _dek_aad(context, version))
    except InvalidTag as exc:
        raise SealError(f"data key of {context.name} v{context.version} does not open") from exc


def seal(keyring: Keyring, context: Context, value: bytes) -> Sealed:
    dek = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    ciphertext = AESGCM(dek).encrypt(nonce, value, context.aad())
    return Sealed(
        ciphertext=f"{FORMAT}:{_b64(nonce + ciphertext)}",
        wrapped_key=_wrap(keyring, context, dek, keyring.active_version),
    )


def unseal(keyring: Keyring, context: Context, sealed: Sealed) -> SecretValue:
    dek = _unwrap(keyring, context, sealed.wrapped_key)
    prefix, _, body = sealed.ciphertext.rpartition(":")
    if prefix != FORMAT:
        raise SealError("stored ciphertext has an unknown format")
    blob = _unb64(body)
    try:
        return SecretValue(AESGCM(dek).decrypt(blob[:12], blob[12:], context.aad()))
    except InvalidTag as exc:
        raise SealError(f"{context.name} v{context.version} does not open in this context") from exc


def rewrap(keyring: Keyring, context: Context, wrapped_key: str) -> str:
    """The same data key under the active KEK. The value is never decrypted."""
    dek = _unwrap(keyring, context, wrapped_key)
    return _wrap(keyring, context, dek, keyring.active_version)
