"""Where the platform keeps its state, read once from the environment."""

from __future__ import annotations

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

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None) -> Settings:
        root = Path(data_dir or os.environ.get("AERO_DATA_DIR") or DEFAULT_DATA_DIR).resolve()
        url = os.environ.get("AERO_DATABASE_URL") or f"sqlite:///{root / 'aerodrome.db'}"
        key_file = os.environ.get("AERO_ROOT_KEY_FILE")
        return cls(
            data_dir=root,
            database_url=url,
            root_key_file=Path(key_file) if key_file else root / "keys" / "root.key",
            domain=os.environ.get("AERO_DOMAIN", "localhost").lower(),
        )

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def ca_dir(self) -> Path:
        """The local certificate authority: `root.pem` is what clients trust."""
        return self.data_dir / "ca"

    @property
    def checkpoint_file(self) -> Path:
        """Signed audit checkpoints, kept outside the database so a database rewrite shows."""
        return self.data_dir / "audit" / "checkpoints.jsonl"

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.keys_dir, self.checkpoint_file.parent):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o700)
