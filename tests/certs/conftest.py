"""Fixtures for the certificate tests: a platform whose domain is `aero.test`, apps in it,
Pebble (a real ACME server) and the challenge responder, and a dump of everything stored."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from aerodrome.certs.config import CertsSettings
from aerodrome.config import Settings
from aerodrome.platform import apps as app_rules
from aerodrome.platform import orgs as org_rules
from aerodrome.services import Services
from aerodrome.store.models import App, Base, Org
from tests.certs.pebble import ChallengeResponder, Pebble

DOMAIN = "aero.test"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings, on the certificate tests' domain."""
    return dataclasses.replace(settings, domain=DOMAIN)


def make_app(services: Services, name: str, org_slug: str = "acme") -> App:
    with services.store.write() as tx:
        org = tx.session.execute(select(Org).where(Org.slug == org_slug)).scalar_one_or_none()
        if org is None:
            owner = org_rules.get_or_create_user(tx, f"owner@{org_slug}.test")
            org = org_rules.create_org(tx, org_slug, None, owner)
        return app_rules.create_app(tx, org, name, "production", "usr_test")


def stored_everything(services: Services) -> bytes:
    """Every byte the platform keeps: each row of each table, and each file under the data
    directory (and the SQLite database files, wherever they are)."""
    chunks: list[bytes] = []
    with services.store.read() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)):
                chunks.append(repr(tuple(row)).encode())
    paths = [p for p in services.settings.data_dir.rglob("*") if p.is_file()]
    url = services.settings.database_url
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        paths += [p for p in db.parent.glob(db.name + "*") if p.is_file()]
    for path in paths:
        chunks.append(path.read_bytes())
    return b"\n".join(chunks)


def pem_forms(pem: bytes) -> list[bytes]:
    """A PEM and the ways its content could be stored: whole, its base64 body on one line,
    each base64 line, and the DER bytes."""
    import base64

    lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    body = b"".join(lines)
    return [pem, body, *lines, base64.b64decode(body)]


@pytest.fixture
def responder(services: Services, pebble: Pebble) -> Iterator[ChallengeResponder]:
    server = ChallengeResponder(services, pebble.http_port, pebble.tls_port)
    try:
        yield server
    finally:
        server.close()


def acme_settings(pebble: Pebble, *challenges: str) -> CertsSettings:
    return CertsSettings(
        acme_directory=pebble.directory,
        acme_ca_bundle=str(pebble.ca_bundle),
        acme_email="ops@aero.test",
        challenges=challenges or ("tls-alpn-01", "http-01"),
    )
