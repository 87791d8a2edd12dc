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
    # No batch mode: on SQLite it would copy `apps` and drop the original, and with foreign
    # keys on, dropping it deletes every row that references an app (releases, secrets,
    # routes, machines, certificates). Plain ADD COLUMN and CREATE INDEX copy nothing.
    op.add_column(
        "store_head",
        sa.Column("apps_created", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.add_column("apps", sa.Column("machine_uid", sa.Integer(), nullable=True))
    bind = op.get_bind()
    apps = bind.execute(sa.text("SELECT id, environment FROM apps ORDER BY created_at, id")).all()
    for serial, (app_id, environment) in enumerate(apps):
        bind.execute(
            sa.text("UPDATE apps SET machine_uid = :uid WHERE id = :id"),
            {"uid": FIRST_UID[environment] + serial, "id": app_id},
        )
    bind.execute(sa.text("UPDATE store_head SET apps_created = :n"), {"n": len(apps)})
    op.create_index("ix_apps_machine_uid", "apps", ["machine_uid"], unique=True)
    if bind.dialect.name != "sqlite":  # SQLite cannot add NOT NULL without a copy
        op.alter_column("apps", "machine_uid", existing_type=sa.Integer(), nullable=False)


def downgrade() -> None:
    # Native DROP COLUMN (SQLite 3.35+), never a copy of `apps` (see upgrade).
    op.drop_index("ix_apps_machine_uid", table_name="apps")
    op.drop_column("apps", "machine_uid")
    op.drop_column("store_head", "apps_created")
