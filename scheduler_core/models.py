"""The SQL model: the five schedctl tables, shared by the scheduler, the CLI and the exporter.

Migrations in ``scheduler_core/migrations`` create exactly these tables; a test compares them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from scheduler_core.histograms import DURATION_BUCKETS, START_DELAY_BUCKETS, HistogramCounts

__all__ = [
    "ALARM_KINDS",
    "DURATION_HISTOGRAM",
    "POLICY_ALARM_KINDS",
    "RUN_STATUSES",
    "START_DELAY_HISTOGRAM",
    "TERMINAL_STATUSES",
    "HistogramColumns",
    "UTCDateTime",
    "alarm_events",
    "audit_events",
    "instances",
    "metadata",
    "run_output",
    "schedules",
    "task_health",
    "task_runs",
]

#: Every value ``scheduler_task_runs.status`` may take.
RUN_STATUSES = (
    "running",
    "success",
    "failure",
    "timeout",
    "cancelled",
    "abandoned",
    "skipped",
    "missed",
)
#: Statuses a finished run ends in; each has a persisted counter on the schedule row.
TERMINAL_STATUSES = ("success", "failure", "timeout", "cancelled", "abandoned", "skipped")
#: Alarm kinds every task may have (opened by its runs and the global thresholds).
ALARM_KINDS = ("consecutive_failures", "stuck", "missed")
#: Alarm kinds only a task with an ``alerts:`` policy gets (the periodic policy check,
#: scheduler_core.telemetry.alarm_rules): its last success was faster than ``min_duration``,
#: its last run slower than ``max_duration`` or ``slower_than_usual``, its ``deadline`` passed.
POLICY_ALARM_KINDS = ("too_fast", "slow", "deadline_missed")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text, which sorts and compares
    correctly because every value goes through this one format.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given where an aware UTC one is needed")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


_BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


@dataclass(frozen=True, kw_only=True)
class HistogramColumns:
    """Where one persisted histogram lives on the schedule row: a count column per bucket
    (non-cumulative, in bound order, the last is +Inf) and the sum of the observations.
    The bounds in ``scheduler_core.histograms`` are the single source of the column list."""

    bounds: tuple[float, ...]
    buckets: tuple[str, ...]
    sum: str

    @classmethod
    def named(cls, prefix: str, bounds: tuple[float, ...]) -> HistogramColumns:
        return cls(
            bounds=bounds,
            buckets=tuple(f"{prefix}_bucket_{i:02d}" for i in range(len(bounds) + 1)),
            sum=f"{prefix}_sum_seconds",
        )

    def columns(self) -> list[sa.Column[Any]]:
        """Fresh Column objects for the table definition (counts, then the sum)."""
        zero = sa.text("0")
        return [
            *(sa.Column(c, _BigInt, nullable=False, default=0, server_default=zero)
              for c in self.buckets),
            sa.Column(self.sum, sa.Float, nullable=False, default=0.0, server_default=zero),
        ]  # fmt: skip

    def read(self, row: Mapping[Any, Any]) -> HistogramCounts:
        """The histogram held by ``row`` (a mapping with at least these columns)."""
        return HistogramCounts.from_columns(
            tuple(int(row[c]) for c in self.buckets), row[self.sum], self.bounds
        )

    def values(self, counts: HistogramCounts) -> dict[str, Any]:
        """Column values that store ``counts`` (for inserts and tests)."""
        if counts.bounds != self.bounds:
            raise ValueError("histogram bounds differ from this column set's bounds")
        return {**dict(zip(self.buckets, counts.buckets, strict=True)), self.sum: counts.sum}


#: Run durations of non-skipped runs: ``duration_bucket_00`` .. and ``duration_sum_seconds``.
DURATION_HISTOGRAM = HistogramColumns.named("duration", DURATION_BUCKETS)
#: Start delay of first attempts: ``start_delay_bucket_00`` .. and ``start_delay_sum_seconds``.
START_DELAY_HISTOGRAM = HistogramColumns.named("start_delay", START_DELAY_BUCKETS)

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

schedules = sa.Table(
    "scheduler_schedules",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    # The definition as the user wrote it (normalised JSON), and its digest to detect edits.
    sa.Column("definition", sa.Text, nullable=False),
    sa.Column("definition_hash", sa.String(64), nullable=False),
    sa.Column("schedule_type", sa.String(10), nullable=False),
    sa.Column("schedule_expr", sa.String(300), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("action_kind", sa.String(10), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    sa.Column("pause_reason", sa.Text),
    sa.Column("paused_at", UTCDateTime),
    sa.Column("paused_by", sa.String(200)),
    # next_run_at is the next regular tick (shown to people); due_at is when an instance must
    # next claim the row (the earlier of next_run_at, a pending retry or a run-now request).
    # due_at is NULL when there is nothing to do (paused, disabled, finished), which keeps
    # such rows out of the due-query's index range.
    sa.Column("next_run_at", UTCDateTime),
    sa.Column("due_at", UTCDateTime),
    sa.Column("retry_at", UTCDateTime),
    sa.Column("retry_scheduled_for", UTCDateTime),
    sa.Column("retry_attempt", sa.Integer),
    # Later pending retries (JSON), when several ticks failed before their retries ran: see
    # scheduler_core.pending_retries. NULL in the common case of at most one.
    sa.Column("retries_queued", sa.Text),
    sa.Column("run_now_requested_at", UTCDateTime),
    # The pending run-now's own arguments (JSON {"args": [...], "kwargs": {...}}), NULL for
    # the task's: they apply to that one run.
    sa.Column("run_now_overrides", sa.Text),
    sa.Column("claimed_by", sa.String(200)),
    sa.Column("claimed_until", UTCDateTime),
    sa.Column("fire_count", _BigInt, nullable=False, default=0),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, default=0),
    sa.Column("last_success_at", UTCDateTime),
    sa.Column("last_failure_at", UTCDateTime),
    sa.Column("max_runtime_seconds", sa.Float),
    sa.Column("expected_interval_seconds", sa.Float),
    # Persisted counters: they survive restarts and history cleanup and never go down.
    sa.Column("runs_success_total", _BigInt, nullable=False, default=0),
    sa.Column("runs_failure_total", _BigInt, nullable=False, default=0),
    sa.Column("runs_timeout_total", _BigInt, nullable=False, default=0),
    sa.Column("runs_cancelled_total", _BigInt, nullable=False, default=0),
    sa.Column("runs_abandoned_total", _BigInt, nullable=False, default=0),
    sa.Column("runs_skipped_total", _BigInt, nullable=False, default=0),
    sa.Column("missed_runs_total", _BigInt, nullable=False, default=0),
    # Histograms, one column per bucket so that finalize adds to them in SQL (count = the
    # buckets' total); the bounds are in scheduler_core.histograms.
    *DURATION_HISTOGRAM.columns(),
    *START_DELAY_HISTOGRAM.columns(),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # JSON {key: total} of the numeric results of the task's `result_metrics` keys, added to
    # by every run: like the counters above it survives cleanup and restarts.
    sa.Column("result_totals", sa.Text),
    # Who owns the task: "file" (a task file's sync), "module:<name>" (@task functions),
    # "embedded" (Scheduler.from_url(tasks=...)) or "api" (created at runtime). A sync
    # touches only its own source's tasks (scheduler_core.store.tasks_part).
    sa.Column("source", sa.String(200), nullable=False, server_default="file"),
    # The task's alerts: block (scheduler_core.alert_policy.AlertPolicy.to_json): JSON, durations
    # in seconds; NULL when it has none (most tasks), so the exporter and the alarm check
    # read the policy-bearing rows only.
    sa.Column("alert_policy", sa.Text),
    sa.Index("ix_scheduler_schedules_due_at", "due_at"),
    sa.Index("ix_scheduler_schedules_source", "source"),
    # The tasks with a policy, for the periodic policy alarm check (a few rows of many).
    sa.Index(
        "ix_scheduler_schedules_alert_policy",
        "name",
        postgresql_where=sa.text("alert_policy IS NOT NULL"),
        sqlite_where=sa.text("alert_policy IS NOT NULL"),
    ),
)

task_runs = sa.Table(
    "scheduler_task_runs",
    metadata,
    sa.Column("id", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("task_name", sa.String(200), nullable=False),
    sa.Column("scheduled_for", UTCDateTime, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("trigger", sa.String(10), nullable=False, default="schedule"),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("duration_seconds", sa.Float),
    sa.Column("error_message", sa.Text),
    sa.Column("error_traceback", sa.Text),
    sa.Column("exit_code", sa.Integer),
    sa.Column("pid", sa.Integer),
    sa.Column("instance_id", sa.String(200)),
    sa.Column("thread_name", sa.String(200)),
    sa.Column("consecutive_failures_at_start", sa.Integer),
    sa.Column("trace_id", sa.String(32)),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("cancel_reason", sa.Text),
    # For a `missed` row: how many ticks it stands for and the first/last of them.
    sa.Column("missed_count", sa.Integer),
    sa.Column("missed_first_at", UTCDateTime),
    sa.Column("missed_last_at", UTCDateTime),
    # JSON {"args": [...], "kwargs": {...}} when the run had arguments of its own (a run-now
    # with arguments, and its retries, which read it from the attempt before); else NULL.
    sa.Column("arguments", sa.Text),
    sa.UniqueConstraint("task_name", "scheduled_for", "attempt"),
    sa.Index("ix_scheduler_task_runs_task_name_id", "task_name", "id"),
    sa.Index("ix_scheduler_task_runs_status_instance_id", "status", "instance_id"),
    sa.Index("ix_scheduler_task_runs_started_at", "started_at"),
)

task_health = sa.Table(
    "scheduler_task_health",
    metadata,
    sa.Column("task_name", sa.String(200), primary_key=True),
    sa.Column("instance_id", sa.String(200), primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("schedule_type", sa.String(10), nullable=False),
    sa.Column("schedule_payload", sa.Text, nullable=False),
    sa.Column("last_started_at", UTCDateTime),
    sa.Column("last_finished_at", UTCDateTime),
    sa.Column("last_duration_seconds", sa.Float),
    sa.Column("last_status", sa.String(10)),
    sa.Column("is_running", sa.Boolean, nullable=False, default=False),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, default=0),
    sa.Column("last_error_message", sa.Text),
    sa.Column("last_heartbeat_at", UTCDateTime),
    sa.Column("max_runtime_seconds", sa.Float),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

instances = sa.Table(
    "scheduler_instances",
    metadata,
    sa.Column("instance_id", sa.String(200), primary_key=True),
    sa.Column("hostname", sa.String(200)),
    sa.Column("pid", sa.Integer),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("last_heartbeat_at", UTCDateTime, nullable=False),
    sa.Column("lease_seconds", sa.Float, nullable=False),
    sa.Column("state", sa.String(10), nullable=False),
    sa.Column("version", sa.String(50), nullable=False),
    sa.Column("running_runs", sa.Integer, nullable=False, default=0),
)

alarm_events = sa.Table(
    "scheduler_alarm_events",
    metadata,
    sa.Column("id", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("task_name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(30), nullable=False),
    sa.Column("opened_at", UTCDateTime, nullable=False),
    sa.Column("closed_at", UTCDateTime),
    sa.Column("details", sa.Text),
    # At most one open alarm per (task, kind), enforced by the database.
    sa.Index(
        "uq_scheduler_alarm_events_open",
        "task_name",
        "kind",
        unique=True,
        postgresql_where=sa.text("closed_at IS NULL"),
        sqlite_where=sa.text("closed_at IS NULL"),
    ),
)

#: Who did what, when and why: every operator action (pause, resume, run-now, cancel,
#: emergency stop, cleanup). An addition to DESIGN.md's five tables; nothing reads it but
#: `schedctl audit` and the JSON API, so no metric or alert depends on it.
audit_events = sa.Table(
    "scheduler_audit_events",
    metadata,
    sa.Column("id", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(30), nullable=False),
    sa.Column("task_name", sa.String(200)),
    sa.Column("run_id", _BigInt),
    sa.Column("reason", sa.Text),
    sa.Column("details", sa.Text),
    sa.Index("ix_scheduler_audit_events_at", "at"),
    sa.Index("ix_scheduler_audit_events_task_name_id", "task_name", "id"),
)

#: What a run said (issue 19): its output, bounded to head and tail with the bytes dropped
#: between them, and its result (JSON). Apart from the hot run rows; a row only for a run that
#: printed, logged or returned something (and whose task's ``keep_output`` keeps it); deleted
#: with its run by retention.
run_output = sa.Table(
    "scheduler_run_output",
    metadata,
    sa.Column("run_id", _BigInt, primary_key=True, autoincrement=False),
    sa.Column("task_name", sa.String(200), nullable=False),
    sa.Column("output", sa.Text),
    sa.Column("output_bytes", _BigInt, nullable=False, server_default="0"),
    sa.Column("output_dropped_bytes", _BigInt, nullable=False, server_default="0"),
    sa.Column("result", sa.Text),
    sa.Column("result_note", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
