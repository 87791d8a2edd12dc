"""edge upstreams and http config

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 10:14:20.598919
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import aerodrome.store.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "app_http_config",
        sa.Column("app_id", sa.String(length=32), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("updated_at", aerodrome.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("app_id"),
    )
    op.create_table(
        "upstreams",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=32), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", aerodrome.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("app_id", "address", name="uq_upstream_app_address"),
    )
    with op.batch_alter_table("upstreams", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_upstreams_app_id"), ["app_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("upstreams", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upstreams_app_id"))

    op.drop_table("upstreams")
    op.drop_table("app_http_config")
