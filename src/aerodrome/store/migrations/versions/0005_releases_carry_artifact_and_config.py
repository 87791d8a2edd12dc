"""releases carry artifact and config

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 11:29:15.895983
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("artifact", sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column("config", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("config")
        batch_op.drop_column("artifact")
