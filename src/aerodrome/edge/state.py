"""The edge's view of the store: routes, certificates and pending ACME challenges, read in
one transaction per revision. The edge only reads; it never writes to the store."""

from __future__ import annotations

from dataclasses import dataclass

from aerodrome.certs.challenges import load_challenges
from aerodrome.certs.store import load_edge_certificates
from aerodrome.config import Settings
from aerodrome.edge.routes import EdgeConfig, compile_routes
from aerodrome.edge.worker import Snapshot
from aerodrome.keyfiles import RootSecret
from aerodrome.platform.secrets import load_keyring
from aerodrome.store.db import Store


@dataclass
class StoreState:
    config: EdgeConfig
    store: Store
    root: RootSecret

    @classmethod
    def open(cls, config: EdgeConfig, settings: Settings | None = None) -> StoreState:
        settings = settings or Settings.from_env()
        return cls(
            config,
            Store(settings.database_url),
            RootSecret.load(settings.root_key_file, create=False),
        )

    def revision(self) -> int:
        return self.store.revision()

    def load(self) -> Snapshot:
        with self.store.read() as session:
            keyring = load_keyring(session, self.root)
            challenges = load_challenges(session, keyring)
            http01 = {token: answer.encode() for token, answer in challenges.http01.items()}
            table = compile_routes(session, self.config, http01)
            certificates = load_edge_certificates(session, keyring)
        return table, certificates, challenges.tlsalpn01
