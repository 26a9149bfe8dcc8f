"""Queries: what the admin commands read (tasks with their badge, runs, stats, audit,
alarms). Read-only; the exporter reads the whole table set through ``store.snapshot``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from scheduler_core import states
from scheduler_core.errors import RunLookupError, TaskLookupError
from scheduler_core.models import (
    DURATION_HISTOGRAM,
    alarm_events,
    audit_events,
    schedules,
    task_health,
    task_runs,
)
from scheduler_core.store.alert_inputs import stored_policy
from scheduler_core.store.base import StoreBase
from scheduler_core.store.outputs import run_output_of
from scheduler_core.store.records import OUTCOME_COUNTERS
from scheduler_core.store.run_queries import task_exists

__all__ = ["QueriesPart", "task_document"]


def task_document(
    r: Any, h: Any, ls: Any, running_starts: list[datetime | None], *, now: datetime, grace: float
) -> dict[str, Any]:
    """One task as ``list_tasks`` shows it: its schedule row ``r`` (a row, or any object with
    its columns as attributes), health aggregate ``h`` and most recent finish ``ls`` (either
    may be None), and the starts of its runs in flight. ``grace`` is the late grace of a task
    whose ``alerts:`` policy sets no ``late_after`` of its own."""
    policy = stored_policy(r.alert_policy) if r.alert_policy is not None else None
    if policy is not None and policy.late_after is not None:
        grace = policy.late_after
    return {
        "name": r.name,
        "schedule": r.schedule_expr,
        "action": r.action_kind,
        "source": r.source,
        "enabled": r.enabled,
        "paused": r.paused,
        "pause_reason": r.pause_reason,
        "paused_by": r.paused_by,
        "paused_at": r.paused_at,
        "next_run_at": r.next_run_at if r.enabled and not r.paused else None,
        "last_started_at": h.last_started_at if h else None,
        "last_finished_at": h.last_finished_at if h else None,
        "last_status": ls.last_status if ls else None,
        "last_duration_seconds": ls.last_duration_seconds if ls else None,
        "last_error_message": ls.last_error_message if ls else None,
        "consecutive_failures": r.consecutive_failures,
        "running": len(running_starts),
        "badge": states.assess(
            now=now,
            enabled=bool(r.enabled),
            paused=bool(r.paused),
            running_starts=running_starts,
            max_runtime_seconds=r.max_runtime_seconds,
            next_run_at=r.next_run_at,
            consecutive_failures=int(r.consecutive_failures or 0),
            last_status=ls.last_status if ls else None,
            late_grace_seconds=grace,
        ).badge,
        "last_success_at": r.last_success_at,
        "runs_total": sum(getattr(r, c) for c in OUTCOME_COUNTERS.values()),
        "missed_runs_total": r.missed_runs_total,
    }


def _latest_finishes(conn: sa.Connection, name: str | None) -> dict[str, Any]:
    """The most recently finished health row per task (of task ``name`` only, when given),
    across instances, whatever the order the rows come in (the exporter's fold does the
    same)."""
    latest: dict[str, Any] = {}
    stmt = sa.select(
        task_health.c.task_name,
        task_health.c.last_status,
        task_health.c.last_duration_seconds,
        task_health.c.last_finished_at,
        task_health.c.last_error_message,
    ).where(task_health.c.last_finished_at.is_not(None))
    if name is not None:
        stmt = stmt.where(task_health.c.task_name == name)
    for r in conn.execute(stmt):
        prev = latest.get(r.task_name)
        if prev is None or r.last_finished_at > prev.last_finished_at:
            latest[r.task_name] = r
    return latest


def _running_starts(conn: sa.Connection, name: str | None) -> dict[str, list[datetime | None]]:
    """Per task (task ``name`` only, when given): the ``started_at`` of each of its runs in
    flight, on any instance."""
    starts: dict[str, list[datetime | None]] = {}
    stmt = sa.select(task_runs.c.task_name, task_runs.c.started_at).where(
        task_runs.c.status == "running"
    )
    if name is not None:
        stmt = stmt.where(task_runs.c.task_name == name)
    for name, started_at in conn.execute(stmt):
        starts.setdefault(name, []).append(started_at)
    return starts


class QueriesPart(StoreBase):
    """Read-only queries of the admin commands."""

    def audit_log(self, *, task: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        stmt = sa.select(audit_events).order_by(audit_events.c.id.desc()).limit(limit)
        if task is not None:
            stmt = stmt.where(audit_events.c.task_name == task)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def stats(self, task: str | None = None) -> list[dict[str, Any]]:
        """Per task: totals by outcome, missed, success rate, mean/p95 duration, last times.

        Totals and durations come from the persisted counters and histogram, so they are
        exact however much history was cleaned up; p95 is interpolated within its bucket.
        """
        stmt = sa.select(schedules).order_by(schedules.c.name)
        if task is not None:
            stmt = stmt.where(schedules.c.name == task)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        if task is not None and not rows:
            raise TaskLookupError(task)
        out = []
        for r in rows:
            hist = DURATION_HISTOGRAM.read(r._mapping)
            finished = sum(getattr(r, c) for s, c in OUTCOME_COUNTERS.items() if s != "skipped")
            failed = r.runs_failure_total + r.runs_timeout_total
            out.append(
                {
                    "task": r.name,
                    "total": finished,
                    "succeeded": r.runs_success_total,
                    "failed": failed,
                    "timed_out": r.runs_timeout_total,
                    "cancelled": r.runs_cancelled_total,
                    "abandoned": r.runs_abandoned_total,
                    "skipped": r.runs_skipped_total,
                    "missed": r.missed_runs_total,
                    "success_rate": (r.runs_success_total / finished) if finished else None,
                    "avg_duration_seconds": (hist.sum / hist.count) if hist.count else None,
                    "p95_duration_seconds": hist.quantile(0.95),
                    "last_success_at": r.last_success_at,
                    "last_failure_at": r.last_failure_at,
                    "consecutive_failures": r.consecutive_failures,
                    "result_totals": json.loads(r.result_totals) if r.result_totals else {},
                }
            )
        return out

    def list_tasks(
        self,
        *,
        now: datetime | None = None,
        late_grace: float | None = None,
        name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every task (or task ``name``: TaskLookupError when there is none) with its schedule,
        source, next run, last run, failure count and status badge.

        The badge is the one ``/api/v1/status`` shows: :func:`scheduler_core.states.assess` of
        the same inputs, as of ``now`` (the wall clock by default), with the exporter's default
        late grace unless ``late_grace`` is given (a task's own ``alerts.late_after`` is its
        grace). On PostgreSQL the reads are one snapshot.
        """
        now = datetime.now(UTC) if now is None else now
        grace = states.LATE_GRACE_SECONDS if late_grace is None else late_grace
        with self.engine.connect() as conn:
            if self.is_postgres:
                conn = conn.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            select = sa.select(schedules).order_by(schedules.c.name)
            health_select = sa.select(
                task_health.c.task_name,
                sa.func.max(task_health.c.last_started_at).label("last_started_at"),
                sa.func.max(task_health.c.last_finished_at).label("last_finished_at"),
            ).group_by(task_health.c.task_name)
            if name is not None:  # one task: read its rows only, not every task's
                select = select.where(schedules.c.name == name)
                health_select = health_select.where(task_health.c.task_name == name)
            rows = conn.execute(select).all()
            if name is not None and not rows:
                raise TaskLookupError(name)
            health = conn.execute(health_select).all()
            latest = _latest_finishes(conn, name)
            starts = _running_starts(conn, name)
        health_by = {h.task_name: h for h in health}
        return [
            task_document(
                r,
                health_by.get(r.name),
                latest.get(r.name),
                starts.get(r.name, []),
                now=now,
                grace=grace,
            )
            for r in rows
        ]

    def list_runs(
        self,
        *,
        task: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        instance_id: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Run history, newest first, keyset-paginated by ``before_id``.

        ``since`` keeps the runs that started at or after it and the rows that never started
        (missed, skipped) recorded at or after it: ``COALESCE(started_at, finished_at)``, as the
        exporter's ``/api/v1/tasks/{name}/runs?since=``. Not ``scheduled_for``: a run of missed
        ticks recorded a minute ago stands for its first tick, which may be days old.
        """
        stmt = sa.select(task_runs).order_by(task_runs.c.id.desc()).limit(limit)
        if task is not None:
            stmt = stmt.where(task_runs.c.task_name == task)
        if status is not None:
            stmt = stmt.where(task_runs.c.status == status)
        if since is not None:
            stmt = stmt.where(
                sa.func.coalesce(task_runs.c.started_at, task_runs.c.finished_at) >= since
            )
        if instance_id is not None:
            stmt = stmt.where(task_runs.c.instance_id == instance_id)
        if before_id is not None:
            stmt = stmt.where(task_runs.c.id < before_id)
        with self.engine.connect() as conn:
            found = [dict(r._mapping) for r in conn.execute(stmt)]
            # A removed task's runs stay readable; a name that never existed is an error.
            if task is not None and not found and not task_exists(conn, task):
                raise TaskLookupError(task)
            return found

    def get_run(self, run_id: int) -> dict[str, Any]:
        """Run ``run_id``'s row with what it said: ``output``, ``output_bytes``,
        ``output_dropped_bytes``, ``result`` (decoded JSON) and ``result_note`` (None and 0
        when it kept nothing)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(task_runs).where(task_runs.c.id == run_id)).first()
            if row is None:
                raise RunLookupError(run_id)
            said = run_output_of(conn, run_id) or {}
        result = said.get("result")
        return {
            **dict(row._mapping),
            "output": said.get("output"),
            "output_bytes": said.get("output_bytes", 0),
            "output_dropped_bytes": said.get("output_dropped_bytes", 0),
            "result": json.loads(result) if result is not None else None,
            "result_note": said.get("result_note"),
        }

    def open_alarms(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(
                    sa.select(alarm_events)
                    .where(alarm_events.c.closed_at.is_(None))
                    .order_by(alarm_events.c.id)
                )
            ]
