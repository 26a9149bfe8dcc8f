"""initial schema

Created 2026-11-23.
"""

from collections.abc import Callable
from typing import Any, Literal

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

#: 64-bit on PostgreSQL; SQLite keeps INTEGER, which is 64-bit and the rowid alias.
_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: The column types of this revision, frozen here rather than read from the models.
_TYPES: dict[str, Callable[[], sa.types.TypeEngine[Any]]] = {
    "id": lambda: _BIGINT,
    "bigint": lambda: _BIGINT,
    "int": sa.Integer,
    "float": sa.Float,
    "bool": sa.Boolean,
    "text": sa.Text,
    "moment": lambda: sa.DateTime(timezone=True),
    "name": lambda: sa.String(length=200),
    "word": lambda: sa.String(length=10),
    "str30": lambda: sa.String(length=30),
    "str32": lambda: sa.String(length=32),
    "str50": lambda: sa.String(length=50),
    "str64": lambda: sa.String(length=64),
    "str300": lambda: sa.String(length=300),
}


def _columns(spec: str) -> list[sa.Column[Any]]:
    """One column a line, ``name type``: a trailing ``?`` allows NULL; ``id`` autoincrements."""
    columns: list[sa.Column[Any]] = []
    for name, kind in (line.split() for line in spec.strip().splitlines()):
        nullable = kind.endswith("?")
        kind = kind.rstrip("?")
        autoincrement: Literal["auto"] | bool = True if kind == "id" else "auto"
        columns.append(
            sa.Column(name, _TYPES[kind](), nullable=nullable, autoincrement=autoincrement)
        )
    return columns


def upgrade() -> None:
    op.create_table(
        "scheduler_alarm_events",
        *_columns(
            """
            id id
            task_name name
            kind str30
            opened_at moment
            closed_at moment?
            details text?
            """
        ),
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
        *_columns(
            """
            instance_id name
            hostname name?
            pid int?
            started_at moment
            last_heartbeat_at moment
            lease_seconds float
            state word
            version str50
            running_runs int
            """
        ),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_scheduler_instances")),
    )
    op.create_table(
        "scheduler_schedules",
        *_columns(
            """
            name name
            definition text
            definition_hash str64
            schedule_type word
            schedule_expr str300
            timezone str64
            action_kind word
            enabled bool
            paused bool
            pause_reason text?
            paused_at moment?
            paused_by name?
            next_run_at moment?
            due_at moment?
            retry_at moment?
            retry_scheduled_for moment?
            retry_attempt int?
            run_now_requested_at moment?
            claimed_by name?
            claimed_until moment?
            fire_count bigint
            consecutive_failures int
            last_success_at moment?
            last_failure_at moment?
            max_runtime_seconds float?
            expected_interval_seconds float?
            runs_success_total bigint
            runs_failure_total bigint
            runs_timeout_total bigint
            runs_cancelled_total bigint
            runs_abandoned_total bigint
            runs_skipped_total bigint
            missed_runs_total bigint
            duration_histogram text
            start_delay_histogram text
            created_at moment
            updated_at moment
            """
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_schedules")),
    )
    with op.batch_alter_table("scheduler_schedules", schema=None) as batch_op:
        batch_op.create_index("ix_scheduler_schedules_due_at", ["due_at"], unique=False)

    op.create_table(
        "scheduler_task_health",
        *_columns(
            """
            task_name name
            instance_id name
            enabled bool
            schedule_type word
            schedule_payload text
            next_run_at moment?
            last_started_at moment?
            last_finished_at moment?
            last_duration_seconds float?
            last_status word?
            is_running bool
            consecutive_failures int
            last_error_message text?
            last_heartbeat_at moment?
            max_runtime_seconds float?
            updated_at moment
            """
        ),
        sa.PrimaryKeyConstraint("task_name", "instance_id", name=op.f("pk_scheduler_task_health")),
    )
    op.create_table(
        "scheduler_task_runs",
        *_columns(
            """
            id id
            task_name name
            scheduled_for moment
            attempt int
            trigger word
            status word
            started_at moment?
            finished_at moment?
            duration_seconds float?
            error_message text?
            error_traceback text?
            exit_code int?
            pid int?
            instance_id name?
            thread_name name?
            consecutive_failures_at_start int?
            trace_id str32?
            cancel_requested bool
            cancel_reason text?
            missed_count int?
            missed_first_at moment?
            missed_last_at moment?
            """
        ),
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
