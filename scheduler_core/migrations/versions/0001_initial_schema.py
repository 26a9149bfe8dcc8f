"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduler_alarm_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_alarm_events")),
    )
    with op.batch_alter_table("scheduler_alarm_events", schema=None) as batch_op:
        batch_op.create_index(
            "uq_scheduler_alarm_events_open",
            ["task_name", "kind"],
            unique=True,
            postgresql_where=sa.text("closed_at IS NULL"),
            sqlite_where=sa.text("closed_at IS NULL"),
        )

    op.create_table(
        "scheduler_instances",
        sa.Column("instance_id", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=200), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_seconds", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("running_runs", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_scheduler_instances")),
    )
    op.create_table(
        "scheduler_schedules",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("definition_hash", sa.String(length=64), nullable=False),
        sa.Column("schedule_type", sa.String(length=10), nullable=False),
        sa.Column("schedule_expr", sa.String(length=300), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("action_kind", sa.String(length=10), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("paused_by", sa.String(length=200), nullable=True),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_attempt", sa.Integer(), nullable=True),
        sa.Column("run_now_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "fire_count", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_runtime_seconds", sa.Float(), nullable=True),
        sa.Column("expected_interval_seconds", sa.Float(), nullable=True),
        sa.Column(
            "runs_success_total",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "runs_failure_total",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "runs_timeout_total",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "runs_cancelled_total",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "runs_abandoned_total",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "runs_skipped_total",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "missed_runs_total",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("duration_histogram", sa.Text(), nullable=False),
        sa.Column("start_delay_histogram", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_schedules")),
    )
    with op.batch_alter_table("scheduler_schedules", schema=None) as batch_op:
        batch_op.create_index("ix_scheduler_schedules_due_at", ["due_at"], unique=False)

    op.create_table(
        "scheduler_task_health",
        sa.Column("task_name", sa.String(length=200), nullable=False),
        sa.Column("instance_id", sa.String(length=200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("schedule_type", sa.String(length=10), nullable=False),
        sa.Column("schedule_payload", sa.Text(), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_duration_seconds", sa.Float(), nullable=True),
        sa.Column("last_status", sa.String(length=10), nullable=True),
        sa.Column("is_running", sa.Boolean(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("last_error_message", sa.Text(), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_runtime_seconds", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_name", "instance_id", name=op.f("pk_scheduler_task_health")),
    )
    op.create_table(
        "scheduler_task_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_name", sa.String(length=200), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_traceback", sa.Text(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("instance_id", sa.String(length=200), nullable=True),
        sa.Column("thread_name", sa.String(length=200), nullable=True),
        sa.Column("consecutive_failures_at_start", sa.Integer(), nullable=True),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("missed_count", sa.Integer(), nullable=True),
        sa.Column("missed_first_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("missed_last_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_task_runs")),
        sa.UniqueConstraint(
            "task_name",
            "scheduled_for",
            "attempt",
            name=op.f("uq_scheduler_task_runs_task_name_scheduled_for_attempt"),
        ),
    )
    with op.batch_alter_table("scheduler_task_runs", schema=None) as batch_op:
        batch_op.create_index("ix_scheduler_task_runs_started_at", ["started_at"], unique=False)
        batch_op.create_index(
            "ix_scheduler_task_runs_status_instance_id", ["status", "instance_id"], unique=False
        )
        batch_op.create_index(
            "ix_scheduler_task_runs_task_name_id", ["task_name", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("scheduler_task_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_scheduler_task_runs_task_name_id")
        batch_op.drop_index("ix_scheduler_task_runs_status_instance_id")
        batch_op.drop_index("ix_scheduler_task_runs_started_at")

    op.drop_table("scheduler_task_runs")
    op.drop_table("scheduler_task_health")
    with op.batch_alter_table("scheduler_schedules", schema=None) as batch_op:
        batch_op.drop_index("ix_scheduler_schedules_due_at")

    op.drop_table("scheduler_schedules")
    op.drop_table("scheduler_instances")
    with op.batch_alter_table("scheduler_alarm_events", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_scheduler_alarm_events_open",
            postgresql_where=sa.text("closed_at IS NULL"),
            sqlite_where=sa.text("closed_at IS NULL"),
        )

    op.drop_table("scheduler_alarm_events")
