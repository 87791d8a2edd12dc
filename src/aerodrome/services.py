"""The platform's long-lived objects, opened once per process from `Settings`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from aerodrome.audit.chain import AuditSigner
from aerodrome.config import Settings
from aerodrome.keyfiles import RootSecret
from aerodrome.platform.secrets import ensure_keyring, load_keyring
from aerodrome.platform.tokens import revocations_since
from aerodrome.secrets.digest import Digester
from aerodrome.secrets.keyring import Keyring
from aerodrome.store.db import Store
from aerodrome.tokens.mint import RootKey
from aerodrome.tokens.verify import Verifier


@dataclass
class Services:
    settings: Settings
    store: Store
    root: RootKey
    verifier: Verifier
    root_secret: RootSecret = field(repr=False)
    digester: Digester = field(repr=False)
    _revocation_revision: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> Services:
        settings.ensure_dirs()
        root_secret = RootSecret.load(settings.root_key_file)
        root = RootKey.from_root(root_secret)
        signer = AuditSigner(root_secret.ed25519("audit/ed25519/1"))
        # Public halves, for verifiers that must not hold the root (regions, `audit verify`).
        _write_public(settings.keys_dir / "token-root.pub", f"{root.key_id} {root.public}")
        _write_public(settings.keys_dir / "audit-signing.pub", signer.public_bytes().hex())
        store = Store(
            settings.database_url, signer=signer, checkpoint_file=settings.checkpoint_file
        )
        if migrate:
            store.migrate()
        services = cls(
            settings, store, root, Verifier(root.public_keys()), root_secret, Digester(root_secret)
        )
        with store.write() as tx:
            ensure_keyring(tx, root_secret)
        services.refresh_revocations()
        return services

    def keyring(self, session: Session) -> Keyring:
        """The secrets keyring as stored now (a handful of rows; rotation shows at once)."""
        return load_keyring(session, self.root_secret)

    def refresh_revocations(self) -> None:
        """Follow the revocations table: only rows newer than the last one seen are read."""
        with self._lock:
            with self.store.read() as session:
                rows = revocations_since(session, self._revocation_revision)
            if rows:
                self.verifier.add_revoked(rid for rid, _ in rows)
                self._revocation_revision = max(rev for _, rev in rows)

    def close(self) -> None:
        self.store.dispose()


def _write_public(path: Path, text: str) -> None:
    if not path.exists() or path.read_text().strip() != text:
        path.write_text(text + "\n")
