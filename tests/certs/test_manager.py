"""The certificate manager over the store: claims, issuance, failures and backoff, renewal,
sealed keys, key rotation, challenges, and never a certificate for a name nothing claims."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from aerodrome.certs import store as cert_store
from aerodrome.certs.acme_issuer import AcmeIssuer
from aerodrome.certs.challenges import (
    ACME_IDENTIFIER_OID,
    HTTP01,
    TLSALPN01,
    PendingChallenge,
    load_challenges,
    publish_challenges,
    tls_alpn_certificate,
    withdraw_challenges,
)
from aerodrome.certs.config import CertsSettings
from aerodrome.certs.issued import CertRequest, Issued, IssueError, utcnow
from aerodrome.certs.local_ca import INTERMEDIATE_KEY_LABEL, ROOT_KEY_LABEL, derive_ca_key
from aerodrome.certs.manager import CertManager, NotClaimed, issue_now, local_ca
from aerodrome.platform import apps as app_rules
from aerodrome.platform import secrets as secret_rules
from aerodrome.services import Services
from aerodrome.store.models import AcmeChallenge, AuditEvent, Certificate, Change
from tests.certs.conftest import DOMAIN, make_app, pem_forms, stored_everything


@dataclass
class RecordingIssuer:
    """The local CA, recording every name it is asked for; fails while `failures` > 0."""

    services: Services
    name: str = "local"
    failures: int = 0
    asked: list[str] = field(default_factory=list)

    def issue(self, request: CertRequest) -> Issued:
        self.asked.append(request.hostname)
        if self.failures > 0:
            self.failures -= 1
            raise IssueError(f"http-01 validation of {request.hostname} failed: connection refused")
        issued = local_ca(self.services).issue(request)
        return Issued(
            issued.chain_pem,
            issued.key,
            issued.not_before,
            issued.not_after,
            issued.serial,
            self.name,
        )


def certificate(services: Services, hostname: str) -> Certificate | None:
    with services.store.read() as session:
        return session.execute(
            select(Certificate).where(Certificate.hostname == hostname)
        ).scalar_one_or_none()


def edge_certificates(services: Services) -> dict[str, tuple[bytes, bytes]]:
    with services.store.read() as session:
        return cert_store.load_edge_certificates(session, services.keyring(session))


def events(services: Services, action: str) -> list[AuditEvent]:
    with services.store.read() as session:
        return list(
            session.execute(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            ).scalars()
        )


def test_every_claimed_name_gets_a_certificate_the_edge_can_load(services: Services) -> None:
    make_app(services, "web")
    make_app(services, "shop")
    issuer = RecordingIssuer(services)
    manager = CertManager(services, issuer, DOMAIN)
    before = services.store.revision()
    outcomes = manager.run_once()
    wanted = {f"api.{DOMAIN}", f"web.{DOMAIN}", f"shop.{DOMAIN}"}
    assert {o.hostname for o in outcomes if o.ok} == wanted
    assert set(issuer.asked) == wanted
    loaded = edge_certificates(services)
    assert set(loaded) == wanted
    assert repr(loaded) == f"EdgeCertificates({sorted(wanted)})"  # names only
    for hostname, (chain, key_pem) in loaded.items():
        leaf = x509.load_pem_x509_certificates(chain)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
        assert key.public_key() == leaf.public_key()
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [hostname]
        row = certificate(services, hostname)
        assert row is not None and row.status == "issued" and row.issuer == "local"
        assert row.not_before is not None and row.not_after is not None
        assert row.renew_after == row.not_before + (row.not_after - row.not_before) * 2 / 3
        assert row.id.startswith("crt_")
    # Each creation and each issuance: one change-feed entry and one audit event, names only.
    with services.store.read() as session:
        changes = list(session.execute(select(Change).where(Change.revision > before)).scalars())
    assert (
        sorted(c.op for c in changes if c.entity == "certificate") == ["create"] * 3 + ["issue"] * 3
    )
    issued = events(services, "certs.issue")
    assert {json.loads(e.detail)["hostname"] for e in issued} == wanted
    for event in [*issued, *events(services, "certs.create")]:
        assert "PRIVATE" not in event.detail and "CERTIFICATE" not in event.detail
    # Nothing more to do on the next pass.
    assert manager.run_once() == []


def test_never_a_certificate_for_a_name_nothing_claims(services: Services) -> None:
    make_app(services, "web")
    issuer = RecordingIssuer(services)
    before = services.store.revision()
    for name in ("evil.example.com", f"ghost.{DOMAIN}", f"x.web.{DOMAIN}", "www.google.com"):
        with pytest.raises(NotClaimed):
            issue_now(services, name, issuer)
    assert issuer.asked == []
    assert services.store.revision() == before, "a refused name must change nothing"
    # Even asked directly with a made-up row, the manager checks the claim first.
    manager = CertManager(services, issuer, DOMAIN)
    outcome = manager.obtain(CertRequest("crt_" + "a" * 24, "evil.example.com"))
    assert not outcome.ok and outcome.reason == "not claimed"
    assert issuer.asked == [] and certificate(services, "evil.example.com") is None


def test_names_stop_being_claimed_when_the_domain_or_the_app_goes(services: Services) -> None:
    web = make_app(services, "web")
    make_app(services, "shop")
    issuer = RecordingIssuer(services)
    CertManager(services, issuer, DOMAIN).run_once()
    with services.store.write() as tx:
        cert_store.add_custom(tx, web, "www.example.com", DOMAIN, "local")
    CertManager(services, issuer, DOMAIN).run_once()
    assert "www.example.com" in edge_certificates(services)
    # The platform moves to another domain: the old names lose their claim.
    issuer.asked.clear()
    CertManager(services, issuer, "other.test").run_once()
    assert set(issuer.asked) == {"api.other.test", "web.other.test", "shop.other.test"}
    names = set(edge_certificates(services))
    assert names == {"api.other.test", "web.other.test", "shop.other.test", "www.example.com"}
    removed = {json.loads(e.detail)["hostname"] for e in events(services, "certs.remove")}
    assert removed == {f"api.{DOMAIN}", f"web.{DOMAIN}", f"shop.{DOMAIN}"}
    # The app goes: its certificates (own and custom) go with it, sealed keys included.
    with services.store.write() as tx:
        app_rules.destroy_app(tx, tx.session.merge(web))
    assert set(edge_certificates(services)) == {"api.other.test", "shop.other.test"}
    destroyed = events(services, "app.destroy")[-1]
    assert json.loads(destroyed.detail)["certificates"] == ["web.other.test", "www.example.com"]
    issuer.asked.clear()
    CertManager(services, issuer, "other.test").run_once()
    assert issuer.asked == []


def test_failures_are_recorded_and_retried_with_backoff(services: Services) -> None:
    make_app(services, "web")
    issuer = RecordingIssuer(services, failures=2)
    manager = CertManager(services, issuer, DOMAIN, backoff_base=60)
    hostname = f"web.{DOMAIN}"
    manager.reconcile()
    pending = certificate(services, hostname)
    assert pending is not None and pending.status == "pending"
    row_id = pending.id
    request = CertRequest(row_id, hostname)

    first = manager.obtain(request)
    row = certificate(services, hostname)
    assert row is not None and not first.ok
    assert row.status == "failed" and row.attempts == 1
    assert row.reason == f"http-01 validation of {hostname} failed: connection refused"
    assert row.next_attempt_at is not None
    assert timedelta(seconds=55) < row.next_attempt_at - utcnow() <= timedelta(seconds=60)
    with services.store.read() as session:
        due = [r.hostname for r in cert_store.due(session, "local")]
    assert hostname not in due, "not before its retry time"
    failed = [e for e in events(services, "certs.issue") if e.outcome == "failed"]
    assert len(failed) == 1 and failed[0].reason == "issuance_failed"
    assert json.loads(failed[0].detail)["message"] == row.reason

    later = row.next_attempt_at + timedelta(seconds=1)
    with services.store.read() as session:
        again = [r for r in cert_store.due(session, "local", later) if r.hostname == hostname]
    assert again and again[0].attempts == 1
    manager.obtain(again[0])
    row = certificate(services, hostname)
    assert row is not None and row.attempts == 2
    assert row.next_attempt_at is not None
    assert timedelta(seconds=115) < row.next_attempt_at - utcnow() <= timedelta(seconds=120)

    assert manager.obtain(CertRequest(row_id, hostname, row.attempts)).ok
    row = certificate(services, hostname)
    assert row is not None
    assert (row.status, row.reason, row.attempts, row.next_attempt_at) == ("issued", "", 0, None)
    assert manager.backoff(30).total_seconds() == 86400, "capped at a day"


def test_renewal_after_two_thirds_of_the_lifetime(services: Services) -> None:
    make_app(services, "web")
    manager = CertManager(services, RecordingIssuer(services), DOMAIN)
    manager.run_once()
    hostname = f"web.{DOMAIN}"
    first = certificate(services, hostname)
    assert first is not None and first.renew_after is not None and first.not_before is not None
    # 2/3 of 90 days (and of the 5 minutes the start is backdated by)
    assert (
        timedelta(days=60) <= first.renew_after - first.not_before <= timedelta(days=60, minutes=4)
    )
    old_key = edge_certificates(services)[hostname][1]
    assert manager.run_once(first.renew_after - timedelta(seconds=1)) == []
    renewed = manager.run_once(first.renew_after + timedelta(seconds=1))
    assert {o.hostname for o in renewed} == {hostname, f"api.{DOMAIN}"}
    second = certificate(services, hostname)
    assert second is not None
    assert second.generation == first.generation + 1 and second.serial != first.serial
    assert edge_certificates(services)[hostname][1] != old_key


def test_another_issuer_replaces_certificates(services: Services) -> None:
    make_app(services, "web")
    CertManager(services, RecordingIssuer(services), DOMAIN).run_once()
    acme = RecordingIssuer(services, name="acme")
    CertManager(services, acme, DOMAIN).run_once()
    assert sorted(acme.asked) == [f"api.{DOMAIN}", f"web.{DOMAIN}"]
    row = certificate(services, f"web.{DOMAIN}")
    assert row is not None and row.issuer == "acme"


def test_a_failed_renewal_keeps_serving_the_current_certificate(services: Services) -> None:
    make_app(services, "web")
    manager = CertManager(services, RecordingIssuer(services), DOMAIN)
    manager.run_once()
    hostname = f"web.{DOMAIN}"
    served = edge_certificates(services)[hostname]
    failing = CertManager(services, RecordingIssuer(services, failures=5), DOMAIN)
    row = certificate(services, hostname)
    assert row is not None and row.renew_after is not None
    failing.run_once(row.renew_after + timedelta(seconds=1))
    row = certificate(services, hostname)
    assert row is not None and row.status == "failed"
    assert edge_certificates(services)[hostname] == served


def test_private_keys_are_sealed_everywhere(services: Services) -> None:
    web = make_app(services, "web")
    with services.store.write() as tx:
        cert_store.add_custom(tx, web, "www.example.com", DOMAIN, "local")
    CertManager(services, local_ca(services), DOMAIN).run_once()
    loaded = edge_certificates(services)
    assert len(loaded) == 3
    # A pending TLS-ALPN-01 challenge key is sealed too.
    row = certificate(services, f"web.{DOMAIN}")
    assert row is not None
    challenge_cert, challenge_key = tls_alpn_certificate(f"web.{DOMAIN}", "tok.thumb")
    with services.store.write() as tx:
        publish_challenges(
            tx,
            services.keyring(tx.session),
            [
                PendingChallenge(
                    row.id,
                    row.hostname,
                    TLSALPN01,
                    "tok",
                    "tok.thumb",
                    challenge_cert,
                    challenge_key,
                )
            ],
        )
    stored = stored_everything(services)
    assert b"BEGIN CERTIFICATE" in stored, "the dump must see the stored chains"
    secrets = [key for _, key in loaded.values()] + [challenge_key.reveal()]
    for label in (ROOT_KEY_LABEL, INTERMEDIATE_KEY_LABEL):
        secrets.append(
            derive_ca_key(services.root_secret, label).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    for secret in secrets:
        for form in pem_forms(secret):
            assert form not in stored
    assert b"PRIVATE KEY" not in stored


def test_rotating_keys_rewraps_certificate_keys_and_keeps_them_usable(
    services: Services,
) -> None:
    make_app(services, "web")
    CertManager(services, local_ca(services), DOMAIN).run_once()
    AcmeIssuer(
        services, CertsSettings(acme_directory="https://acme.invalid/dir")
    )._account()  # an account key, sealed (no network needed to create it)
    row = certificate(services, f"web.{DOMAIN}")
    assert row is not None
    cert_pem, key = tls_alpn_certificate(row.hostname, "tok.thumb")
    with services.store.write() as tx:
        publish_challenges(
            tx,
            services.keyring(tx.session),
            [PendingChallenge(row.id, row.hostname, TLSALPN01, "tok", "tok.thumb", cert_pem, key)],
        )
    before = edge_certificates(services)
    with services.store.read() as session:
        challenges_before = load_challenges(session, services.keyring(session))
        counts = {i.version: i.data_keys for i in secret_rules.list_key_versions(session)}
    assert counts == {1: 2 + 1 + 1}, "two certificates, one account, one challenge"
    with services.store.write() as tx:
        version, rewrapped = secret_rules.rotate_keys(tx, services.root_secret)
    assert (version, rewrapped) == (2, 4)
    with services.store.write() as tx:
        assert secret_rules.retire_keys(tx, 2) == [1]
    with services.store.read() as session:
        infos = {i.version: (i.state, i.data_keys) for i in secret_rules.list_key_versions(session)}
        challenges_after = load_challenges(session, services.keyring(session))
    assert infos == {1: ("retired", 0), 2: ("active", 4)}
    assert edge_certificates(services) == before
    assert challenges_after.tlsalpn01 == challenges_before.tlsalpn01
    # The account key still opens, and renewal seals under the new version.
    AcmeIssuer(services, CertsSettings(acme_directory="https://acme.invalid/dir"))._account()
    issue_now(services, f"web.{DOMAIN}", local_ca(services))
    assert set(edge_certificates(services)) == set(before)


def test_challenges_are_published_loaded_and_withdrawn(services: Services) -> None:
    make_app(services, "web")
    manager = CertManager(services, local_ca(services), DOMAIN)
    manager.reconcile()
    row = certificate(services, f"web.{DOMAIN}")
    assert row is not None
    auth = "tok-alpn.thumbprint"
    cert_pem, key = tls_alpn_certificate(row.hostname, auth)
    pending = [
        PendingChallenge(row.id, row.hostname, HTTP01, "tok-http", "tok-http.thumbprint"),
        PendingChallenge(row.id, row.hostname, TLSALPN01, "tok-alpn", auth, cert_pem, key),
    ]
    before = services.store.revision()
    with services.store.write() as tx:
        ids = publish_challenges(tx, services.keyring(tx.session), pending)
    assert services.store.revision() == before + 2, "followers see a new revision"
    with services.store.read() as session:
        loaded = load_challenges(session, services.keyring(session))
    assert loaded.http01 == {"tok-http": "tok-http.thumbprint"}
    assert list(loaded.tlsalpn01) == [row.hostname]
    assert "PRIVATE" not in repr(loaded) and "tok-http" not in repr(loaded)
    served_cert, served_key = loaded.tlsalpn01[row.hostname]
    assert served_key == key.reveal()
    cert = x509.load_pem_x509_certificate(served_cert)
    extension = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert extension.critical
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(auth.encode()).digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [row.hostname]
    with services.store.write() as tx:
        assert withdraw_challenges(tx, ids) == 2
    with services.store.read() as session:
        assert not load_challenges(session, services.keyring(session))
    assert {e.action for e in events(services, "certs.challenge.withdraw")} == {
        "certs.challenge.withdraw"
    }
    # Left behind by an issuer that died: not served once expired, and purged.
    with services.store.write() as tx:
        publish_challenges(
            tx, services.keyring(tx.session), pending[:1], now=utcnow() - timedelta(hours=1)
        )
    with services.store.read() as session:
        assert not load_challenges(session, services.keyring(session))
    assert manager.reconcile().expired_challenges == 1
    with services.store.read() as session:
        assert session.execute(select(AcmeChallenge)).first() is None


def test_the_manager_follows_the_store(services: Services) -> None:
    manager = CertManager(services, local_ca(services), DOMAIN)
    stop = threading.Event()
    thread = threading.Thread(target=manager.run, args=(stop,), kwargs={"poll": 0.05})
    thread.start()
    try:
        make_app(services, "late")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if f"late.{DOMAIN}" in edge_certificates(services):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the manager did not issue for a new app")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_the_edge_unseals_again_only_the_keys_that_changed(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_app(services, "web")
    make_app(services, "shop")
    issuer = RecordingIssuer(services)
    CertManager(services, issuer, DOMAIN).run_once()
    unsealed: list[str] = []
    real = cert_store.unseal

    def counting(keyring: object, context: object, sealed: object) -> object:
        unsealed.append(str(context))
        return real(keyring, context, sealed)  # type: ignore[arg-type]

    monkeypatch.setattr(cert_store, "unseal", counting)
    opened = cert_store.OpenedKeys()

    def load() -> dict[str, tuple[bytes, bytes]]:
        with services.store.read() as session:
            keyring = services.keyring(session)
            return cert_store.load_edge_certificates(session, keyring, opened=opened)

    first = load()
    assert len(unsealed) == 3 and load() == first and len(unsealed) == 3  # nothing changed
    web = f"web.{DOMAIN}"
    issue_now(services, web, issuer)  # a new key for one name
    renewed = load()
    assert len(unsealed) == 4 and renewed[web] != first[web]
    assert {k: v for k, v in renewed.items() if k != web} == {
        k: v for k, v in first.items() if k != web
    }
    assert "PRIVATE" not in repr(opened) and web in repr(opened)
    with services.store.write() as tx:
        secret_rules.rotate_keys(tx, services.root_secret)  # every key re-wrapped: opens afresh
    assert load() == renewed and len(unsealed) == 7
    with services.store.write() as tx:
        app_rules.destroy_app(tx, app_rules.get_app(tx.session, "shop"))
    assert f"shop.{DOMAIN}" not in load() and f"shop.{DOMAIN}" not in repr(opened)
