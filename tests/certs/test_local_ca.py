"""The local CA: a root and an intermediate made once, leaves that verify, a real TLS handshake
with SNI and hostname verification, and CA keys that exist nowhere but in memory."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from aerodrome.certs import sslctx
from aerodrome.certs.local_ca import (
    INTERMEDIATE_KEY_LABEL,
    ROOT_KEY_LABEL,
    LocalCA,
    LocalCAError,
    derive_ca_key,
)
from aerodrome.certs.sslctx import server_context
from aerodrome.keyfiles import RootSecret
from aerodrome.secrets.values import SecretValue


@pytest.fixture
def root_secret() -> RootSecret:
    return RootSecret(os.urandom(32))


@pytest.fixture
def ca(tmp_path: Path, root_secret: RootSecret) -> LocalCA:
    return LocalCA(tmp_path / "ca", root_secret)


def verify(root_pem: bytes, chain_pem: bytes, hostname: str, at: datetime | None = None) -> None:
    leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem)
    verifier = (
        PolicyBuilder()
        .store(Store([x509.load_pem_x509_certificate(root_pem)]))
        .time(at or datetime.now(UTC))
        .build_server_verifier(x509.DNSName(hostname))
    )
    verifier.verify(leaf, intermediates)


def test_leaf_chain_verifies_against_the_root(ca: LocalCA) -> None:
    issued = ca.issue_for("web.aero.test")
    chain = x509.load_pem_x509_certificates(issued.chain_pem)
    assert len(chain) == 2, "leaf + intermediate"
    leaf, intermediate = chain
    root = x509.load_pem_x509_certificate(ca.root_path.read_bytes())
    # WebPKI path validation (the same rules browsers apply), for the name and no other.
    verify(ca.root_path.read_bytes(), issued.chain_pem, "web.aero.test")
    with pytest.raises(VerificationError):
        verify(ca.root_path.read_bytes(), issued.chain_pem, "other.aero.test")
    # The shapes the brief asks for.
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web.aero.test"]
    for cert in (leaf, intermediate, root):
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(days=90) <= lifetime <= timedelta(days=90, minutes=5)
    root_life = root.not_valid_after_utc - root.not_valid_before_utc
    assert timedelta(days=3650) <= root_life <= timedelta(days=3650, minutes=5)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.issuer == intermediate.subject and intermediate.issuer == root.subject
    assert issued.not_after == leaf.not_valid_after_utc
    assert issued.serial == format(leaf.serial_number, "x")
    # The key belongs to the leaf, and is never shown by a repr.
    key = serialization.load_pem_private_key(issued.key.reveal(), password=None)
    assert key.public_key() == leaf.public_key()
    assert "PRIVATE" not in repr(issued) and isinstance(issued.key, SecretValue)


def test_the_ca_is_made_once_and_reused(tmp_path: Path, root_secret: RootSecret) -> None:
    first = LocalCA(tmp_path / "ca", root_secret)
    first.ensure()
    root, intermediate = first.root_path.read_bytes(), first.intermediate_path.read_bytes()
    second = LocalCA(tmp_path / "ca", root_secret)
    issued = second.issue_for("shop.aero.test")
    assert second.root_path.read_bytes() == root
    assert second.intermediate_path.read_bytes() == intermediate
    verify(root, issued.chain_pem, "shop.aero.test")
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["intermediate.pem", "root.pem"]
    assert (tmp_path / "ca").stat().st_mode & 0o077 == 0


def test_a_ca_from_another_root_key_is_refused(tmp_path: Path, root_secret: RootSecret) -> None:
    LocalCA(tmp_path / "ca", root_secret).ensure()
    stranger = LocalCA(tmp_path / "ca", RootSecret(os.urandom(32)))
    with pytest.raises(LocalCAError) as caught:
        stranger.issue_for("web.aero.test")
    assert "not made with this platform's root key" in caught.value.message
    assert "move" in caught.value.hint


def test_the_intermediate_is_replaced_before_it_runs_out(ca: LocalCA) -> None:
    start = datetime.now(UTC)
    ca.issue_for("web.aero.test", now=start)
    first = ca.intermediate_path.read_bytes()
    # 125 days left on the one-year intermediate: kept.
    before = ca.issue_for("web.aero.test", now=start + timedelta(days=240))
    assert ca.intermediate_path.read_bytes() == first
    # 115 days left: replaced, so that no 90-day leaf outlives the intermediate it needs.
    switch = start + timedelta(days=250)
    after = ca.issue_for("web.aero.test", now=switch)
    second = ca.intermediate_path.read_bytes()
    assert second != first
    root = ca.root_path.read_bytes()
    verify(root, after.chain_pem, "web.aero.test", at=switch)
    # Same key and name: a leaf of the old intermediate also chains through the new one.
    leaf_pem = before.chain_pem.split(b"-----END CERTIFICATE-----")[0]
    rechained = leaf_pem + b"-----END CERTIFICATE-----\n" + second
    verify(root, rechained, "web.aero.test", at=switch + timedelta(days=1))
    new_intermediate = x509.load_pem_x509_certificate(second)
    assert after.not_after <= new_intermediate.not_valid_after_utc
    assert before.not_after <= x509.load_pem_x509_certificate(first).not_valid_after_utc


def test_ca_keys_are_derived_and_never_written(
    tmp_path: Path, ca: LocalCA, root_secret: RootSecret
) -> None:
    ca.issue_for("web.aero.test")
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b"BEGIN CERTIFICATE" in stored  # the CA did write here: the search below means something
    for label in (ROOT_KEY_LABEL, INTERMEDIATE_KEY_LABEL):
        key = derive_ca_key(root_secret, label)
        assert derive_ca_key(root_secret, label).private_numbers() == key.private_numbers()
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        assert der not in stored and scalar not in stored
    assert b"PRIVATE KEY" not in stored


# -- a real handshake ------------------------------------------------------------------------


class TLSServer:
    """A TLS server on 127.0.0.1 that picks its certificate by SNI, as the edge does."""

    def __init__(self, certs: dict[str, tuple[bytes, bytes]], default: str) -> None:
        self.contexts = {name: server_context(*pair) for name, pair in certs.items()}
        self.default = self.contexts[default]
        self.default.sni_callback = self._sni
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name in self.contexts:
            sslobj.context = self.contexts[name]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.default.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello over " + tls.version().encode())
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def tls_server(ca: LocalCA) -> Iterator[TLSServer]:
    certs = {}
    for name in ("web.aero.test", "shop.example.com"):
        issued = ca.issue_for(name)
        certs[name] = (issued.chain_pem, issued.key.reveal())
    server = TLSServer(certs, default="web.aero.test")
    try:
        yield server
    finally:
        server.close()


def handshake(port: int, sni: str, cafile: Path | None) -> tuple[str, x509.Certificate]:
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        peer = tls.getpeercert(binary_form=True)
        assert peer is not None
        return tls.recv(64).decode(), x509.load_der_x509_certificate(peer)


def test_tls_handshake_with_sni_and_hostname_verification(
    ca: LocalCA, tls_server: TLSServer
) -> None:
    for name in ("web.aero.test", "shop.example.com"):
        greeting, cert = handshake(tls_server.port, name, ca.root_path)
        assert greeting.startswith("hello over TLSv1.")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name]
    # A name the server has no certificate for gets the default one: hostname check fails.
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(tls_server.port, "unknown.aero.test", ca.root_path)
    # Without the local root, the chain is not trusted.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tls_server.port, "web.aero.test", None)


def test_without_memfd_no_private_key_reaches_a_file_in_plaintext(
    ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = ca.issue_for("web.aero.test")
    chain, key = issued.chain_pem, issued.key.reveal()
    written: list[bytes] = []
    real = sslctx._memory_file

    @contextlib.contextmanager
    def spy(name: str, data: bytes) -> Iterator[str]:
        written.append(data)
        with real(name, data) as path:
            yield path

    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setattr(sslctx, "_memory_file", spy)
    context = server_context(chain, key)  # still loads: the key goes encrypted
    assert isinstance(context, ssl.SSLContext) and len(written) == 2
    assert key not in written and b"PRIVATE KEY-----\n" in written[1]
    assert b"ENCRYPTED PRIVATE KEY" in written[1]
