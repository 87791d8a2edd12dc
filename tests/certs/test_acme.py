"""Real ACME issuance against Pebble, with the challenges answered from the store the way the
edge answers them: HTTP-01 and TLS-ALPN-01, failure with a reason, then a retry that works."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store
from sqlalchemy import func, select

from aerodrome.certs import store as cert_store
from aerodrome.certs.acme_issuer import AcmeIssuer
from aerodrome.certs.challenges import HTTP01_PATH_PREFIX
from aerodrome.certs.issued import CertRequest, IssueError
from aerodrome.certs.manager import CertManager, issue_now
from aerodrome.certs.sslctx import ACME_TLS_ALPN_PROTOCOL
from aerodrome.certs.store import account_key_context
from aerodrome.secrets.seal import Sealed, unseal
from aerodrome.services import Services
from aerodrome.store.models import AcmeAccount, AcmeChallenge, AuditEvent, Certificate
from tests.certs.conftest import DOMAIN, acme_settings, make_app, pem_forms, stored_everything
from tests.certs.pebble import ChallengeResponder, Pebble


def verify_with_pebble(pebble: Pebble, chain_pem: bytes, hostname: str) -> None:
    leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem)
    root = x509.load_pem_x509_certificate(pebble.root_pem())
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(datetime.now(UTC))
        .build_server_verifier(x509.DNSName(hostname))
    )
    verifier.verify(leaf, intermediates)


def no_challenges_left(services: Services) -> bool:
    with services.store.read() as session:
        return session.execute(select(AcmeChallenge)).first() is None


def test_http01_issuance_through_pebble(
    services: Services, pebble: Pebble, responder: ChallengeResponder
) -> None:
    make_app(services, "web")
    issuer = AcmeIssuer(services, acme_settings(pebble, "http-01"), propagation_delay=0)
    hostname = f"web.{DOMAIN}"
    row = issue_now(services, hostname, issuer)
    assert (row.status, row.issuer, row.reason) == ("issued", "acme", "")
    assert row.chain_pem is not None
    verify_with_pebble(pebble, row.chain_pem.encode(), hostname)
    # Pebble asked the responder, which answered from the store.
    answered = [hit for hit in responder.http_hits if hit[2] == 200]
    assert answered, responder.http_hits
    path, host, _ = answered[0]
    assert path.startswith(HTTP01_PATH_PREFIX)
    assert host == f"{hostname}:{pebble.http_port}"
    assert no_challenges_left(services), "challenges are withdrawn after validation"
    # Another issuer (say, after a restart) finds the same account: the key is reused, the
    # CA recognises it, and the account is created (and audited) once.
    again = AcmeIssuer(services, acme_settings(pebble, "http-01"), propagation_delay=0)
    assert again._connect().client.net.account is not None
    with services.store.read() as session:
        accounts = list(session.execute(select(AcmeAccount)).scalars())
        created = session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "certs.acme_account.create")
        ).scalar_one()
        keyring = services.keyring(session)
        loaded = cert_store.load_edge_certificates(session, keyring)
        account_key = unseal(
            keyring,
            account_key_context(accounts[0]),
            Sealed(accounts[0].key_ciphertext, accounts[0].key_wrapped),
        ).reveal()
    assert len(accounts) == 1 and created == 1
    assert accounts[0].uri.startswith(f"https://127.0.0.1:{pebble.listen_port}/")
    assert again._connect().client.net.account.uri == accounts[0].uri
    assert set(loaded) == {hostname}
    # Neither the account key nor a certificate key is stored in the clear.
    stored = stored_everything(services)
    for secret in [account_key, *(key for _, key in loaded.values())]:
        serialization.load_pem_private_key(secret, password=None)
        for form in pem_forms(secret):
            assert form not in stored


def test_tls_alpn01_issuance_through_pebble_by_the_manager(
    services: Services, pebble: Pebble, responder: ChallengeResponder
) -> None:
    # No app yet: the manager's one claimed name is the control plane's.
    issuer = AcmeIssuer(services, acme_settings(pebble, "tls-alpn-01"), propagation_delay=0)
    outcomes = CertManager(services, issuer, DOMAIN).run_once()
    names = {f"api.{DOMAIN}"}
    assert {o.hostname for o in outcomes} == names
    assert all(o.ok for o in outcomes), outcomes
    with services.store.read() as session:
        loaded = cert_store.load_edge_certificates(session, services.keyring(session))
    assert set(loaded) == names
    for name, (chain, _key) in loaded.items():
        verify_with_pebble(pebble, chain, name)
    # Pebble's validation handshakes asked for each name and negotiated acme-tls/1.
    assert names <= set(responder.sni_seen)
    assert ACME_TLS_ALPN_PROTOCOL in responder.alpn_negotiated
    assert responder.http_hits == []
    assert no_challenges_left(services)
    with services.store.read() as session:
        actions = [
            e.action
            for e in session.execute(
                select(AuditEvent).where(AuditEvent.action.like("certs.challenge.%"))
            ).scalars()
        ]
    assert actions.count("certs.challenge.publish") == actions.count("certs.challenge.withdraw")


def test_a_failed_validation_is_recorded_with_its_reason_then_retried(
    services: Services, pebble: Pebble
) -> None:
    make_app(services, "web")
    hostname = f"web.{DOMAIN}"
    issuer = AcmeIssuer(services, acme_settings(pebble, "http-01"), propagation_delay=0)
    # Nobody answers on Pebble's validation port.
    with pytest.raises(IssueError) as caught:
        issue_now(services, hostname, issuer)
    reason = str(caught.value)
    assert reason.startswith(f"http-01 validation of {hostname} failed: ")
    with services.store.read() as session:
        row = session.execute(
            select(Certificate).where(Certificate.hostname == hostname)
        ).scalar_one()
        failure = (
            session.execute(
                select(AuditEvent)
                .where(AuditEvent.action == "certs.issue", AuditEvent.outcome == "failed")
                .order_by(AuditEvent.seq.desc())
            )
            .scalars()
            .first()
        )
    assert (row.status, row.reason, row.attempts) == ("failed", reason, 1)
    assert row.next_attempt_at is not None and row.chain_pem is None
    assert failure is not None and json.loads(failure.detail)["hostname"] == hostname
    assert no_challenges_left(services)
    # The edge comes up; the retry succeeds.
    server = ChallengeResponder(services, pebble.http_port, pebble.tls_port)
    try:
        manager = CertManager(services, issuer, DOMAIN)
        assert manager.obtain(CertRequest(row.id, hostname, row.attempts)).ok
    finally:
        server.close()
    with services.store.read() as session:
        row = session.execute(
            select(Certificate).where(Certificate.hostname == hostname)
        ).scalar_one()
    assert (row.status, row.reason, row.attempts, row.issuer) == ("issued", "", 0, "acme")
