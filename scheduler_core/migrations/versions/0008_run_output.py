"""run output and results, result totals

Adds:

- ``scheduler_run_output``: one row per run that said something (issue 19): its captured
  output (a command's stdout and stderr in the order written, a callable's log lines), bounded
  to the head and tail with the count of bytes dropped between them, and its result (JSON),
  with a note when the result had to be stored as a truncated repr. Kept apart from the hot
  ``scheduler_task_runs`` rows, written in the same finalize, deleted with their run.
- ``scheduler_schedules.result_totals``: JSON ``{key: total}`` of the numeric results of the
  keys a task declares in ``result_metrics``, added to by every run; like the run counters it
  survives history cleanup and restarts.

Created 2026-12-03.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table(
        "scheduler_run_output",
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_name", sa.String(length=200), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column(
            "output_bytes",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            server_default="0",
        ),
        sa.Column(
            "output_dropped_bytes",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            server_default="0",
        ),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("result_note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_scheduler_run_output")),
    )
    with op.batch_alter_table("scheduler_schedules") as batch:
        batch.add_column(sa.Column("result_totals", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduler_schedules") as batch:
        batch.drop_column("result_totals")
    op.drop_table("scheduler_run_output")
