"""SQLAlchemy models. Every table the platform writes; migrations mirror this file."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: the same on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class StoreHead(Base):
    """One row: the change-feed revision and the audit chain's tip. Every write transaction
    locks it first, which serialises writers and keeps both counters gap-free."""

    __tablename__ = "store_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    audit_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    audit_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    # Apps created, ever: each app's machine uid is drawn from it, so no uid is handed out twice.
    apps_created: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class Change(Base):
    """The change feed: one row per committed mutation, in revision order."""

    __tablename__ = "changes"
    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entity: Mapped[str] = mapped_column(String(32), nullable=False)
    entity_id: Mapped[str] = mapped_column(String(160), nullable=False)
    op: Mapped[str] = mapped_column(String(16), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    is_platform_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Org(Base):
    __tablename__ = "orgs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("org_id", "user_id", name="uq_membership_org_user"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class App(Base):
    __tablename__ = "apps"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), nullable=False, index=True)
    environment: Mapped[str] = mapped_column(String(16), nullable=False)
    # The uid its machines run as (when the agent is root): its own, never shared or reused.
    machine_uid: Mapped[int] = mapped_column(Integer, unique=True, index=True, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Token(Base):
    """A minted token's metadata. The token itself is never stored: only its id and the
    revocation id of its authority block, which is enough to list and revoke it."""

    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    org_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    app_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    machine_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_by: Mapped[str] = mapped_column(String(32), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    revocation_id: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)


class Revocation(Base):
    """A revoked block. Revoking a block kills every token that carries it, so revoking an
    attenuated child's own block leaves its parent alive."""

    __tablename__ = "revocations"
    revocation_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    token_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    revoked_by: Mapped[str] = mapped_column(String(32), nullable=False)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40), nullable=False)
    actor: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str] = mapped_column(String(200), nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    org_id: Mapped[str] = mapped_column(String(32), nullable=False, default="", index=True)
    request_id: Mapped[str] = mapped_column(String(40), nullable=False, default="")
    client_ip: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)
    at: Mapped[str] = mapped_column(String(40), nullable=False)
    key_id: Mapped[str] = mapped_column(String(64), nullable=False)
    signature: Mapped[str] = mapped_column(String(128), nullable=False)


class KeyVersion(Base):
    """A key-encryption key of the secrets keyring, sealed under the root-derived wrap key."""

    __tablename__ = "key_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    wrapped: Mapped[str] = mapped_column(Text, nullable=False)
    retired: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Secret(Base):
    """One secret name of an app and its current version (0 when it was never set)."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("app_id", "name", name="uq_secret_app_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(256), nullable=False)
    current_version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class SecretVersion(Base):
    """Every version of a secret: its sealed value (or none for an unset), digest and author."""

    __tablename__ = "secret_versions"
    __table_args__ = (UniqueConstraint("app_id", "name", "version", name="uq_secret_version"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(
        ForeignKey("apps.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(256), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    op: Mapped[str] = mapped_column(String(16), nullable=False)
    ciphertext: Mapped[str | None] = mapped_column(Text, nullable=True)
    wrapped_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    digest: Mapped[str | None] = mapped_column(String(32), nullable=True)
    size: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    set_by: Mapped[str] = mapped_column(String(64), nullable=False)
    set_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Release(Base):
    """Release N of an app: what it runs with — the artifact (code), the configuration
    (`aerodrome.toml` as deployed) and the secret versions it carries."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app_id", "number", name="uq_release_number"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(
        ForeignKey("apps.id", ondelete="CASCADE"), nullable=False, index=True
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    secret_versions: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    artifact: Mapped[str | None] = mapped_column(String(80), nullable=True)
    config: Mapped[str | None] = mapped_column(Text, nullable=True)
    description: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    # Fly's release states: pending (created), running (being rolled out), complete (serving),
    # failed (abandoned: the previous release kept serving; `status_reason` says why).
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    status_reason: Mapped[str] = mapped_column(String(300), nullable=False, default="")


class Machine(Base):
    """A machine: one supervised process running a release of an app, in one region.

    The agent writes `state`, `health`, `address` and `reason`; users write `desired`
    (`started` / `stopped`) and bump `generation` to ask for a restart."""

    __tablename__ = "machines"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(
        ForeignKey("apps.id", ondelete="CASCADE"), nullable=False, index=True
    )
    release: Mapped[int] = mapped_column(Integer, nullable=False)
    region: Mapped[str] = mapped_column(String(32), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="created")
    desired: Mapped[str] = mapped_column(String(16), nullable=False, default="started")
    generation: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    health: Mapped[str] = mapped_column(String(16), nullable=False, default="unknown")
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(String(300), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Upstream(Base):
    """An address the edge routes an app's traffic to. Registered through the API until the
    runtime registers its machines itself."""

    __tablename__ = "upstreams"
    __table_args__ = (UniqueConstraint("app_id", "address", name="uq_upstream_app_address"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(
        ForeignKey("apps.id", ondelete="CASCADE"), nullable=False, index=True
    )
    address: Mapped[str] = mapped_column(String(255), nullable=False)
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class AppHttpConfig(Base):
    """An app's HTTP service settings as the edge applies them (JSON, validated on write)."""

    __tablename__ = "app_http_config"
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    config: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Certificate(Base):
    """A TLS certificate the edge serves for one hostname: what claims it, who issues it, where
    it stands, and (once issued) the chain and the private key sealed with the keyring."""

    __tablename__ = "certificates"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(253), unique=True, nullable=False)
    app_id: Mapped[str | None] = mapped_column(
        ForeignKey("apps.id", ondelete="CASCADE"), nullable=True, index=True
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    issuer: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    reason: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    generation: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    chain_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_ciphertext: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_wrapped: Mapped[str | None] = mapped_column(Text, nullable=True)
    serial: Mapped[str | None] = mapped_column(String(64), nullable=True)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    renew_after: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class AcmeAccount(Base):
    """The platform's account at one ACME directory; its key sealed with the keyring."""

    __tablename__ = "acme_accounts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    directory_url: Mapped[str] = mapped_column(String(500), unique=True, nullable=False)
    uri: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    email: Mapped[str] = mapped_column(String(320), nullable=False, default="")
    key_ciphertext: Mapped[str] = mapped_column(Text, nullable=False)
    key_wrapped: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class AcmeChallenge(Base):
    """A challenge the ACME issuer waits on and the edge answers: HTTP-01 (token → key
    authorization) or TLS-ALPN-01 (hostname → RFC 8737 certificate, its key sealed)."""

    __tablename__ = "acme_challenges"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    certificate_id: Mapped[str] = mapped_column(
        ForeignKey("certificates.id", ondelete="CASCADE"), nullable=False, index=True
    )
    hostname: Mapped[str] = mapped_column(String(253), nullable=False, index=True)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    token: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    key_authorization: Mapped[str] = mapped_column(Text, nullable=False)
    cert_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_ciphertext: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_wrapped: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
