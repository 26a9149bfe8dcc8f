"""audit events: who paused, resumed, ran, cancelled, stopped or cleaned what, and why

Created 2026-11-23.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "scheduler_audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=30), nullable=False),
        sa.Column("task_name", sa.String(length=200), nullable=True),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_audit_events")),
    )
    op.create_index("ix_scheduler_audit_events_at", "scheduler_audit_events", ["at"])
    op.create_index(
        "ix_scheduler_audit_events_task_name_id", "scheduler_audit_events", ["task_name", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_scheduler_audit_events_task_name_id", table_name="scheduler_audit_events")
    op.drop_index("ix_scheduler_audit_events_at", table_name="scheduler_audit_events")
    op.drop_table("scheduler_audit_events")
