"""The store's task-state query: every task and instance as of one moment, read-only.

One query serves every reader of task state: the exporter (its metrics and
``/api/v1/status``) reads a :class:`Snapshot` per refresh, and ``schedctl tasks list`` can
read the same. Five SELECTs, whatever the number of tasks: schedules, per-instance health
rows, in-flight runs (via the ``(status, instance_id)`` index; history is never scanned),
instances and open alarms, in one transaction that reads one moment of the database (see
:meth:`SnapshotReader.read`). Nothing is written. Badges come from the one state rule,
:mod:`scheduler_core.states`.

A task's ``alerts:`` policy (``alert_policy``, NULL for most tasks) comes with its row: its
``late_after`` is that task's late grace, and a deadline is judged by
:func:`scheduler_core.alert_policy.deadline_missed` as of the snapshot time, against the
task's schedule, rebuilt from its stored definition once per digest
(:class:`scheduler_core.store.alert_inputs.DeadlineSchedules`; a sixth SELECT reads the
definitions of deadlines a reader has not seen yet).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal

from scheduler_core import models
from scheduler_core.alert_policy import AlertPolicy
from scheduler_core.db import select_rows, stream_rows
from scheduler_core.histograms import HistogramCounts
from scheduler_core.models import DURATION_HISTOGRAM, START_DELAY_HISTOGRAM, HistogramColumns
from scheduler_core.schedules import Schedule
from scheduler_core.states import (
    BADGES,
    LATE_GRACE_SECONDS,
    Badge,
    assess,
)
from scheduler_core.store.alert_inputs import DeadlineSchedules, judge_deadline, stored_policy

__all__ = [
    "ALARM_KINDS",
    "BADGES",
    "OUTCOMES",
    "POLICY_ALARM_KINDS",
    "Badge",
    "InstanceSnapshot",
    "Snapshot",
    "SnapshotReader",
    "TaskSnapshot",
    "read_snapshot",
]

#: Outcomes with a persisted counter on the schedule row (``runs_<outcome>_total``).
OUTCOMES: tuple[str, ...] = tuple(models.TERMINAL_STATUSES)
#: Alarm kinds that get a ``scheduler_alarm_open`` series for every task, open or not.
ALARM_KINDS: tuple[str, ...] = tuple(models.ALARM_KINDS)
#: Alarm kinds only a task with an ``alerts:`` policy can have (``too_fast``, ``slow``,
#: ``deadline_missed``): in ``open_alarms`` while open, not series for every task.
POLICY_ALARM_KINDS: tuple[str, ...] = tuple(models.POLICY_ALARM_KINDS)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskSnapshot:
    """One task as last read, with its derived states."""

    name: str
    schedule_type: str
    schedule: str
    timezone: str
    action_kind: str
    enabled: bool
    paused: bool
    pause_reason: str | None
    paused_by: str | None
    paused_at: datetime | None
    #: As stored: also set while the task is disabled or paused.
    next_run_at: datetime | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_duration_seconds: float | None
    #: Status of the most recently finished run (one of OUTCOMES), None if none finished.
    last_status: str | None
    last_error_message: str | None
    last_heartbeat_at: datetime | None
    consecutive_failures: int
    max_runtime_seconds: float | None
    expected_interval_seconds: float | None
    #: In-flight runs across all instances.
    running: int
    stuck: bool
    late: bool
    runs_total: Mapping[str, int]
    missed_runs_total: int
    duration: HistogramCounts
    start_delay: HistogramCounts
    open_alarms: frozenset[str]
    badge: Badge
    #: Totals of the result keys the task declares (``result_metrics``), persisted in SQL.
    result_totals: Mapping[str, float] = field(default_factory=dict)
    #: The task's ``alerts:`` block (scheduler_core.alert_policy), None when it has none.
    alert_policy: AlertPolicy | None = None
    #: Whether its deadline was missed (alert_policy.deadline_missed); None without a deadline.
    deadline_missed: bool | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class InstanceSnapshot:
    """One scheduler instance: its lease heartbeat, state and the runs it has in flight."""

    instance_id: str
    hostname: str | None
    started_at: datetime
    last_heartbeat_at: datetime
    lease_seconds: float
    state: str
    version: str
    running_runs: int


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """Every task (in name order) and instance, as read at ``taken_at``."""

    taken_at: datetime
    tasks: tuple[TaskSnapshot, ...]
    instances: tuple[InstanceSnapshot, ...]
    #: Open (task, kind) alarms whose task has no schedule row (left by a deleted task).
    orphan_alarms: tuple[tuple[str, str], ...] = ()
    #: In-flight runs on instance ids missing from ``scheduler_instances``.
    orphan_running_runs: Mapping[str, int] = field(default_factory=dict)

    @cached_property
    def tasks_by_name(self) -> Mapping[str, TaskSnapshot]:
        return {task.name: task for task in self.tasks}

    @cached_property
    def badge_counts(self) -> Mapping[Badge, int]:
        counts: dict[Badge, int] = dict.fromkeys(BADGES, 0)
        for task in self.tasks:
            counts[task.badge] += 1
        return counts


#: The run that finished last: (finished_at, status, duration_seconds, error_message).
_Finished = tuple[datetime | None, str | None, float | None, str | None]
_NEVER_FINISHED: _Finished = (None, None, None, None)


@dataclass(slots=True)
class _Health:
    """Per-task fold of the per-instance health rows: the most recent value of each field."""

    last_started_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    # Status, duration and error belong to the run that finished last, wherever it ran.
    last_finished: _Finished = _NEVER_FINISHED

    def fold(self, row: tuple[Any, ...]) -> None:
        """Fold one row of ``_HEALTH_COLUMNS`` (without the task name) into this one."""
        started, finished, status, duration, error, heartbeat = row
        if started is not None and (self.last_started_at is None or started > self.last_started_at):
            self.last_started_at = started
        last = self.last_finished[0]
        if finished is not None and (last is None or finished > last):
            self.last_finished = (finished, status if status in OUTCOMES else None, duration, error)
        if heartbeat is not None and (
            self.last_heartbeat_at is None or heartbeat > self.last_heartbeat_at
        ):
            self.last_heartbeat_at = heartbeat


class _Packed(sa.sql.expression.ColumnElement[str]):
    """A stored histogram as one text value, ``"n0,n1,...,n_inf,sum"``. The driver keeps a
    whole result in memory, and at 10,000 tasks 37 more numbers per row cost more RSS and
    refresh time than the exporter budget has; one short text per histogram costs less than
    the JSON it replaces, and the parsed histogram is memoised by it."""

    type = sa.String()
    inherit_cache = True
    # Not ClassVar: SQLAlchemy declares it as an instance attribute (HasTraverseInternals).
    _traverse_internals = [("parts", InternalTraversal.dp_clauseelement_list)]  # noqa: RUF012

    def __init__(self, columns: HistogramColumns) -> None:
        self.parts = [models.schedules.c[c] for c in (*columns.buckets, columns.sum)]


@compiles(_Packed)
def _packed_sql(element: _Packed, compiler: Any, **kw: Any) -> str:
    # SQLite before 3.44 has no concat_ws.
    parts = [f"CAST({compiler.process(p, **kw)} AS TEXT)" for p in element.parts]
    return " || ',' || ".join(parts)


@compiles(_Packed, "postgresql")
def _packed_postgresql(element: _Packed, compiler: Any, **kw: Any) -> str:
    # One call per row; a chain of || allocates a new string per part.
    return f"concat_ws(',', {', '.join(compiler.process(p, **kw) for p in element.parts)})"


def _unpacked(text: str, bounds: tuple[float, ...]) -> HistogramCounts:
    *buckets, total = text.split(",")
    return HistogramCounts.from_columns(tuple(map(int, buckets)), float(total), bounds)


_S = models.schedules.c
_SCHEDULE_COLUMNS = (
    _S.name, _S.schedule_type, _S.schedule_expr, _S.timezone, _S.action_kind, _S.enabled,
    _S.paused, _S.pause_reason, _S.paused_by, _S.paused_at, _S.next_run_at,
    _S.consecutive_failures, _S.last_success_at, _S.last_failure_at, _S.max_runtime_seconds,
    _S.expected_interval_seconds,
    *(models.schedules.c[f"runs_{outcome}_total"] for outcome in OUTCOMES),
    _S.missed_runs_total, _Packed(DURATION_HISTOGRAM), _Packed(START_DELAY_HISTOGRAM),
    _S.result_totals, _S.alert_policy,
    # What a deadline is judged with, NULL (nothing sent) for a task without a policy.
    sa.case((_S.alert_policy.is_not(None), _S.definition_hash)),
    sa.case((_S.alert_policy.is_not(None), _S.created_at)),
)  # fmt: skip
_H = models.task_health.c
_HEALTH_COLUMNS = (
    _H.task_name, _H.last_started_at, _H.last_finished_at, _H.last_status,
    _H.last_duration_seconds, _H.last_error_message, _H.last_heartbeat_at,
)  # fmt: skip
_R = models.task_runs.c
_I = models.instances.c
_A = models.alarm_events.c


def read_snapshot(
    bind: sa.Engine | sa.Connection, now: datetime, *, late_grace: float = LATE_GRACE_SECONDS
) -> Snapshot:
    """Read every task and instance with five SELECTs and derive badges as of ``now``."""
    return SnapshotReader(late_grace=late_grace).read(bind, now)


class SnapshotReader:
    """Reads snapshots, reusing the previous :class:`TaskSnapshot` of every unchanged task.

    Reuse keeps a refresh of 10,000 mostly idle tasks from churning memory and lets the
    exposition renderer recognise unchanged tasks by identity; values many tasks share
    (definition strings, histograms, counters) are stored once. Rows are consumed as they
    arrive instead of being materialised. Not thread-safe: one reader per refresh loop.
    """

    def __init__(self, *, late_grace: float = LATE_GRACE_SECONDS) -> None:
        self._late_grace = late_grace
        self._previous: dict[str, TaskSnapshot] = {}
        self._histograms: dict[_HistogramKey, HistogramCounts] = {}
        self._deadlines = DeadlineSchedules()

    def read(
        self,
        bind: sa.Engine | sa.Connection,
        now: datetime,
        pace: Callable[[], None] | None = None,
    ) -> Snapshot:
        """Read one snapshot. From an engine, the statements read one moment of the database:
        on PostgreSQL a ``REPEATABLE READ`` read-only transaction (psycopg sends it with the
        ``BEGIN``, so it holds behind a transaction pooler too), on SQLite the reader engine's
        deferred ``BEGIN`` (one WAL snapshot). A connection given is read as its caller set it;
        either way the read transaction is rolled back at the end."""
        if isinstance(bind, sa.Engine):
            with bind.connect() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execution_options(
                        isolation_level="REPEATABLE READ", postgresql_readonly=True
                    )
                return self.read(conn, now, pace)
        conn = bind
        health = _health_by_task(conn, pace)
        running_by_task, running_by_instance = _running_runs(conn)
        alarms = _open_alarms(conn)
        instance_rows = conn.execute(sa.select(models.instances).order_by(_I.instance_id)).all()
        tasks = self._tasks(conn, now, health, running_by_task, alarms, pace)
        conn.rollback()  # end the read transaction; nothing was written
        instances = tuple(_instance(row, running_by_instance) for row in instance_rows)
        orphan_alarms = sorted((task, kind) for task, kinds in alarms.items() for kind in kinds)
        return Snapshot(
            taken_at=now,
            tasks=tasks,
            instances=instances,
            orphan_alarms=tuple(orphan_alarms),
            orphan_running_runs=dict(sorted(running_by_instance.items())),
        )

    def _tasks(
        self,
        conn: sa.Connection,
        now: datetime,
        health: dict[str, _Health],
        running_by_task: Mapping[str, list[datetime | None]],
        alarms: dict[str, set[str]],
        pace: Callable[[], None] | None,
    ) -> tuple[TaskSnapshot, ...]:
        """Every task in name order; pops the tasks it reads from ``health`` and ``alarms``."""
        previous, current = self._previous, {}
        shared = _Shared(self._histograms)
        deadlines = self._deadlines
        empty_health = _Health()
        tasks: list[TaskSnapshot] = []
        #: Tasks whose deadline needs a schedule not known yet: (index, digest, created_at).
        unjudged: list[tuple[int, str, datetime | None]] = []
        for row in stream_rows(conn, sa.select(*_SCHEDULE_COLUMNS).order_by(_S.name)):
            h = health.pop(row[0], empty_health)
            starts = running_by_task.get(row[0], ())
            open_alarms = frozenset(alarms.pop(row[0], ())) or _NO_ALARMS
            policy = schedule = None
            if row[_POLICY] is not None:
                policy = stored_policy(row[_POLICY])
                if policy is not None and policy.deadline is not None:
                    known, schedule = deadlines.get(row[_DIGEST])
                    if not known:
                        unjudged.append((len(tasks), row[_DIGEST], row[_CREATED]))
            task = _task(
                row, h, starts, open_alarms, now, self._late_grace, shared, policy, schedule
            )
            old = previous.get(task.name)
            if old is not None and old == task:
                task = old
            current[task.name] = task
            tasks.append(task)
            if pace is not None:
                pace()
        if unjudged:
            deadlines.learn(conn, {digest: tasks[i].name for i, digest, _c in unjudged})
            for i, digest, created_at in unjudged:
                t = tasks[i]
                missed = judge_deadline(
                    t.alert_policy, deadlines.get(digest)[1], timezone=t.timezone, now=now,
                    last_success_at=t.last_success_at, created_at=created_at,
                )  # fmt: skip
                tasks[i] = current[t.name] = replace(t, deadline_missed=missed)
        deadlines.keep_used()
        self._previous = current
        self._histograms = shared.histograms_used
        return tuple(tasks)


#: Where a schedule row holds the policy columns: the last three of ``_SCHEDULE_COLUMNS``.
_POLICY, _DIGEST, _CREATED = -3, -2, -1


def _health_by_task(conn: sa.Connection, pace: Callable[[], None] | None) -> dict[str, _Health]:
    health: dict[str, _Health] = {}
    for name, *values in stream_rows(conn, sa.select(*_HEALTH_COLUMNS)):
        entry = health.get(name)
        if entry is None:
            entry = health[name] = _Health()
        entry.fold(tuple(values))
        if pace is not None:
            pace()
    return health


def _running_runs(
    conn: sa.Connection,
) -> tuple[dict[str, list[datetime | None]], dict[str, int]]:
    """The ``started_at`` of each run in flight per task, and their count per instance."""
    by_task: dict[str, list[datetime | None]] = {}
    by_instance: dict[str, int] = {}
    for task_name, instance_id, started_at in select_rows(
        conn,
        sa.select(_R.task_name, _R.instance_id, _R.started_at).where(_R.status == "running"),
    ):
        by_task.setdefault(task_name, []).append(started_at)
        if instance_id is not None:
            by_instance[instance_id] = by_instance.get(instance_id, 0) + 1
    return by_task, by_instance


def _open_alarms(conn: sa.Connection) -> dict[str, set[str]]:
    alarms: dict[str, set[str]] = {}
    for alarm_task, kind in select_rows(
        conn, sa.select(_A.task_name, _A.kind).where(_A.closed_at.is_(None))
    ):
        alarms.setdefault(alarm_task, set()).add(kind)
    return alarms


def _instance(row: Any, running_by_instance: dict[str, int]) -> InstanceSnapshot:
    """The instance of ``row``; pops its in-flight count from ``running_by_instance``."""
    return InstanceSnapshot(
        instance_id=row.instance_id,
        hostname=row.hostname,
        started_at=row.started_at,
        last_heartbeat_at=row.last_heartbeat_at,
        lease_seconds=float(row.lease_seconds),
        state=row.state,
        version=row.version,
        running_runs=running_by_instance.pop(row.instance_id, 0),
    )


_NO_ALARMS: frozenset[str] = frozenset()
_NO_TOTALS: Mapping[str, float] = MappingProxyType({})
#: The stored histograms, by their index in a ``_HistogramKey``.
_HISTOGRAMS = (DURATION_HISTOGRAM, START_DELAY_HISTOGRAM)
#: A stored histogram as read: its packed text (see ``_packed``) and which one it is.
_HistogramKey = tuple[str, int]


class _Shared:
    """One object per distinct value within a read: histograms (also across reads), counters."""

    def __init__(self, histograms: dict[_HistogramKey, HistogramCounts]) -> None:
        self._histograms_before = histograms
        self.histograms_used: dict[_HistogramKey, HistogramCounts] = {}
        self._counters: dict[tuple[int, ...], Mapping[str, int]] = {}
        self._totals: dict[str, Mapping[str, float]] = {}

    def histogram(self, packed: str, kind: int) -> HistogramCounts:
        key = (packed, kind)
        found = self.histograms_used.get(key) or self._histograms_before.get(key)
        if found is None:
            found = _unpacked(packed, _HISTOGRAMS[kind].bounds)
        self.histograms_used[key] = found
        return found

    def totals(self, stored: str | None) -> Mapping[str, float]:
        """Result totals as stored (JSON), parsed once per distinct value in a read."""
        if stored is None:
            return _NO_TOTALS
        found = self._totals.get(stored)
        if found is None:
            found = self._totals[stored] = {k: float(v) for k, v in json.loads(stored).items()}
        return found

    def counters(self, counts: tuple[int, ...]) -> Mapping[str, int]:
        found = self._counters.get(counts)
        if found is None:
            found = self._counters[counts] = dict(zip(OUTCOMES, counts, strict=True))
        return found


# long: one flat row-to-snapshot mapping per task, on the refresh hot path (no extra calls)
def _task(
    row: Any,
    h: _Health,
    starts: Sequence[datetime | None],
    open_alarms: frozenset[str],
    now: datetime,
    late_grace: float,
    shared: _Shared,
    policy: AlertPolicy | None,
    deadline_schedule: Schedule | None,
) -> TaskSnapshot:
    (
        name, schedule_type, schedule_expr, timezone, action_kind, enabled, paused,
        pause_reason, paused_by, paused_at, next_run_at, consecutive_failures, last_success_at,
        last_failure_at, max_runtime, expected_interval, *counts, missed, duration_packed,
        delay_packed, result_totals, _policy, _digest, created_at,
    ) = row  # fmt: skip
    if policy is not None and policy.late_after is not None:
        late_grace = policy.late_after  # the task's own grace (alerts.late_after)
    enabled, paused = bool(enabled), bool(paused)
    consecutive_failures = int(consecutive_failures or 0)
    last_finished_at, last_status, last_duration, last_error = h.last_finished
    # max_runtime is the synced definition's (the schedule row), as the stuck alarm
    # (telemetry.check_stuck) and ``schedctl tasks list`` read it; a health row's copy may be
    # an older definition's, of whichever instance wrote it.
    state = assess(
        now=now, enabled=enabled, paused=paused, running_starts=starts,
        max_runtime_seconds=max_runtime, next_run_at=next_run_at,
        consecutive_failures=consecutive_failures, last_status=last_status,
        late_grace_seconds=late_grace,
    )  # fmt: skip
    return TaskSnapshot(
        name=name, schedule_type=sys.intern(schedule_type), schedule=sys.intern(schedule_expr),
        timezone=sys.intern(timezone), action_kind=sys.intern(action_kind), enabled=enabled,
        paused=paused, pause_reason=pause_reason, paused_by=paused_by, paused_at=paused_at,
        next_run_at=next_run_at, last_started_at=h.last_started_at,
        last_finished_at=last_finished_at, last_success_at=last_success_at,
        last_failure_at=last_failure_at, last_duration_seconds=last_duration,
        last_status=last_status, last_error_message=last_error,
        last_heartbeat_at=h.last_heartbeat_at, consecutive_failures=consecutive_failures,
        max_runtime_seconds=max_runtime, expected_interval_seconds=expected_interval,
        running=len(starts), stuck=state.stuck, late=state.late,
        runs_total=shared.counters(tuple(int(c or 0) for c in counts)),
        missed_runs_total=int(missed or 0), duration=shared.histogram(duration_packed, 0),
        start_delay=shared.histogram(delay_packed, 1), open_alarms=open_alarms, badge=state.badge,
        result_totals=shared.totals(result_totals), alert_policy=policy,
        deadline_missed=None
        if deadline_schedule is None
        else judge_deadline(
            policy, deadline_schedule, timezone=timezone, now=now,
            last_success_at=last_success_at, created_at=created_at,
        ),
    )  # fmt: skip
