"""Best-effort run telemetry: per-(task, instance) health snapshots, alarm events, OTel.

Nothing here may fail, repeat or hold up a task: every write runs in its own short
transaction with a statement timeout, errors are swallowed and logged at most once per
``log_interval`` seconds. The exact counters are not here: they are written with the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from scheduler_core.alarms import open_alarms
from scheduler_core.bulk import bulk_insert_returning
from scheduler_core.errors import error_reason
from scheduler_core.models import alarm_events, schedules, task_health, task_runs
from scheduler_core.otel import otel_instruments, tracer
from scheduler_core.states import is_stuck
from scheduler_core.store import (
    HEALTH_ERROR_LIMIT,
    DispatchedRun,
    FinalizeResult,
    RunOutcome,
    truncate_text,
)

__all__ = ["RateLimitedLogger", "TelemetryWriter", "otel_instruments", "tracer"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class RateLimitedLogger:
    """Logs a repeated failure once per interval, with how many were suppressed."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._monotonic = monotonic
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def error(self, key: str, message: str) -> bool:
        """Log ``message`` unless ``key`` was logged within the interval; True when logged."""
        now = self._monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            suppressed = self._suppressed.pop(key, 0)
            self._last[key] = now
        suffix = f" ({suppressed} similar error(s) suppressed)" if suppressed else ""
        self._logger.error("%s%s", message, suffix)
        return True


class TelemetryWriter:
    """Writes health snapshots and alarm events for one instance, best-effort."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        instance_id: str,
        failure_threshold: int = 3,
        statement_timeout: float = 2.0,
        log_interval: float = 60.0,
    ) -> None:
        self.engine = engine
        self.instance_id = instance_id
        self.failure_threshold = failure_threshold
        self.statement_timeout = statement_timeout
        self.errors = RateLimitedLogger(log, log_interval)
        self._running_per_task: dict[str, int] = {}
        #: Per task, the latest start not yet written:
        #: (monotonic time, run id, (the run, when its start was noted)).
        self._unwritten_starts: dict[str, tuple[float, int, tuple[DispatchedRun, datetime]]] = {}
        self._lock = threading.Lock()

    def _write(self, what: str, work: Callable[[sa.Connection], T]) -> T | None:
        """Run ``work`` in its own short transaction; on error log (rate-limited), return None."""
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    ms = int(self.statement_timeout * 1000)
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
                return work(conn)
        except Exception as exc:  # telemetry must never fail the run
            self.errors.error(
                f"telemetry:{what}",
                f"telemetry write failed ({what}); runs continue unaffected: "
                f"{type(exc).__name__}: {error_reason(exc)}",
            )
            return None

    def _upsert_health(
        self,
        what: str,
        rows: list[dict[str, Any]],
        columns: tuple[str, ...],
        consts: dict[str, Any] | None = None,
    ) -> None:
        """Upsert per-(task, instance) health rows (each with ``consts``), updating only
        ``columns`` on conflict; ``last_started_at`` keeps the later of the stored and the
        new start (a start noted before a later run's finish must not move it back)."""

        def work(conn: sa.Connection) -> bool:
            bulk_insert_returning(
                conn,
                task_health,
                rows,
                conflict=("task_name", "instance_id"),
                update=columns,
                latest=("last_started_at",),
                consts=consts,
            )
            return True

        self._write(what, work)

    def runs_started(self, runs: Sequence[DispatchedRun], *, now: datetime) -> None:
        """Note that ``runs`` started. Their health rows are written by ``write_starts``
        once they are ``older_than`` old, unless the run's finish (whose row carries its
        start too) came first: most runs take less than that, and their start costs no
        write."""
        if not runs:
            return
        added = time.monotonic()
        with self._lock:
            for run in runs:
                self._running_per_task[run.task_name] = (
                    self._running_per_task.get(run.task_name, 0) + 1
                )
                # The row itself is built only if it is written (most runs finish first).
                self._unwritten_starts[run.task_name] = (added, run.run_id, (run, now))

    def write_starts(self, *, older_than: float = 0.0) -> None:
        """Write the health rows of starts noted at least ``older_than`` seconds ago and
        not yet superseded by their run's finish."""
        cutoff = time.monotonic() - older_than
        with self._lock:
            due = [n for n, (added, _id, _run) in self._unwritten_starts.items() if added <= cutoff]
            started = [self._unwritten_starts.pop(n)[2] for n in due]
        if not started:
            return
        rows = [self._start_row(run, noted) for run, noted in started]
        self._upsert_health(
            "health start",
            rows,
            (
                "enabled",
                "schedule_type",
                "schedule_payload",
                "is_running",
                "last_heartbeat_at",
                "max_runtime_seconds",
                "updated_at",
            ),
        )

    def _start_row(self, run: DispatchedRun, noted: datetime) -> dict[str, Any]:
        """The health row of a started run (``noted``: when the start was noted)."""
        d = run.definition
        return {
            "task_name": run.task_name,
            "instance_id": self.instance_id,
            "enabled": d.policies.enabled,
            "schedule_type": d.schedule.kind,
            "schedule_payload": d.schedule_json(),
            "last_started_at": run.started_at,
            "is_running": True,
            "consecutive_failures": run.consecutive_failures_at_start,
            "last_heartbeat_at": noted,
            "max_runtime_seconds": d.policies.max_runtime,
            "updated_at": noted,
        }

    def runs_finished(
        self,
        result: FinalizeResult,
        definitions: dict[str, Any],
        *,
        now: datetime,
    ) -> None:
        """Write the health rows of a finalize batch: each task's latest outcome, its latest
        start and whether runs of it are still in flight here. Rejected outcomes (runs
        another instance already marked abandoned) are no longer in flight either."""
        outcomes = result.accepted
        latest: dict[str, RunOutcome] = {}
        started: dict[str, datetime] = {}
        running = self._running_per_task
        unwritten = self._unwritten_starts
        with self._lock:
            for batch, accepted in ((outcomes, True), (result.rejected, False)):
                for o in batch:
                    name = o.task_name
                    left = running.get(name, 1) - 1
                    if left <= 0:
                        running.pop(name, None)
                    else:
                        running[name] = left
                    start = unwritten.get(name)
                    if start is not None and start[1] == o.run_id:
                        del unwritten[name]  # its finish row says it all
                    if not accepted:
                        continue
                    seen = latest.get(name)
                    if seen is None or o.finished_at >= seen.finished_at:
                        latest[name] = o
                    latest_start = started.get(name)
                    if latest_start is None or o.started_at > latest_start:
                        started[name] = o.started_at
            still_running = {name for name in latest if name in running}
            idle_rejected = sorted(
                {o.task_name for o in result.rejected} - set(latest) - set(running)
            )
        if idle_rejected:
            self._mark_idle(idle_rejected, now=now)
        if not outcomes:
            return
        failures = result.consecutive_failures
        rows = []
        for name, o in latest.items():
            d = definitions.get(name)
            rows.append(
                {
                    "task_name": name,
                    "enabled": True if d is None else d.policies.enabled,
                    "schedule_type": "" if d is None else d.schedule.kind,
                    "schedule_payload": "{}" if d is None else d.schedule_json(),
                    "last_started_at": started[name],
                    "last_finished_at": o.finished_at,
                    "last_duration_seconds": o.duration_seconds,
                    "last_status": o.status,
                    "is_running": name in still_running,
                    "consecutive_failures": failures.get(name, 0),
                    "last_error_message": truncate_text(o.error_message, HEALTH_ERROR_LIMIT),
                    "max_runtime_seconds": None if d is None else d.policies.max_runtime,
                }
            )

        self._upsert_health(
            "health finish",
            rows,
            (
                "last_finished_at",
                "last_duration_seconds",
                "last_status",
                "is_running",
                "consecutive_failures",
                "last_error_message",
                "last_heartbeat_at",
                "updated_at",
            ),
            consts={"instance_id": self.instance_id, "last_heartbeat_at": now, "updated_at": now},
        )
        self._update_failure_alarms(result.consecutive_failures, result.recovered, latest, now=now)
        instruments = otel_instruments()
        add, record = instruments.runs.add, instruments.duration.record
        for o in outcomes:
            attributes = {"task": o.task_name, "outcome": o.status}
            add(1, attributes)
            record(o.duration_seconds, attributes)
        instruments.failures.update(failures)

    def _mark_idle(self, names: Sequence[str], *, now: datetime) -> None:
        """This instance has no run of ``names`` in flight any more (their outcomes were
        rejected): their health rows stop saying ``is_running``."""

        def work(conn: sa.Connection) -> bool:
            conn.execute(
                task_health.update()
                .where(task_health.c.instance_id == self.instance_id)
                .where(task_health.c.task_name.in_(list(names)))
                .values(is_running=False, updated_at=now)
            )
            return True

        self._write("health idle", work)

    def _update_failure_alarms(
        self,
        failures: dict[str, int],
        recovered: frozenset[str],
        latest: dict[str, RunOutcome],
        *,
        now: datetime,
    ) -> None:
        to_open = [n for n, c in failures.items() if c >= self.failure_threshold]
        # Only a task that was failing can have an open alarm: a success of a healthy task
        # (the common case) writes nothing here.
        to_close = sorted(recovered)
        if not to_open and not to_close:
            return

        def _work(conn: sa.Connection) -> bool:
            open_alarms(
                conn,
                "consecutive_failures",
                {
                    n: {
                        "consecutive_failures": failures[n],
                        "threshold": self.failure_threshold,
                        "last_error": truncate_text(latest[n].error_message, HEALTH_ERROR_LIMIT)
                        if n in latest
                        else None,
                    }
                    for n in to_open
                },
                now=now,
            )
            if to_close:
                conn.execute(
                    alarm_events.update()
                    .where(alarm_events.c.task_name.in_(to_close))
                    .where(alarm_events.c.kind == "consecutive_failures")
                    .where(alarm_events.c.closed_at.is_(None))
                    .values(closed_at=now)
                )
            return True

        self._write("alarms", _work)

    def check_alarms(self, *, now: datetime) -> set[str]:
        """The periodic alarm checks (each heartbeat): stuck runs, and ``missed`` alarms
        whose task has succeeded since. Returns the names of stuck tasks."""
        self._close_recovered_missed(now=now)
        return self.check_stuck(now=now)

    def _close_recovered_missed(self, *, now: datetime) -> None:
        """Close each open ``missed`` alarm whose task succeeded after it was opened."""

        def work(conn: sa.Connection) -> bool:
            succeeded = (
                sa.select(schedules.c.name)
                .where(schedules.c.name == alarm_events.c.task_name)
                .where(schedules.c.last_success_at >= alarm_events.c.opened_at)
                .exists()
            )
            conn.execute(
                alarm_events.update()
                .where(alarm_events.c.kind == "missed")
                .where(alarm_events.c.closed_at.is_(None))
                .where(succeeded)
                .values(closed_at=now)
            )
            return True

        self._write("missed alarms", work)

    def check_stuck(self, *, now: datetime) -> set[str]:
        """Open a ``stuck`` alarm for each task with a run past ``max_runtime``; close cleared ones.

        Returns the names of stuck tasks (empty when the check could not run).
        """
        stuck: set[str] = set()

        def _work(conn: sa.Connection) -> bool:
            rows = conn.execute(
                sa.select(
                    task_runs.c.task_name,
                    sa.func.min(task_runs.c.started_at).label("oldest"),
                    schedules.c.max_runtime_seconds,
                )
                .join(schedules, schedules.c.name == task_runs.c.task_name)
                .where(task_runs.c.status == "running")
                .where(schedules.c.max_runtime_seconds.is_not(None))
                .group_by(task_runs.c.task_name, schedules.c.max_runtime_seconds)
            ).all()
            for r in rows:
                # The oldest run in flight decides: the one rule (scheduler_core.states).
                if is_stuck(
                    now=now, running_starts=(r.oldest,), max_runtime_seconds=r.max_runtime_seconds
                ):
                    stuck.add(r.task_name)
            open_rows = conn.execute(
                sa.select(alarm_events.c.task_name)
                .where(alarm_events.c.kind == "stuck")
                .where(alarm_events.c.closed_at.is_(None))
            ).all()
            already = {r.task_name for r in open_rows}
            open_alarms(conn, "stuck", dict.fromkeys(stuck - already), now=now)
            cleared = sorted(already - stuck)
            if cleared:
                conn.execute(
                    alarm_events.update()
                    .where(alarm_events.c.task_name.in_(cleared))
                    .where(alarm_events.c.kind == "stuck")
                    .where(alarm_events.c.closed_at.is_(None))
                    .values(closed_at=now)
                )
            return True

        if self._write("stuck check", _work) is None:
            return set()
        instruments = otel_instruments()
        instruments.stuck.clear()
        instruments.stuck.update(dict.fromkeys(stuck, 1))
        return stuck
