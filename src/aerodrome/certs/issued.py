"""What an issuer hands back, and the PEM helpers every issuer shares."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aerodrome.secrets.values import SecretValue


@dataclass(frozen=True)
class Issued:
    """A certificate chain (leaf first) and its private key (PKCS#8 PEM, never in a repr)."""

    chain_pem: bytes
    key: SecretValue
    not_before: datetime
    not_after: datetime
    serial: str
    issuer: str

    @classmethod
    def from_chain(cls, chain_pem: bytes, key: SecretValue, issuer: str) -> Issued:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
        return cls(
            chain_pem=chain_pem,
            key=key,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            serial=format(leaf.serial_number, "x"),
            issuer=issuer,
        )


@dataclass(frozen=True)
class CertRequest:
    """One certificate to obtain: its row, name, and how many attempts failed before."""

    certificate_id: str
    hostname: str
    attempts: int = 0


class Issuer(Protocol):
    name: str

    def issue(self, request: CertRequest) -> Issued: ...


class IssueError(Exception):
    """An issuance failed for a reason worth showing to the app's owner (no key material)."""


def new_leaf_key() -> tuple[ec.EllipticCurvePrivateKey, SecretValue]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, SecretValue(private_pem(key))


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(chain_pem: bytes) -> str:
    """SHA-256 of the leaf's DER, hex."""
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)
