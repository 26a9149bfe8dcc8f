"""History retention: delete old run rows in bounded batches; counters are never touched.

Each batch is its own short transaction (at most ``batch_size`` rows), so claims and
finalizes from running schedulers interleave with a cleanup of any size. One-time tasks
created at runtime (source ``api``) that have nothing left to do, unchanged for the
retention period, are removed too (their runs follow the same policy as any task's): an
application that schedules a reminder per user would otherwise keep every finished one
in the schedule table forever.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from scheduler_core.db import create_db_engine
from scheduler_core.models import alarm_events, audit_events, run_output, schedules, task_runs
from scheduler_core.store.tasks_part import API_SOURCE, delete_tasks

__all__ = [
    "CLEANUP_TASK_NAME",
    "CleanupResult",
    "RetentionPolicy",
    "retire_finished_one_time_tasks",
    "run_cleanup",
]

log = logging.getLogger(__name__)

CLEANUP_TASK_NAME = "schedctl.cleanup"


@dataclass(frozen=True, kw_only=True)
class RetentionPolicy:
    """Keep runs for ``days`` and at most ``max_runs_per_task`` per task; ``running`` rows stay."""

    days: float = 30.0
    max_runs_per_task: int = 500
    #: Rows per delete transaction; None picks per backend (see ``batch_for``).
    batch_size: int | None = None
    audit_days: float = 365.0

    def batch_for(self, engine: sa.Engine) -> int:
        """SQLite has one write lock: small batches keep each hold short for claimers."""
        if self.batch_size is not None:
            return self.batch_size
        return 300 if engine.dialect.name == "sqlite" else 5000

    def __post_init__(self) -> None:
        if self.days <= 0:
            raise ValueError(f"retention days must be positive, got {self.days!r}")
        if self.max_runs_per_task < 1:
            raise ValueError(
                f"max runs per task must be at least 1, got {self.max_runs_per_task!r}"
            )
        if self.batch_size is not None and not 1 <= self.batch_size <= 100_000:
            raise ValueError(f"batch size must be 1..100000, got {self.batch_size!r}")


@dataclass(frozen=True, kw_only=True)
class CleanupResult:
    runs_deleted: int
    alarms_deleted: int
    audit_deleted: int
    batches: int
    #: Finished one-time api tasks removed (their schedule rows; runs as the policy says).
    tasks_retired: int = 0


Progress = Callable[[int, int], None]  # (deleted so far, estimated total)


def _delete_batches(
    engine: sa.Engine,
    table: sa.Table,
    condition: sa.ColumnElement[bool],
    *,
    batch_size: int,
    progress: Callable[[int], None],
) -> tuple[int, int]:
    deleted = batches = 0
    # On SQLite a writer waiting in busy_timeout polls with growing sleeps (1, 2, 5, ... 25 ms,
    # then 50 and 100): a gap shorter than its sleep lets cleanup take the lock again before the
    # waiter looks. 30 ms between batches lets a waiting claim in after at most one batch.
    pause = 0.03 if engine.dialect.name == "sqlite" else 0.0
    while True:
        if batches and pause:
            time.sleep(pause)
        ids = sa.select(table.c.id).where(condition).order_by(table.c.id).limit(batch_size)
        with engine.begin() as conn:
            batch = list(conn.execute(ids).scalars())
            if table is task_runs and batch:
                # A run's output goes with it (scheduler_run_output has no foreign key:
                # SQLite enforces none unless asked, and the hot run insert need not check).
                conn.execute(run_output.delete().where(run_output.c.run_id.in_(batch)))
            count = (
                conn.execute(table.delete().where(table.c.id.in_(batch))).rowcount if batch else 0
            )
        if not count:
            return deleted, batches
        if pause:
            # The deletes grow SQLite's WAL; whoever commits past the auto-checkpoint threshold
            # copies it back, and that should be cleanup, not a claim that happens to commit next.
            _checkpoint(engine)
        deleted += count
        batches += 1
        progress(count)
        if count < batch_size:
            return deleted, batches


def _checkpoint(engine: sa.Engine) -> None:
    """Best-effort passive WAL checkpoint, outside any transaction (it cannot run inside one)."""
    raw = engine.raw_connection()
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error:
        pass  # a busy checkpoint is skipped; the next batch tries again
    finally:
        raw.close()


def _per_task_overflow(conn: sa.Connection, keep: int) -> list[tuple[str, int]]:
    """(task, lowest id to keep) for tasks with more than ``keep`` finished runs."""
    ranked = (
        sa.select(
            task_runs.c.task_name,
            task_runs.c.id,
            sa.func.row_number()
            .over(partition_by=task_runs.c.task_name, order_by=task_runs.c.id.desc())
            .label("rank"),
        )
        .where(task_runs.c.status != "running")
        .subquery()
    )
    rows = conn.execute(
        sa.select(ranked.c.task_name, ranked.c.id).where(ranked.c.rank == keep)
    ).all()
    return [(r.task_name, r.id) for r in rows]


def _analyse(
    engine: sa.Engine, policy: RetentionPolicy, cutoff: datetime
) -> tuple[list[tuple[str, int]], int]:
    """Per task over its cap, the first run id to keep; and how many runs are past ``cutoff``."""
    # The analysis only reads, but on SQLite every transaction of the scheduler's engine
    # begins IMMEDIATE (takes the write lock): read on a deferred, read-only engine instead,
    # or the scan of the whole history would hold up every claim.
    reader = (
        create_db_engine(engine.url, read_only=True) if engine.dialect.name == "sqlite" else engine
    )
    try:
        with reader.connect() as conn:
            overflow = _per_task_overflow(conn, policy.max_runs_per_task)
            old = conn.execute(
                sa.select(sa.func.count())
                .select_from(task_runs)
                .where(task_runs.c.status != "running", task_runs.c.finished_at < cutoff)
            ).scalar_one()
    finally:
        if reader is not engine:
            reader.dispose()
    return overflow, int(old)


def retire_finished_one_time_tasks(
    engine: sa.Engine, *, cutoff: datetime, now: datetime, batch_size: int
) -> tuple[int, int]:
    """Remove one-time api tasks with nothing left to do (no next fire, nothing due: no
    pending retry or run-now), no run in flight, unchanged since ``cutoff``. Returns
    (tasks removed, batches)."""
    running = (
        sa.select(task_runs.c.id)
        .where(task_runs.c.task_name == schedules.c.name, task_runs.c.status == "running")
        .exists()
    )
    finished = (
        sa.select(schedules.c.name)
        .where(
            schedules.c.source == API_SOURCE,
            schedules.c.schedule_type == "at",
            schedules.c.next_run_at.is_(None),
            schedules.c.due_at.is_(None),
            schedules.c.updated_at < cutoff,
            ~running,
        )
        .order_by(schedules.c.name)
        .limit(batch_size)
    )
    retired = batches = 0
    while True:
        with engine.begin() as conn:
            names = list(conn.execute(finished).scalars())
            delete_tasks(conn, names, now=now)
        retired += len(names)
        batches += 1 if names else 0
        if len(names) < batch_size:
            return retired, batches


def _ignore(_count: int) -> None:
    """Progress of deletes that are not runs (not shown)."""


def run_cleanup(
    engine: sa.Engine,
    *,
    policy: RetentionPolicy,
    now: datetime,
    progress: Progress | None = None,
) -> CleanupResult:
    """Delete runs past the retention (age and per-task cap), old closed alarms and audit
    rows, and finished one-time api tasks unchanged for the retention period."""
    cutoff = now - timedelta(days=policy.days)
    finished = task_runs.c.status != "running"
    overflow, old = _analyse(engine, policy, cutoff)
    estimate = int(old) + sum(1 for _ in overflow)  # refined as batches report
    done = 0

    def report(count: int) -> None:
        nonlocal done, estimate
        done += count
        estimate = max(estimate, done)
        if progress is not None:
            progress(done, estimate)

    batch = policy.batch_for(engine)
    runs_deleted = batches = 0
    run_conditions: list[sa.ColumnElement[bool]] = [finished & (task_runs.c.finished_at < cutoff)]
    run_conditions += [
        finished & (task_runs.c.task_name == task) & (task_runs.c.id < keep_from)
        for task, keep_from in overflow
    ]
    for condition in run_conditions:
        n, b = _delete_batches(engine, task_runs, condition, batch_size=batch, progress=report)
        runs_deleted += n
        batches += b
    closed = alarm_events.c.closed_at
    closed_alarms: sa.ColumnElement[bool] = closed.is_not(None) & (closed < cutoff)
    old_audit = audit_events.c.at < now - timedelta(days=policy.audit_days)
    others = []
    for table, other in ((alarm_events, closed_alarms), (audit_events, old_audit)):
        n, b = _delete_batches(engine, table, other, batch_size=batch, progress=_ignore)
        others.append(n)
        batches += b
    alarms_deleted, audit_deleted = others
    retired, b = retire_finished_one_time_tasks(engine, cutoff=cutoff, now=now, batch_size=batch)
    batches += b
    return CleanupResult(
        runs_deleted=runs_deleted,
        alarms_deleted=alarms_deleted,
        audit_deleted=audit_deleted,
        batches=batches,
        tasks_retired=retired,
    )


def register_cleanup_task(engine: sa.Engine, policy: RetentionPolicy) -> dict[str, object]:
    """Register the built-in cleanup callable in this process; return its task mapping.

    The task runs daily on whichever instance claims it; it uses the scheduler's own engine.
    """
    from scheduler_core.clock import DatabaseClock
    from scheduler_core.tasks import register_callable

    clock = DatabaseClock(engine)

    def cleanup() -> None:
        run_cleanup(engine, policy=policy, now=clock.now())

    register_callable(CLEANUP_TASK_NAME, cleanup)
    return {
        "name": CLEANUP_TASK_NAME,
        "callable": CLEANUP_TASK_NAME,
        "cron": "17 3 * * *",
        "description": (
            f"built-in retention: keep {policy.days:g} days and at most "
            f"{policy.max_runs_per_task} runs per task"
        ),
        "timeout": "1h",
        "misfire": "run_once",
    }
