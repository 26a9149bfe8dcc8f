"""queued retries: every failed tick with attempts left keeps its retry

Adds ``retries_queued`` (JSON text, NULL when at most one retry is pending) to
``scheduler_schedules``: the pending retries after the earliest one, which stays in
``retry_at`` / ``retry_scheduled_for`` / ``retry_attempt``. Downgrade drops the column, and
with it any retries queued behind the earliest.

Created 2026-12-01.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("scheduler_schedules") as batch:
        batch.add_column(sa.Column("retries_queued", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduler_schedules") as batch:
        batch.drop_column("retries_queued")
