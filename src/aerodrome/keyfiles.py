"""The root key file in the data directory: created 0600, refused if others can read it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aerodrome.errors import AeroError


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def read_private(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AeroError(
            f"key file {path} is readable by other users (mode {stat.S_IMODE(mode):o})",
            hint=f"run: chmod 600 {path}",
            code="insecure_key_file",
        )
    return path.read_bytes()


class RootSecret:
    """The platform's root of trust: 32 random bytes in a 0600 file. Every other key (token
    signing, audit signing, keyring wrapping, secret digests) is derived from it with
    HKDF-SHA256 under its own label, so one file backs up and restores the whole platform
    and no two purposes share a key."""

    def __init__(self, material: bytes) -> None:
        if len(material) != 32:
            raise AeroError("root key must be 32 bytes", code="bad_key_file")
        self._material = material

    def __repr__(self) -> str:
        return "RootSecret(***)"

    @classmethod
    def load(cls, path: Path, create: bool = True) -> RootSecret:
        if not path.exists():
            if not create:
                raise AeroError(
                    f"root key file {path} does not exist",
                    hint="run `aero up` once to create it, or set AERO_ROOT_KEY_FILE",
                    code="missing_key_file",
                )
            _write_new(path, os.urandom(32))
        material = read_private(path)
        if len(material) != 32:
            raise AeroError(f"root key file {path} is not 32 bytes", code="bad_key_file")
        return cls(material)

    def derive(self, label: str, length: int = 32) -> bytes:
        return HKDF(
            algorithm=hashes.SHA256(), length=length, salt=None, info=f"aerodrome/{label}".encode()
        ).derive(self._material)

    def ed25519(self, label: str) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.derive(label))


def write_private_text(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0600 from the first byte."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _write_new(tmp, text.encode())
    tmp.replace(path)
