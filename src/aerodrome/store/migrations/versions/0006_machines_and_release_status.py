"""machines and release status

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 12:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import aerodrome.store.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="complete")
        )
        batch_op.add_column(
            sa.Column("status_reason", sa.String(length=300), nullable=False, server_default="")
        )
    op.create_table(
        "machines",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=32), nullable=False),
        sa.Column("release", sa.Integer(), nullable=False),
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("desired", sa.String(length=16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("health", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.Column("created_at", aerodrome.store.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", aerodrome.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_machines_app_id"), ["app_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_machines_app_id"))
    op.drop_table("machines")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("status_reason")
        batch_op.drop_column("status")
