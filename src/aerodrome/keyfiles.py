"""Private key files in the data directory: created 0600, refused if others can read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

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


def load_or_create_ed25519(path: Path, create: bool = True) -> Ed25519PrivateKey:
    """The raw 32-byte Ed25519 seed at `path`, created on first use."""
    if not path.exists():
        if not create:
            raise AeroError(
                f"key file {path} does not exist", hint="run `aero up` once to create it"
            )
        seed = Ed25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        _write_new(path, seed)
    seed = read_private(path)
    if len(seed) != 32:
        raise AeroError(f"key file {path} is not a 32-byte Ed25519 key", code="bad_key_file")
    return Ed25519PrivateKey.from_private_bytes(seed)


def write_private_text(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0600 from the first byte."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _write_new(tmp, text.encode())
    tmp.replace(path)
