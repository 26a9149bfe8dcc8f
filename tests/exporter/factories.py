"""Rows for the exporter tests, written with SQLAlchemy Core straight into the five tables.

The scheduler engine is not needed: each helper inserts what the engine would have written,
and :func:`seed_every_state` builds one task per status badge with known metric values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from exporter.server import ExporterServer
from exporter.settings import ExporterSettings
from scheduler_core import models
from scheduler_core.alert_policy import AlertPolicy, Deadline
from scheduler_core.histograms import DURATION_BUCKETS, START_DELAY_BUCKETS, HistogramCounts
from scheduler_core.store.snapshot import OUTCOMES, TaskSnapshot

#: The "now" the seeded rows are relative to (a fixed instant keeps expected values exact).
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

#: An ``alerts:`` block that sets every field (durations in seconds, as stored).
FULL_ALERTS = AlertPolicy(
    failures=2,
    late_after=600.0,
    no_success_for=86400.0,
    max_duration=1800.0,
    min_duration=2.0,
    slower_than_usual=3.0,
    deadline=Deadline(at=time(6, 0), timezone="Europe/Berlin"),
    severity="critical",
)


def schedule_row(name: str, *, now: datetime = NOW, **overrides: Any) -> dict[str, Any]:
    """A scheduler_schedules row for an `every 5m` callable task that has never run."""
    definition = f'{{"name": "{name}", "callable": "jobs:{name}", "every": "5m"}}'
    row: dict[str, Any] = {
        "name": name,
        "definition": definition,
        "definition_hash": hashlib.sha256(definition.encode()).hexdigest(),
        "schedule_type": "every",
        "schedule_expr": "every 5m",
        "timezone": "UTC",
        "action_kind": "callable",
        "enabled": True,
        "paused": False,
        "pause_reason": None,
        "next_run_at": now + timedelta(minutes=5),
        "due_at": now + timedelta(minutes=5),
        "fire_count": 0,
        "consecutive_failures": 0,
        "last_success_at": None,
        "last_failure_at": None,
        "max_runtime_seconds": None,
        "expected_interval_seconds": 300.0,
        **{f"runs_{outcome}_total": 0 for outcome in models.TERMINAL_STATUSES},
        "missed_runs_total": 0,
        "result_totals": None,
        "alert_policy": None,
        **histogram_columns(
            HistogramCounts.empty(DURATION_BUCKETS), HistogramCounts.empty(START_DELAY_BUCKETS)
        ),
        "created_at": now - timedelta(days=1),
        "updated_at": now,
    }
    row.update(overrides)
    return row


def health_row(task: str, instance_id: str, *, now: datetime = NOW, **overrides: Any) -> dict:
    """A scheduler_task_health row of ``task`` as seen by ``instance_id``."""
    row: dict[str, Any] = {
        "task_name": task,
        "instance_id": instance_id,
        "enabled": True,
        "schedule_type": "every",
        "schedule_payload": '{"every": 300}',
        "last_started_at": None,
        "last_finished_at": None,
        "last_duration_seconds": None,
        "last_status": None,
        "is_running": False,
        "consecutive_failures": 0,
        "last_error_message": None,
        "last_heartbeat_at": now,
        "max_runtime_seconds": None,
        "updated_at": now,
    }
    row.update(overrides)
    return row


def run_row(task: str, *, scheduled_for: datetime, **overrides: Any) -> dict[str, Any]:
    """A scheduler_task_runs row (a success by default)."""
    row: dict[str, Any] = {
        "task_name": task,
        "scheduled_for": scheduled_for,
        "attempt": 1,
        "trigger": "schedule",
        "status": "success",
        "started_at": scheduled_for + timedelta(seconds=0.2),
        "finished_at": scheduled_for + timedelta(seconds=1.2),
        "duration_seconds": 1.0,
        "instance_id": "node-a:1",
        "cancel_requested": False,
    }
    row.update(overrides)
    return row


def running_run_row(task: str, *, scheduled_for: datetime, started_at: datetime) -> dict[str, Any]:
    """A scheduler_task_runs row of a run still in flight."""
    return run_row(
        task, scheduled_for=scheduled_for, status="running", started_at=started_at,
        finished_at=None, duration_seconds=None,
    )  # fmt: skip


@contextmanager
def exporter_replicas(
    database_url: str, count: int = 2, **options: Any
) -> Iterator[list[ExporterServer]]:
    """``count`` exporters on one database, each on a free port, refreshed once and serving;
    ``options`` go to each :class:`ExporterServer` (e.g. ``clock``)."""
    servers = [
        ExporterServer(
            settings=ExporterSettings(port=0, refresh_interval=1.0),
            database_url=database_url,
            **options,
        )
        for _ in range(count)
    ]
    try:
        for server in servers:
            server.start()
            server.refresh_now()
        yield servers
    finally:
        for server in servers:
            server.stop()


def instance_row(instance_id: str, *, now: datetime = NOW, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "instance_id": instance_id,
        "hostname": instance_id.split(":")[0],
        "pid": 1,
        "started_at": now - timedelta(hours=1),
        "last_heartbeat_at": now - timedelta(seconds=3),
        "lease_seconds": 30.0,
        "state": "running",
        "version": "0.1.0",
        "running_runs": 0,
    }
    row.update(overrides)
    return row


def alarm_row(task: str, kind: str, *, now: datetime = NOW, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task_name": task,
        "kind": kind,
        "opened_at": now - timedelta(minutes=10),
        "closed_at": None,
        "details": "{}",
    }
    row.update(overrides)
    return row


def insert(engine: sa.Engine, table: sa.Table, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    if rows:
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)


@dataclass(frozen=True)
class Expected:
    """What the exporter must report for one seeded task."""

    badge: str
    running: int = 0
    stuck: bool = False
    consecutive_failures: int = 0
    last_status: str | None = None


def histogram_columns(duration: HistogramCounts, start_delay: HistogramCounts) -> dict[str, Any]:
    """Schedule-row column values that store these two histograms."""
    return {
        **models.DURATION_HISTOGRAM.values(duration),
        **models.START_DELAY_HISTOGRAM.values(start_delay),
    }


def duration_histogram(*values: float) -> HistogramCounts:
    return HistogramCounts.empty(DURATION_BUCKETS).observe(values)


def delay_histogram(*values: float) -> HistogramCounts:
    return HistogramCounts.empty(START_DELAY_BUCKETS).observe(values)


def seed_every_state(engine: sa.Engine, *, now: datetime = NOW) -> dict[str, Expected]:
    """One task per badge (plus a never-run one and ``alerting-task``, whose alerts block sets
    every field), two instances, alarms; returns expectations.

    Instance ``node-a:1`` runs ``running-task`` and ``stuck-task``; ``node-b:2`` is draining.
    ``ok-task`` ran on both instances: the newer finish (on node-b) must win.
    """
    a, b = "node-a:1", "node-b:2"
    schedules = [
        schedule_row(
            "ok-task",
            now=now,
            runs_success_total=7,
            runs_failure_total=1,
            missed_runs_total=2,
            last_success_at=now - timedelta(minutes=1),
            last_failure_at=now - timedelta(hours=1),
            **histogram_columns(
                duration_histogram(0.02, 0.3, 0.3, 4.0, 4.0, 40.0, 9000.0),
                delay_histogram(0.002, 0.2, 0.2, 0.2, 2.0, 20.0, 100.0),
            ),
            max_runtime_seconds=600.0,
            result_totals='{"bytes_moved": 1048576.0, "files_moved": 42.0}',
        ),
        schedule_row(
            "failing-task",
            now=now,
            schedule_type="cron",
            schedule_expr="30 2 * * *",
            timezone="Europe/Berlin",
            action_kind="command",
            consecutive_failures=3,
            runs_success_total=1,
            runs_failure_total=2,
            runs_timeout_total=1,
            last_failure_at=now - timedelta(minutes=2),
            last_success_at=now - timedelta(days=3),
            expected_interval_seconds=86400.0,
        ),
        schedule_row("running-task", now=now, runs_success_total=4, max_runtime_seconds=3600.0),
        schedule_row(
            "stuck-task",
            now=now,
            max_runtime_seconds=60.0,
            runs_cancelled_total=1,
            runs_abandoned_total=1,
        ),
        schedule_row(
            "paused-task",
            now=now,
            paused=True,
            pause_reason="maintenance",
            due_at=None,
            next_run_at=now - timedelta(hours=2),
            runs_skipped_total=5,
        ),
        schedule_row("disabled-task", now=now, enabled=False, next_run_at=None, due_at=None),
        schedule_row(
            "late-task",
            now=now,
            next_run_at=now - timedelta(minutes=10),
            due_at=now - timedelta(minutes=10),
            missed_runs_total=3,
        ),
        # Every field of an alerts: block; its last success (a day ago, in 0.5 s) was faster
        # than min_duration and before today's 06:00 Berlin deadline: both alarms are open.
        schedule_row(
            "alerting-task",
            now=now,
            alert_policy=FULL_ALERTS.to_json(),
            runs_success_total=1,
            last_success_at=now - timedelta(days=1),
            **histogram_columns(duration_histogram(0.5), delay_histogram(0.01)),
        ),
        schedule_row(
            "once-task",
            now=now,
            schedule_type="at",
            schedule_expr="at 2026-12-01T09:00:00+01:00",
            next_run_at=datetime(2026, 12, 1, 8, 0, tzinfo=UTC),
            expected_interval_seconds=None,
        ),
    ]
    health = [
        health_row(
            "ok-task",
            a,
            now=now,
            last_started_at=now - timedelta(minutes=5, seconds=2),
            last_finished_at=now - timedelta(minutes=5),
            last_duration_seconds=2.0,
            last_status="failure",
            last_error_message="old",
        ),
        health_row(
            "ok-task",
            b,
            now=now,
            last_started_at=now - timedelta(minutes=1, seconds=1.5),
            last_finished_at=now - timedelta(minutes=1),
            last_duration_seconds=1.5,
            last_status="success",
        ),
        health_row(
            "failing-task",
            a,
            now=now,
            last_started_at=now - timedelta(minutes=3),
            last_finished_at=now - timedelta(minutes=2),
            last_duration_seconds=60.0,
            last_status="timeout",
            consecutive_failures=3,
            last_error_message="killed after 60s",
        ),
        health_row(
            "running-task",
            a,
            now=now,
            is_running=True,
            last_started_at=now - timedelta(seconds=30),
            last_finished_at=now - timedelta(minutes=6),
            last_duration_seconds=12.0,
            last_status="success",
        ),
        health_row(
            "alerting-task",
            a,
            now=now,
            last_started_at=now - timedelta(days=1, seconds=0.5),
            last_finished_at=now - timedelta(days=1),
            last_duration_seconds=0.5,
            last_status="success",
        ),
        health_row(
            "stuck-task",
            a,
            now=now,
            is_running=True,
            last_started_at=now - timedelta(minutes=20),
            max_runtime_seconds=60.0,
        ),
    ]
    runs = [
        run_row("ok-task", scheduled_for=now - timedelta(minutes=1, seconds=2), instance_id=b),
        run_row(
            "failing-task",
            scheduled_for=now - timedelta(minutes=3),
            status="timeout",
            duration_seconds=60.0,
            error_message="killed after 60s",
        ),
        running_run_row(
            "running-task",
            scheduled_for=now - timedelta(seconds=31),
            started_at=now - timedelta(seconds=30),
        ),
        running_run_row(
            "stuck-task",
            scheduled_for=now - timedelta(minutes=20, seconds=1),
            started_at=now - timedelta(minutes=20),
        ),
    ]
    insert(engine, models.schedules, schedules)
    insert(engine, models.task_health, health)
    insert(engine, models.task_runs, runs)
    insert(
        engine,
        models.instances,
        [
            instance_row(a, now=now, running_runs=2),
            instance_row(b, now=now, state="draining", version="0.0.9",
                         last_heartbeat_at=now - timedelta(seconds=10)),
        ],
    )  # fmt: skip
    insert(
        engine,
        models.alarm_events,
        [
            alarm_row("failing-task", "consecutive_failures", now=now),
            alarm_row("stuck-task", "stuck", now=now),
            alarm_row("late-task", "missed", now=now, closed_at=now - timedelta(minutes=1)),
            alarm_row("alerting-task", "too_fast", now=now),
            alarm_row("alerting-task", "deadline_missed", now=now),
        ],
    )
    return {
        "ok-task": Expected("ok", last_status="success"),
        "failing-task": Expected("failing", consecutive_failures=3, last_status="timeout"),
        "running-task": Expected("running", running=1, last_status="success"),
        "stuck-task": Expected("stuck", running=1, stuck=True),
        "paused-task": Expected("paused"),
        "disabled-task": Expected("disabled"),
        "late-task": Expected("late"),
        "once-task": Expected("ok"),
        "alerting-task": Expected("ok", last_status="success"),
    }


def seed_many(engine: sa.Engine, count: int, *, now: datetime = NOW, instances: int = 2) -> None:
    """``count`` busy tasks with health rows on every instance and a few in-flight runs."""
    ids = [f"node-{i}:1" for i in range(instances)]
    hists = histogram_columns(duration_histogram(0.1, 1.0, 5.0), delay_histogram(0.01, 0.2))
    names = [f"task-{i:05d}" for i in range(count)]
    insert(
        engine,
        models.schedules,
        (
            schedule_row(name, now=now, runs_success_total=i, runs_failure_total=i % 3,
                         **hists,
                         max_runtime_seconds=600.0)
            for i, name in enumerate(names)
        ),
    )  # fmt: skip
    insert(
        engine,
        models.task_health,
        (
            health_row(name, iid, now=now, last_started_at=now - timedelta(minutes=2),
                       last_finished_at=now - timedelta(minutes=1), last_duration_seconds=1.0,
                       last_status="success")
            for name in names for iid in ids
        ),
    )  # fmt: skip
    insert(
        engine,
        models.task_runs,
        (
            run_row(name, scheduled_for=now - timedelta(seconds=5), status="running",
                    started_at=now - timedelta(seconds=4), finished_at=None,
                    duration_seconds=None, instance_id=ids[i % len(ids)])
            for i, name in enumerate(names[::100])
        ),
    )  # fmt: skip
    insert(engine, models.instances, (instance_row(iid, now=now) for iid in ids))


def task_snapshot(name: str = "job", **overrides: Any) -> TaskSnapshot:
    """A TaskSnapshot built directly (no database): an idle, enabled ``every 5m`` task that
    succeeded a minute ago, with ``overrides`` applied."""
    fields: dict[str, Any] = {
        "name": name,
        "schedule_type": "every",
        "schedule": "every 5m",
        "timezone": "UTC",
        "action_kind": "callable",
        "enabled": True,
        "paused": False,
        "pause_reason": None,
        "paused_by": None,
        "paused_at": None,
        "next_run_at": NOW + timedelta(minutes=4),
        "last_started_at": NOW - timedelta(minutes=1, seconds=3),
        "last_finished_at": NOW - timedelta(minutes=1),
        "last_success_at": NOW - timedelta(minutes=1),
        "last_failure_at": None,
        "last_duration_seconds": 3.0,
        "last_status": "success",
        "last_error_message": None,
        "last_heartbeat_at": NOW,
        "consecutive_failures": 0,
        "max_runtime_seconds": None,
        "expected_interval_seconds": 300.0,
        "running": 0,
        "stuck": False,
        "late": False,
        "runs_total": {**dict.fromkeys(OUTCOMES, 0), "success": 1},
        "missed_runs_total": 0,
        "duration": duration_histogram(3.0),
        "start_delay": delay_histogram(0.01),
        "open_alarms": frozenset(),
        "badge": "ok",
    }
    fields.update(overrides)
    return TaskSnapshot(**fields)


class FakeClock:
    """An injectable clock that only moves when told to."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


#: Called with each statement and the DB-API cursor it ran on, once it has run.
AfterStatement = Callable[[str, Any], None]


class StatementCounter:
    """Counts the SQL statements an engine sends, and calls ``after`` once each has run.

    On PostgreSQL it counts at the driver: every statement psycopg sends (a cursor's
    ``execute``, ``executemany``, ``stream`` or ``copy``), so also those SQLAlchemy does not
    run itself (``scheduler_core.db.stream_rows``). Elsewhere it counts SQLAlchemy's
    ``before_cursor_execute``. Connections checked out while it is active are counted."""

    def __init__(self, engine: sa.Engine, after: AfterStatement | None = None) -> None:
        self.engine = engine
        self.statements: list[str] = []
        self._after = after
        self._active = False
        self._driver = engine.dialect.name == "postgresql"

    def _count(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements.append(statement)

    def _ran(self, _conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if self._after is not None:
            self._after(statement, cursor)

    def _checked_out(self, dbapi_connection: Any, *_args: Any) -> None:
        dbapi_connection.cursor_factory = _counting_cursor(self)

    @contextmanager
    def sent(self, statement: Any, cursor: Any) -> Iterator[None]:
        """Around one statement the driver sends: counted, then ``after`` once it has run."""
        text = statement if isinstance(statement, str) else str(statement)
        if self._active:
            self.statements.append(text)
        yield
        if self._active and self._after is not None:
            self._after(text, cursor)

    def _listeners(self) -> list[tuple[str, Callable[..., None]]]:
        if self._driver:
            return [("checkout", self._checked_out)]
        return [("before_cursor_execute", self._count), ("after_cursor_execute", self._ran)]

    def __enter__(self) -> StatementCounter:
        self._active = True
        for name, listener in self._listeners():
            sa.event.listen(self.engine, name, listener)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._active = False
        for name, listener in self._listeners():
            sa.event.remove(self.engine, name, listener)


def _counting_cursor(counter: StatementCounter) -> type[Any]:
    """A psycopg cursor class that reports each statement to ``counter``."""
    import psycopg

    class CountingCursor(psycopg.Cursor[Any]):
        def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            with counter.sent(query, self):
                return super().execute(query, params, **kw)

        def executemany(self, query: Any, params_seq: Any, **kw: Any) -> None:
            with counter.sent(query, self):
                super().executemany(query, params_seq, **kw)

        def stream(self, query: Any, params: Any = None, **kw: Any) -> Iterator[Any]:
            with counter.sent(query, self):
                yield from super().stream(query, params, **kw)

        def copy(self, statement: Any, params: Any = None, **kw: Any) -> Any:
            with counter.sent(statement, None):  # counted; the rows go through the copy
                return super().copy(statement, params, **kw)

    return CountingCursor
