"""Pending ACME challenges: published by the issuer, answered by the edge.

The issuer writes each challenge it is waiting on to `acme_challenges` (bumping the change
feed, so followers see a new revision) and deletes it once the CA has decided. The edge
follows the feed and answers from `load_challenges`:

- HTTP-01: `GET /.well-known/acme-challenge/<token>` on port 80 answers the key
  authorization (`Challenges.http01[token]`), as `text/plain`.
- TLS-ALPN-01 (RFC 8737): a TLS handshake on port 443 with SNI = the hostname and ALPN
  `acme-tls/1` must present `Challenges.tlsalpn01[hostname]` (a self-signed certificate
  carrying the critical acmeIdentifier extension) and negotiate `acme-tls/1`. Handshakes
  that do not offer `acme-tls/1` get the normal certificate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID, ObjectIdentifier
from sqlalchemy import select
from sqlalchemy.orm import Session

from aerodrome.certs.issued import cert_pem, new_leaf_key, utcnow
from aerodrome.certs.store import challenge_key_context, log, org_of_app
from aerodrome.errors import AeroError
from aerodrome.ids import new_id
from aerodrome.secrets.keyring import Keyring
from aerodrome.secrets.seal import Sealed, seal, unseal
from aerodrome.secrets.values import SecretValue
from aerodrome.store.db import Tx
from aerodrome.store.models import AcmeChallenge, Certificate

HTTP01 = "http-01"
TLSALPN01 = "tls-alpn-01"
HTTP01_PATH_PREFIX = "/.well-known/acme-challenge/"
# RFC 8737 section 6.1: id-pe-acmeIdentifier
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
CHALLENGE_TTL = timedelta(minutes=10)


@dataclass(frozen=True)
class Challenges:
    """What the edge answers. `http01`: token → key authorization; `tlsalpn01`: hostname →
    (challenge certificate PEM, its private key PEM). The repr shows no key material."""

    http01: dict[str, str] = field(default_factory=dict)
    tlsalpn01: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Challenges(http01={len(self.http01)}, tlsalpn01={sorted(self.tlsalpn01)})"

    def __bool__(self) -> bool:
        return bool(self.http01 or self.tlsalpn01)


@dataclass(frozen=True)
class PendingChallenge:
    certificate_id: str
    hostname: str
    type: str
    token: str
    key_authorization: str
    cert_pem: bytes | None = None
    key: SecretValue | None = None


def tls_alpn_certificate(
    hostname: str, key_authorization: str, now: datetime | None = None
) -> tuple[bytes, SecretValue]:
    """The RFC 8737 challenge certificate: self-signed, SAN = the hostname, and a critical
    acmeIdentifier extension holding the DER OCTET STRING of SHA-256(key authorization)."""
    now = now or utcnow()
    key, key_pem = new_leaf_key()
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return cert_pem(cert), key_pem


def publish_challenges(
    tx: Tx, keyring: Keyring, pending: list[PendingChallenge], now: datetime | None = None
) -> list[str]:
    """Write challenges for the edge to answer. Returns their ids (to withdraw them)."""
    now = now or utcnow()
    ids: list[str] = []
    for item in pending:
        if tx.session.get(Certificate, item.certificate_id) is None:
            raise AeroError(f"{item.hostname} was removed", code="certificate_removed")
        row = AcmeChallenge(
            id=new_id("chl"),
            certificate_id=item.certificate_id,
            hostname=item.hostname,
            type=item.type,
            token=item.token,
            key_authorization=item.key_authorization,
            created_at=now,
            expires_at=now + CHALLENGE_TTL,
        )
        if item.type == TLSALPN01:
            assert item.cert_pem is not None and item.key is not None
            sealed = seal(keyring, challenge_key_context(row), item.key.reveal())
            row.cert_pem = item.cert_pem.decode("ascii")
            row.key_ciphertext = sealed.ciphertext
            row.key_wrapped = sealed.wrapped_key
        tx.session.add(row)
        tx.session.flush()
        tx.changed("acme_challenge", row.id, "create")
        tx.audit(
            "certs.challenge.publish",
            item.certificate_id,
            org_id=org_of_app(tx.session, _app_of(tx.session, item.certificate_id)),
            detail={"hostname": item.hostname, "type": item.type},
        )
        ids.append(row.id)
    return ids


def withdraw_challenges(tx: Tx, ids: list[str]) -> int:
    count = 0
    for challenge_id in ids:
        row = tx.session.get(AcmeChallenge, challenge_id)
        if row is None:
            continue  # removed with its certificate, or purged
        tx.session.delete(row)
        tx.changed("acme_challenge", row.id, "delete")
        tx.audit(
            "certs.challenge.withdraw",
            row.certificate_id,
            org_id=org_of_app(tx.session, _app_of(tx.session, row.certificate_id)),
            detail={"hostname": row.hostname, "type": row.type, "why": "done"},
        )
        count += 1
    return count


def _app_of(session: Session, certificate_id: str) -> str | None:
    return session.execute(
        select(Certificate.app_id).where(Certificate.id == certificate_id)
    ).scalar_one_or_none()


def load_challenges(session: Session, keyring: Keyring, now: datetime | None = None) -> Challenges:
    """The challenges the edge must answer now (expired ones left out; for TLS-ALPN-01, the
    newest per hostname)."""
    now = now or utcnow()
    http01: dict[str, str] = {}
    tlsalpn01: dict[str, tuple[bytes, bytes]] = {}
    rows = session.execute(
        select(AcmeChallenge)
        .where(AcmeChallenge.expires_at > now)
        .order_by(AcmeChallenge.created_at, AcmeChallenge.id)
    ).scalars()
    for row in rows:
        if row.type == HTTP01:
            http01[row.token] = row.key_authorization
        elif row.type == TLSALPN01 and row.cert_pem and row.key_ciphertext and row.key_wrapped:
            try:
                key = unseal(
                    keyring, challenge_key_context(row), Sealed(row.key_ciphertext, row.key_wrapped)
                )
            except AeroError as error:
                log.error("challenge key for %s does not open: %s", row.hostname, error.code)
                continue
            tlsalpn01[row.hostname] = (row.cert_pem.encode("ascii"), key.reveal())
    return Challenges(http01, tlsalpn01)
