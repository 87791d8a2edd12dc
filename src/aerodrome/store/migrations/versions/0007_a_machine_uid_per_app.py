"""a machine uid per app

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 17:30:00.000000

Existing apps get their uids in the order they were created, as `create_app` would have
handed them out; the counter continues after them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in aerodrome.platform.apps.MACHINE_UIDS when this migration was written.
FIRST_UID = {"production": 0x7000_0000, "test": 0x7400_0000}


def upgrade() -> None:
    with op.batch_alter_table("store_head", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("apps_created", sa.BigInteger(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("machine_uid", sa.Integer(), nullable=True))
    bind = op.get_bind()
    apps = bind.execute(sa.text("SELECT id, environment FROM apps ORDER BY created_at, id")).all()
    for serial, (app_id, environment) in enumerate(apps):
        bind.execute(
            sa.text("UPDATE apps SET machine_uid = :uid WHERE id = :id"),
            {"uid": FIRST_UID[environment] + serial, "id": app_id},
        )
    bind.execute(sa.text("UPDATE store_head SET apps_created = :n"), {"n": len(apps)})
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.alter_column("machine_uid", existing_type=sa.Integer(), nullable=False)
        batch_op.create_unique_constraint("uq_apps_machine_uid", ["machine_uid"])


def downgrade() -> None:
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.drop_constraint("uq_apps_machine_uid", type_="unique")
        batch_op.drop_column("machine_uid")
    with op.batch_alter_table("store_head", schema=None) as batch_op:
        batch_op.drop_column("apps_created")
