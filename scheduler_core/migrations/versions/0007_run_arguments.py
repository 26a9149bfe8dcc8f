"""the arguments a run was called with, when not its task's own

Adds to ``scheduler_task_runs``:

- ``arguments``: JSON ``{"args": [...], "kwargs": {...}}`` when the run was called with
  arguments of its own (a run-now with arguments, and the retries of that run); NULL for a
  run with its task's arguments. A retry reads its previous attempt's value, so it runs with
  the same arguments.

Created 2026-12-03.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("scheduler_task_runs") as batch:
        batch.add_column(sa.Column("arguments", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduler_task_runs") as batch:
        batch.drop_column("arguments")
