"""Where the platform keeps its state, read once from the environment."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = ".aerodrome"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    root_key_file: Path
    domain: str = "localhost"
    machines_root: Path | None = None  # AERO_MACHINES_DIR; see `machines_dir`

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None) -> Settings:
        root = Path(data_dir or os.environ.get("AERO_DATA_DIR") or DEFAULT_DATA_DIR).resolve()
        url = os.environ.get("AERO_DATABASE_URL") or f"sqlite:///{root / 'aerodrome.db'}"
        key_file = os.environ.get("AERO_ROOT_KEY_FILE")
        machines = os.environ.get("AERO_MACHINES_DIR")
        return cls(
            data_dir=root,
            database_url=url,
            root_key_file=Path(key_file) if key_file else root / "keys" / "root.key",
            domain=os.environ.get("AERO_DOMAIN", "localhost").lower(),
            machines_root=Path(machines).resolve() if machines else None,
        )

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def ca_dir(self) -> Path:
        """The local certificate authority: `root.pem` is what clients trust."""
        return self.data_dir / "ca"

    @property
    def machines_dir(self) -> Path:
        """Where machines' trees (code, machine-local API socket) live. As root, machines run as
        unprivileged uids that must be able to reach their own tree, which `DATA` (0700) would
        forbid: so they live under /var/lib/aerodrome/machines, one directory per data
        directory. Otherwise machines share the agent's uid and live in `DATA/machines`."""
        if self.machines_root is not None:
            return self.machines_root
        if os.geteuid() != 0:
            return self.data_dir / "machines"
        tag = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path("/var/lib/aerodrome/machines") / tag

    @property
    def checkpoint_file(self) -> Path:
        """Signed audit checkpoints, kept outside the database so a database rewrite shows."""
        return self.data_dir / "audit" / "checkpoints.jsonl"

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.keys_dir, self.checkpoint_file.parent):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o700)
