"""per-task alert policy

Adds to ``scheduler_schedules``:

- ``alert_policy``: the task's ``alerts:`` block (over its file's defaults) as JSON, in
  seconds for durations (``scheduler_core.alert_policy.AlertPolicy.to_json``); NULL for a task
  without one, which is every task synced before this revision: their definitions, and so
  their digests, have no ``alerts`` either.
- ``ix_scheduler_schedules_alert_policy``: the names of the tasks where it is set (a partial
  index), so that the scheduler's periodic policy alarm check reads those rows only, not
  the whole table every heartbeat.

Created 2026-12-03.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    with op.batch_alter_table("scheduler_schedules") as batch:
        batch.add_column(sa.Column("alert_policy", sa.Text(), nullable=True))
        batch.create_index(
            "ix_scheduler_schedules_alert_policy",
            ["name"],
            unique=False,
            postgresql_where=sa.text("alert_policy IS NOT NULL"),
            sqlite_where=sa.text("alert_policy IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("scheduler_schedules") as batch:
        batch.drop_index(
            "ix_scheduler_schedules_alert_policy",
            postgresql_where=sa.text("alert_policy IS NOT NULL"),
            sqlite_where=sa.text("alert_policy IS NOT NULL"),
        )
        batch.drop_column("alert_policy")
