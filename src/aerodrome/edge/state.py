"""The edge's view of the store: routes, certificates and pending ACME challenges, read in
one transaction per revision. The edge only reads; it never writes to the store."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from aerodrome.certs.challenges import load_challenges
from aerodrome.certs.store import OpenedKeys, load_edge_certificates
from aerodrome.config import Settings
from aerodrome.edge.routes import EdgeConfig, Route, RouteTable, build_route
from aerodrome.edge.worker import Snapshot
from aerodrome.keyfiles import RootSecret
from aerodrome.platform.http_service import Cors, HttpService, parse_address, parse_http_service
from aerodrome.platform.secrets import load_keyring
from aerodrome.store.db import Store
from aerodrome.store.models import App, AppHttpConfig, Certificate, StoreHead, Upstream


@dataclass
class StoreState:
    config: EdgeConfig
    store: Store
    root: RootSecret
    opened: OpenedKeys = field(default_factory=OpenedKeys)

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
            certificates = load_edge_certificates(session, keyring, opened=self.opened)
        return table, certificates, challenges.tlsalpn01


def compile_routes(
    session: Session, config: EdgeConfig, http01: dict[str, bytes] | None = None
) -> RouteTable:
    """Everything a request needs, from one consistent read of the store."""
    revision = session.execute(select(StoreHead.revision)).scalar_one()
    services = {
        row.app_id: parse_http_service(json.loads(row.config))
        for row in session.execute(select(AppHttpConfig)).scalars()
    }
    upstreams: dict[str, list[tuple[str, int]]] = {}
    for row in session.execute(select(Upstream).order_by(Upstream.created_at)).scalars():
        upstreams.setdefault(row.app_id, []).append(parse_address(row.address))
    routes: dict[str, Route] = {}
    if config.api_upstream is not None:
        hostname = f"api.{config.domain}"
        routes[hostname] = build_route(
            config, hostname, "api", "api", (config.api_upstream,), HttpService(cors=Cors())
        )
    apps = {app.id: app for app in session.execute(select(App)).scalars()}
    named = [(f"{app.name}.{config.domain}", app) for app in apps.values()]
    # Custom domains (`aero certs add`) reach the app that claimed them; the platform's own
    # names come first and are never taken over.
    custom = session.execute(
        select(Certificate.hostname, Certificate.app_id).where(Certificate.kind == "custom")
    )
    named += [(hostname, apps[app_id]) for hostname, app_id in custom if app_id in apps]
    for hostname, app in named:
        if hostname not in routes:
            routes[hostname] = build_route(
                config,
                hostname,
                app.name,
                app.id,
                tuple(upstreams.get(app.id, ())),
                services.get(app.id, HttpService()),
            )
    return RouteTable(revision, routes, dict(http01 or {}))
