"""The platform's own certificate authority, for names no public CA should be asked about.

    DATA/ca/root.pem          the root (ECDSA P-256, 10 years): what clients trust
                              (`AERO_CA_BUNDLE`)
    DATA/ca/intermediate.pem  signs the leaves (1 year, replaced when under 120 days remain)

Neither private key is stored anywhere: each is derived from the platform's root secret with
HKDF under its own label and turned into a P-256 scalar (`derive_ca_key`). Whoever holds the
root key file can re-create them; nobody else can, and nothing in the data directory or the
database is enough to sign a certificate. Leaves (ECDSA P-256, SAN = the hostname, 90 days)
get a fresh random key each time, which the caller seals into the store.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aerodrome.certs.hostnames import validate_hostname
from aerodrome.certs.issued import CertRequest, Issued, cert_pem, new_leaf_key, utcnow
from aerodrome.errors import AeroError
from aerodrome.keyfiles import RootSecret

ROOT_KEY_LABEL = "certs/local-ca/root/1"
INTERMEDIATE_KEY_LABEL = "certs/local-ca/intermediate/1"
ROOT_LIFETIME = timedelta(days=3650)
INTERMEDIATE_LIFETIME = timedelta(days=365)
INTERMEDIATE_MIN_REMAINING = timedelta(days=120)  # longer than any leaf it signs
LEAF_LIFETIME = timedelta(days=90)
BACKDATE = timedelta(minutes=5)  # tolerate clients whose clock is a little behind
# The order of the P-256 group: private scalars are integers in [1, n - 1].
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class LocalCAError(AeroError):
    status = 500
    code = "local_ca_error"


def derive_ca_key(root: RootSecret, label: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key derived from the root secret: 384 HKDF bits reduced into [1, n - 1] (the
    64 extra bits make the bias of the reduction negligible)."""
    material = int.from_bytes(root.derive(label, 48), "big")
    return ec.derive_private_key(material % (P256_ORDER - 1) + 1, ec.SECP256R1())


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_once(path: Path, data: bytes) -> bool:
    """Create `path` with `data` unless it exists (atomic: another process racing to create
    it either wins or loses whole). Returns whether this call created it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class LocalCA:
    """Issues leaf certificates from the local CA in `directory` (`DATA/ca`)."""

    name = "local"

    def __init__(self, directory: Path, root: RootSecret) -> None:
        self.directory = directory
        self._root_key = derive_ca_key(root, ROOT_KEY_LABEL)
        self._intermediate_key = derive_ca_key(root, INTERMEDIATE_KEY_LABEL)
        tag = hashlib.sha256(_public_der(self._root_key.public_key())).hexdigest()[:8]
        self.root_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aerodrome"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"aerodrome local root CA {tag}"),
            ]
        )
        self.intermediate_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aerodrome"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"aerodrome local intermediate CA {tag}"),
            ]
        )
        self._root: x509.Certificate | None = None
        self._intermediate: x509.Certificate | None = None

    def __repr__(self) -> str:
        return f"LocalCA({str(self.directory)!r})"

    @property
    def root_path(self) -> Path:
        return self.directory / "root.pem"

    @property
    def intermediate_path(self) -> Path:
        return self.directory / "intermediate.pem"

    # -- the CA certificates -----------------------------------------------------------------

    def ensure(self, now: datetime | None = None) -> None:
        """Create the root and intermediate certificates on first use; replace the
        intermediate when it nears its end. Safe to call from several processes."""
        now = now or utcnow()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        if self._root is None:
            if not self.root_path.exists():
                _write_once(self.root_path, cert_pem(self._make_root(now)))
            self._root = self._load_root()
        current = self._intermediate or self._load_intermediate()
        if current is None or current.not_valid_after_utc - now < INTERMEDIATE_MIN_REMAINING:
            fresh = self._make_intermediate(now)
            if current is None:
                _write_once(self.intermediate_path, cert_pem(fresh))
            else:
                _replace(self.intermediate_path, cert_pem(fresh))
            current = self._load_intermediate()
            if current is None:
                raise LocalCAError(f"{self.intermediate_path} could not be written")
        self._intermediate = current

    def root_pem(self) -> bytes:
        self.ensure()
        assert self._root is not None
        return cert_pem(self._root)

    def _load_root(self) -> x509.Certificate:
        try:
            root = x509.load_pem_x509_certificate(self.root_path.read_bytes())
        except ValueError as exc:
            raise LocalCAError(f"{self.root_path} is not a PEM certificate") from exc
        if _public_der(root.public_key()) != _public_der(self._root_key.public_key()):
            raise LocalCAError(
                f"{self.root_path} was not made with this platform's root key",
                hint=f"move {self.directory} away to create a new local CA "
                "(clients must then trust the new root.pem)",
            )
        return root

    def _load_intermediate(self) -> x509.Certificate | None:
        """The stored intermediate, or None when it is missing or not this CA's."""
        assert self._root is not None
        try:
            cert = x509.load_pem_x509_certificate(self.intermediate_path.read_bytes())
            cert.verify_directly_issued_by(self._root)
        except (OSError, ValueError, TypeError, InvalidSignature):
            return None
        mine = _public_der(self._intermediate_key.public_key())
        if _public_der(cert.public_key()) != mine:
            return None
        return cert

    def _ca_builder(
        self, subject: x509.Name, key: ec.EllipticCurvePrivateKey, now: datetime, life: timedelta
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + life)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )

    def _make_root(self, now: datetime) -> x509.Certificate:
        key = self._root_key
        return (
            self._ca_builder(self.root_name, key, now, ROOT_LIFETIME)
            .issuer_name(self.root_name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .sign(key, hashes.SHA256())
        )

    def _make_intermediate(self, now: datetime) -> x509.Certificate:
        assert self._root is not None
        key = self._intermediate_key
        not_after = min(now + INTERMEDIATE_LIFETIME, self._root.not_valid_after_utc)
        return (
            self._ca_builder(self.intermediate_name, key, now, not_after - now)
            .issuer_name(self._root.subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._root_key.public_key()),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._root_key, hashes.SHA256())
        )

    # -- leaves ------------------------------------------------------------------------------

    def issue(self, request: CertRequest) -> Issued:
        return self.issue_for(request.hostname)

    def issue_for(self, hostname: str, now: datetime | None = None) -> Issued:
        """A leaf for `hostname` (already known to be claimed), chained to the intermediate."""
        name = validate_hostname(hostname)
        now = now or utcnow()
        self.ensure(now)
        intermediate = self._intermediate
        assert intermediate is not None
        key, key_pem = new_leaf_key()
        not_after = min(now + LEAF_LIFETIME, intermediate.not_valid_after_utc)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._intermediate_key.public_key()
                ),
                critical=False,
            )
            .sign(self._intermediate_key, hashes.SHA256())
        )
        return Issued.from_chain(cert_pem(leaf) + cert_pem(intermediate), key_pem, self.name)
