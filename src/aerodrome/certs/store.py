"""Certificates in the store: which names are claimed, which certificates are due, the
results of issuance, custom names, what the edge loads, and re-wrapping on key rotation.

A certificate row exists only for a claimed name: `APP.DOMAIN` (kind `app`), `api.DOMAIN`
(kind `platform`), or a name an app's owner added (kind `custom`). `reconcile` keeps the
rows in line with the claims; issuers are only ever asked for names with a row, and the
claim is checked again right before issuing.

Private keys are sealed with the keyring (`aerodrome.secrets.seal`) under a context naming
the row, the hostname and the key's generation, so a sealed key copied onto another
hostname, or an older key put back, does not open. Every mutation bumps the change feed and
writes an audit event holding names only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from aerodrome.certs.hostnames import (
    app_hostname,
    check_custom_hostname,
    control_plane_hostname,
    is_valid,
    validate_hostname,
)
from aerodrome.certs.issued import CertRequest, Issued, utcnow
from aerodrome.errors import AeroError, Conflict, InvalidInput, NotFound
from aerodrome.ids import new_id
from aerodrome.secrets.keyring import Keyring
from aerodrome.secrets.seal import Context, Sealed, rewrap, seal, unseal
from aerodrome.store.db import Tx
from aerodrome.store.models import AcmeAccount, AcmeChallenge, App, Certificate

log = logging.getLogger("aerodrome.certs")

KINDS = ("app", "platform", "custom")
ISSUERS = ("local", "acme")
STATUSES = ("pending", "issued", "failed")
MAX_CUSTOM_PER_APP = 100
MAX_REASON = 500
RENEW_AT = 2 / 3  # of a certificate's lifetime
SEAL_ORG = "certs"  # the `org` of every certificate-related seal context


# -- seal contexts --------------------------------------------------------------------------


def certificate_key_context(row: Certificate) -> Context:
    return Context(SEAL_ORG, row.id, f"tls-key:{row.hostname}", row.generation)


def account_key_context(row: AcmeAccount) -> Context:
    return Context(SEAL_ORG, row.id, f"acme-account:{row.directory_url}", 1)


def challenge_key_context(row: AcmeChallenge) -> Context:
    return Context(SEAL_ORG, row.id, f"tls-alpn-01:{row.hostname}", 1)


# -- claims ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    hostname: str
    kind: str
    app_id: str | None
    org_id: str


def claims(session: Session, domain: str) -> dict[str, Claim]:
    """Every hostname something on the platform claims, and what claims it. The platform's
    own names come first: a custom row that collides with one is not a claim."""
    out: dict[str, Claim] = {}
    api = control_plane_hostname(domain)
    if is_valid(api):
        out[api] = Claim(api, "platform", None, "")
    for app in session.execute(select(App).order_by(App.name)).scalars():
        name = app_hostname(app.name, domain)
        if is_valid(name):
            out[name] = Claim(name, "app", app.id, app.org_id)
    custom = session.execute(
        select(Certificate.hostname, App.id, App.org_id)
        .join(App, App.id == Certificate.app_id)
        .where(Certificate.kind == "custom")
    )
    for hostname, app_id, org_id in custom:
        out.setdefault(hostname, Claim(hostname, "custom", app_id, org_id))
    return out


def claim_for(session: Session, hostname: str, domain: str) -> Claim | None:
    return claims(session, domain).get(hostname)


def _matches(row: Certificate, claim: Claim | None) -> bool:
    return claim is not None and claim.kind == row.kind and claim.app_id == row.app_id


def org_of_app(session: Session, app_id: str | None) -> str:
    if app_id is None:
        return ""
    return session.execute(select(App.org_id).where(App.id == app_id)).scalar_one_or_none() or ""


@dataclass(frozen=True)
class Reconciled:
    created: list[str]
    removed: list[str]
    expired_challenges: int


def reconcile(tx: Tx, domain: str, issuer_name: str, now: datetime | None = None) -> Reconciled:
    """Make the rows match the claims: a pending row for every claimed platform or app name
    without one; no row for a name nothing claims (any more)."""
    now = now or utcnow()
    claimed = claims(tx.session, domain)
    rows = {r.hostname: r for r in tx.session.execute(select(Certificate)).scalars()}
    removed: list[str] = []
    for hostname, row in sorted(rows.items()):
        if not _matches(row, claimed.get(hostname)):
            _delete(tx, row, why="unclaimed")
            removed.append(hostname)
            del rows[hostname]
    tx.session.flush()
    created: list[str] = []
    for hostname, claim in sorted(claimed.items()):
        if hostname in rows or claim.kind == "custom":
            continue
        _create(tx, claim, issuer_name, org_id=claim.org_id)
        created.append(hostname)
    expired = purge_expired_challenges(tx, now)
    return Reconciled(created, removed, expired)


def _create(tx: Tx, claim: Claim, issuer_name: str, *, org_id: str) -> Certificate:
    row = Certificate(
        id=new_id("crt"),
        hostname=claim.hostname,
        app_id=claim.app_id,
        kind=claim.kind,
        issuer=issuer_name,
        status="pending",
        reason="",
        generation=0,
        attempts=0,
        created_by=tx.audit_ctx.actor,
    )
    tx.session.add(row)
    tx.session.flush()
    tx.changed("certificate", row.id, "create")
    tx.audit(
        "certs.create",
        row.id,
        org_id=org_id,
        detail={"hostname": row.hostname, "kind": row.kind, "app_id": row.app_id},
    )
    return row


def _delete(tx: Tx, row: Certificate, *, why: str) -> None:
    org_id = org_of_app(tx.session, row.app_id)
    tx.session.execute(delete(AcmeChallenge).where(AcmeChallenge.certificate_id == row.id))
    tx.session.delete(row)
    tx.changed("certificate", row.id, "delete")
    tx.audit(
        "certs.remove",
        row.id,
        org_id=org_id,
        detail={"hostname": row.hostname, "kind": row.kind, "why": why},
    )


def purge_expired_challenges(tx: Tx, now: datetime | None = None) -> int:
    """Challenges left behind by an issuer that stopped mid-way."""
    now = now or utcnow()
    stale = list(
        tx.session.execute(select(AcmeChallenge).where(AcmeChallenge.expires_at <= now)).scalars()
    )
    for row in stale:
        tx.session.delete(row)
        tx.changed("acme_challenge", row.id, "delete")
        tx.audit(
            "certs.challenge.withdraw",
            row.certificate_id,
            detail={"hostname": row.hostname, "type": row.type, "why": "expired"},
        )
    return len(stale)


# -- what is due, and the results of issuing ------------------------------------------------


def due(session: Session, issuer_name: str, now: datetime | None = None) -> list[CertRequest]:
    """Certificates to obtain now: never issued, due for renewal, or from another issuer than
    the configured one; each no sooner than its retry time after a failure."""
    now = now or utcnow()
    out: list[CertRequest] = []
    for row in session.execute(select(Certificate).order_by(Certificate.hostname)).scalars():
        if row.next_attempt_at is not None and row.next_attempt_at > now:
            continue
        if (
            row.chain_pem is None
            or row.issuer != issuer_name
            or (row.renew_after is not None and row.renew_after <= now)
        ):
            out.append(CertRequest(row.id, row.hostname, row.attempts))
    return out


def next_due_at(session: Session) -> datetime | None:
    """When the next retry or renewal falls due (None: nothing scheduled)."""
    times: list[datetime] = []
    for row in session.execute(select(Certificate)).scalars():
        if row.next_attempt_at is not None:
            times.append(row.next_attempt_at)
        elif row.renew_after is not None:
            times.append(row.renew_after)
    return min(times, default=None)


def _current(session: Session, request: CertRequest) -> Certificate | None:
    row = session.get(Certificate, request.certificate_id)
    if row is None or row.hostname != request.hostname:
        return None  # removed while its certificate was being obtained
    return row


def record_issued(
    tx: Tx, keyring: Keyring, request: CertRequest, issued: Issued
) -> Certificate | None:
    """Store a new certificate and its sealed key. None if the row is gone meanwhile."""
    row = _current(tx.session, request)
    if row is None:
        return None
    row.generation += 1
    sealed = seal(keyring, certificate_key_context(row), issued.key.reveal())
    lifetime = issued.not_after - issued.not_before
    row.chain_pem = issued.chain_pem.decode("ascii")
    row.key_ciphertext = sealed.ciphertext
    row.key_wrapped = sealed.wrapped_key
    row.issuer = issued.issuer
    row.status = "issued"
    row.reason = ""
    row.serial = issued.serial
    row.not_before = issued.not_before
    row.not_after = issued.not_after
    row.renew_after = issued.not_before + timedelta(seconds=lifetime.total_seconds() * RENEW_AT)
    row.attempts = 0
    row.next_attempt_at = None
    row.updated_at = utcnow()
    tx.changed("certificate", row.id, "issue")
    tx.audit(
        "certs.issue",
        row.id,
        org_id=org_of_app(tx.session, row.app_id),
        detail={
            "hostname": row.hostname,
            "issuer": issued.issuer,
            "serial": issued.serial,
            "not_after": issued.not_after.isoformat(),
        },
    )
    return row


def record_failure(
    tx: Tx, request: CertRequest, issuer_name: str, reason: str, retry_at: datetime
) -> Certificate | None:
    row = _current(tx.session, request)
    if row is None:
        return None
    reason = " ".join(reason.split())[:MAX_REASON] or "issuance failed"
    row.status = "failed"
    row.reason = reason
    row.attempts += 1
    row.next_attempt_at = retry_at
    row.updated_at = utcnow()
    tx.changed("certificate", row.id, "fail")
    tx.audit(
        "certs.issue",
        row.id,
        outcome="failed",
        reason="issuance_failed",
        org_id=org_of_app(tx.session, row.app_id),
        detail={
            "hostname": row.hostname,
            "issuer": issuer_name,
            "attempt": row.attempts,
            "message": reason,
            "retry_at": retry_at.isoformat(),
        },
    )
    return row


# -- custom names ---------------------------------------------------------------------------


def list_for_app(session: Session, app: App) -> list[Certificate]:
    return list(
        session.execute(
            select(Certificate).where(Certificate.app_id == app.id).order_by(Certificate.hostname)
        ).scalars()
    )


def get_for_app(session: Session, app: App, hostname: str) -> Certificate:
    name = validate_hostname(hostname)
    row = session.execute(
        select(Certificate).where(Certificate.hostname == name, Certificate.app_id == app.id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(
            f"{app.name} has no certificate for {name}", hint=f"see `aero certs list -a {app.name}`"
        )
    return row


def add_custom(tx: Tx, app: App, hostname: str, domain: str, issuer_name: str) -> Certificate:
    """Claim `hostname` for `app`; the certificate manager then obtains its certificate."""
    name = check_custom_hostname(hostname, app.name, domain)
    existing = tx.session.execute(
        select(Certificate).where(Certificate.hostname == name)
    ).scalar_one_or_none()
    if existing is not None:
        if existing.app_id == app.id:
            raise Conflict(
                f"{app.name} already has {name}",
                hint=f"see `aero certs show {name} -a {app.name}`",
                code="already_exists",
            )
        raise Conflict(
            f"{name} is already in use by another app",
            hint="a hostname belongs to one app; remove it there first",
            code="hostname_taken",
        )
    count = tx.session.execute(
        select(func.count())
        .select_from(Certificate)
        .where(Certificate.app_id == app.id, Certificate.kind == "custom")
    ).scalar_one()
    if count >= MAX_CUSTOM_PER_APP:
        raise InvalidInput(
            f"{app.name} already has {count} custom hostnames, the most an app may have",
            hint="remove names it no longer uses",
            code="too_many_hostnames",
        )
    return _create(tx, Claim(name, "custom", app.id, app.org_id), issuer_name, org_id=app.org_id)


def remove_custom(tx: Tx, app: App, hostname: str) -> Certificate:
    row = get_for_app(tx.session, app, hostname)
    if row.kind != "custom":
        raise InvalidInput(
            f"{row.hostname} is {app.name}'s own name: the platform manages its certificate",
            hint="it goes away with the app",
            code="managed_certificate",
        )
    _delete(tx, row, why="removed")
    return row


# -- for the edge ---------------------------------------------------------------------------


class EdgeCertificates(dict[str, tuple[bytes, bytes]]):
    """hostname → (chain PEM, private key PEM). Its repr names the hostnames only."""

    def __repr__(self) -> str:
        return f"EdgeCertificates({sorted(self)})"


class OpenedKeys:
    """The keys an edge process has unsealed, by hostname, with the ciphertext each came from:
    on the next revision only a certificate whose sealed key changed is unsealed again (every
    store write moves the revision; certificates rarely change). Never in a repr."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[tuple[str, ...], bytes]] = {}

    def __repr__(self) -> str:
        return f"OpenedKeys({sorted(self._keys)})"

    def get(self, hostname: str, sealed_as: tuple[str, ...]) -> bytes | None:
        """The key opened earlier for `hostname`, if it was sealed exactly as now."""
        known = self._keys.get(hostname)
        return known[1] if known is not None and known[0] == sealed_as else None

    def keep(self, keys: dict[str, tuple[tuple[str, ...], bytes]]) -> None:
        """Remember these keys alone (what the edge serves now)."""
        self._keys = keys


def load_edge_certificates(
    session: Session,
    keyring: Keyring,
    now: datetime | None = None,
    opened: OpenedKeys | None = None,
) -> EdgeCertificates:
    """Every unexpired certificate, with its key unsealed: what the edge serves, by SNI.

    A certificate being renewed, or whose renewal failed, keeps being served until it
    expires. A key that does not open is left out (and logged by hostname), so one bad row
    cannot take down the others. With `opened`, keys unsealed by an earlier call from the
    same ciphertext are reused, and the cache keeps only what this call returns."""
    now = now or utcnow()
    kept: dict[str, tuple[tuple[str, ...], bytes]] = {}
    out = EdgeCertificates()
    rows = session.execute(
        select(Certificate).where(
            Certificate.chain_pem.is_not(None),
            Certificate.key_ciphertext.is_not(None),
            Certificate.not_after > now,
        )
    ).scalars()
    for row in rows:
        ciphertext = row.key_ciphertext or ""
        # Everything the unseal depends on: a re-wrap (key rotation) or another row opens it
        # afresh, so a key that would no longer open is never served from the cache.
        sealed_as = (row.id, str(row.generation), ciphertext, row.key_wrapped or "")
        earlier = opened.get(row.hostname, sealed_as) if opened is not None else None
        if earlier is not None:
            key_pem = earlier
        else:
            try:
                key = unseal(
                    keyring,
                    certificate_key_context(row),
                    Sealed(ciphertext, row.key_wrapped or ""),
                )
            except AeroError as error:
                log.error("certificate key of %s does not open: %s", row.hostname, error.code)
                continue
            key_pem = key.reveal()
        kept[row.hostname] = (sealed_as, key_pem)
        out[row.hostname] = ((row.chain_pem or "").encode("ascii"), key_pem)
    if opened is not None:
        opened.keep(kept)
    return out


# -- key rotation ---------------------------------------------------------------------------


def _sealed_rows(
    session: Session,
) -> Iterator[tuple[Certificate | AcmeAccount | AcmeChallenge, Context]]:
    for cert in session.execute(
        select(Certificate).where(Certificate.key_wrapped.is_not(None))
    ).scalars():
        yield cert, certificate_key_context(cert)
    for account in session.execute(select(AcmeAccount)).scalars():
        yield account, account_key_context(account)
    for challenge in session.execute(
        select(AcmeChallenge).where(AcmeChallenge.key_wrapped.is_not(None))
    ).scalars():
        yield challenge, challenge_key_context(challenge)


def wrapped_keys(session: Session) -> list[str]:
    """Every data key wrapped under the keyring by the certificate tables."""
    return [row.key_wrapped or "" for row, _ in _sealed_rows(session) if row.key_wrapped]


def rewrap_keys(session: Session, keyring: Keyring) -> int:
    """Re-wrap every certificate, ACME account and challenge data key under the active key
    version. No private key is decrypted."""
    count = 0
    for row, context in _sealed_rows(session):
        if row.key_wrapped:
            row.key_wrapped = rewrap(keyring, context, row.key_wrapped)
            count += 1
    return count
