"""certificates and acme

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 10:17:19.280675
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import aerodrome.store.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("directory_url", sa.String(length=500), nullable=False),
        sa.Column("uri", sa.String(length=500), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("key_ciphertext", sa.Text(), nullable=False),
        sa.Column("key_wrapped", sa.Text(), nullable=False),
        sa.Column("created_at", aerodrome.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("directory_url"),
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("hostname", sa.String(length=253), nullable=False),
        sa.Column("app_id", sa.String(length=32), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("issuer", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("chain_pem", sa.Text(), nullable=True),
        sa.Column("key_ciphertext", sa.Text(), nullable=True),
        sa.Column("key_wrapped", sa.Text(), nullable=True),
        sa.Column("serial", sa.String(length=64), nullable=True),
        sa.Column("not_before", aerodrome.store.models.UTCDateTime(), nullable=True),
        sa.Column("not_after", aerodrome.store.models.UTCDateTime(), nullable=True),
        sa.Column("renew_after", aerodrome.store.models.UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", aerodrome.store.models.UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", aerodrome.store.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", aerodrome.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hostname"),
    )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_certificates_app_id"), ["app_id"], unique=False)

    op.create_table(
        "acme_challenges",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("certificate_id", sa.String(length=32), nullable=False),
        sa.Column("hostname", sa.String(length=253), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("token", sa.String(length=128), nullable=False),
        sa.Column("key_authorization", sa.Text(), nullable=False),
        sa.Column("cert_pem", sa.Text(), nullable=True),
        sa.Column("key_ciphertext", sa.Text(), nullable=True),
        sa.Column("key_wrapped", sa.Text(), nullable=True),
        sa.Column("created_at", aerodrome.store.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", aerodrome.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["certificate_id"], ["certificates.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token"),
    )
    with op.batch_alter_table("acme_challenges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_acme_challenges_certificate_id"), ["certificate_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_acme_challenges_hostname"), ["hostname"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("acme_challenges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_acme_challenges_hostname"))
        batch_op.drop_index(batch_op.f("ix_acme_challenges_certificate_id"))

    op.drop_table("acme_challenges")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificates_app_id"))

    op.drop_table("certificates")
    op.drop_table("acme_accounts")
