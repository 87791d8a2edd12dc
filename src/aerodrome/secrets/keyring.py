"""The keyring: versioned key-encryption keys (KEKs), wrapped by a key derived from the root.

Root key (file) ──HKDF──▶ wrap key ──AES-256-GCM──▶ KEK v1, v2, … (rows in the store)
KEK vN ──AES-256-GCM──▶ one data key per secret version ──AES-256-GCM──▶ the value

New data keys are wrapped with the newest version. Rotation adds a version and re-wraps every
data key under it; versions below `min_decryption_version` are retired and refuse to unwrap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aerodrome.errors import AeroError
from aerodrome.keyfiles import RootSecret

KEK_WRAP_LABEL = "keyring/wrap/1"


class KeyringError(AeroError):
    status = 500
    code = "keyring_error"


@dataclass(frozen=True)
class WrappedKek:
    """A keyring row as stored: the KEK sealed under the root-derived wrap key."""

    version: int
    wrapped: bytes
    retired: bool


def _kek_aad(version: int) -> bytes:
    return f"aerodrome/kek/v{version}".encode()


def wrap_new_kek(root: RootSecret, version: int) -> bytes:
    """A fresh random KEK for `version`, sealed for storage."""
    wrap = AESGCM(root.derive(KEK_WRAP_LABEL))
    nonce = os.urandom(12)
    return nonce + wrap.encrypt(nonce, os.urandom(32), _kek_aad(version))


class Keyring:
    """The unwrapped KEKs of one process. Built from the stored rows and the root secret."""

    def __init__(self, root: RootSecret, rows: list[WrappedKek]) -> None:
        if not rows:
            raise KeyringError("the keyring is empty", hint="run migrations (`aero up`)")
        wrap = AESGCM(root.derive(KEK_WRAP_LABEL))
        self._keks: dict[int, AESGCM] = {}
        self._retired: set[int] = set()
        for row in rows:
            if row.retired:
                self._retired.add(row.version)
                continue
            try:
                kek = wrap.decrypt(row.wrapped[:12], row.wrapped[12:], _kek_aad(row.version))
            except InvalidTag as exc:
                raise KeyringError(
                    f"key-encryption key v{row.version} does not open with this root key",
                    hint="is AERO_ROOT_KEY_FILE the root key this platform was created with?",
                ) from exc
            self._keks[row.version] = AESGCM(kek)
        if not self._keks:
            raise KeyringError("every key version is retired")
        self.active_version = max(self._keks)
        self.min_decryption_version = min(self._keks)

    def __repr__(self) -> str:
        return f"Keyring(active=v{self.active_version}, usable={sorted(self._keks)})"

    def kek(self, version: int) -> AESGCM:
        if version in self._retired or version not in self._keks:
            raise KeyringError(
                f"key version v{version} is retired or unknown",
                hint="data wrapped under a retired key cannot be read; rotate before retiring",
                code="key_retired",
            )
        return self._keks[version]
