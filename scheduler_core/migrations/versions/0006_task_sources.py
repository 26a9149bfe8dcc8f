"""task sources and run-now arguments

Adds to ``scheduler_schedules``:

- ``source``: who owns the task: ``file`` (a task file's sync), ``module:<name>`` (``@task``
  functions of that module) or ``api`` (created at runtime). A sync touches only its own
  source's tasks. Existing rows came from task files: ``file``.
- ``run_now_overrides``: JSON ``{"args": [...], "kwargs": {...}}`` for the pending run-now
  only (NULL: the task's own arguments).

Created 2026-12-02.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("scheduler_schedules") as batch:
        batch.add_column(
            sa.Column("source", sa.String(length=200), nullable=False, server_default="file")
        )
        batch.add_column(sa.Column("run_now_overrides", sa.Text(), nullable=True))
        batch.create_index("ix_scheduler_schedules_source", ["source"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("scheduler_schedules") as batch:
        batch.drop_index("ix_scheduler_schedules_source")
        batch.drop_column("run_now_overrides")
        batch.drop_column("source")
