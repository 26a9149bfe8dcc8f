"""drop scheduler_task_health.next_run_at: no version of schedctl ever wrote it

The next run lives on ``scheduler_schedules.next_run_at`` (the exporter's
``scheduler_task_next_run_timestamp_seconds`` and ``schedctl tasks list`` read it there);
the health row's copy was always NULL. Downgrade adds the column back, empty.

Created 2026-12-02.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("scheduler_task_health") as batch:
        batch.drop_column("next_run_at")


def downgrade() -> None:
    with op.batch_alter_table("scheduler_task_health") as batch:
        batch.add_column(sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True))
