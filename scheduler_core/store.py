"""All SQL the scheduler and the admin commands run, behind one class.

Why one ~1,900-line module: it predates the split by concept (definitions and sync, claims
and dispatch, finalize, instances and the reaper, controls and audit, queries) that the
restructure issue (#17) does next; until then the lock order and the hot-path statements
stay where one reader can see them all.

Contract (every backend):
- ``claim_due_schedules`` takes rows whose ``due_at <= now`` and whose lease is free
  (``claimed_until IS NULL OR claimed_until < now``: a lease is not reclaimable *at*
  ``claimed_until``, only after), sets ``claimed_by``/``claimed_until`` and returns them.
  PostgreSQL selects with ``FOR UPDATE SKIP LOCKED``; SQLite serialises writers
  (``BEGIN IMMEDIATE``), so the same UPDATE is a compare-and-swap.
- ``dispatch_claimed`` inserts the run rows and advances the schedule in one transaction,
  fenced on the claim: a claim that expired and was taken over writes nothing. The UNIQUE
  (task_name, scheduled_for, attempt) constraint makes a second run of a tick impossible.
- ``finalize_runs`` is fenced on the run: only a row still ``running`` and owned by this
  instance is finished; a run already marked ``abandoned`` stays so.
- Times come from the caller's clock (the database clock in production), never from
  ``now()`` inside statements, so tests drive every boundary with an injected clock.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite

from scheduler_core import states
from scheduler_core.alarms import open_alarms
from scheduler_core.bulk import (
    PgStatement,
    array_literal,
    bulk_insert_returning,
    bulk_update,
    member_of,
    pg_any,
    pg_recordset,
    pg_value_rows,
)
from scheduler_core.db import driver_rows, select_rows
from scheduler_core.errors import RunLookupError, TaskLookupError
from scheduler_core.histograms import (
    DURATION_BUCKETS,
    START_DELAY_BUCKETS,
    HistogramCounts,
    bucket_index,
)
from scheduler_core.models import (
    DURATION_HISTOGRAM,
    START_DELAY_HISTOGRAM,
    UTCDateTime,
    alarm_events,
    audit_events,
    instances,
    schedules,
    task_health,
    task_runs,
)
from scheduler_core.pending_retries import PendingRetry, Retries, decode, encode, merge, take_due
from scheduler_core.planning import plan_ticks
from scheduler_core.retrying import retry_conflicts
from scheduler_core.tasks import TaskDefinition, definition_from_json

__all__ = [
    "HEALTH_ERROR_LIMIT",
    "ClaimedSchedule",
    "DispatchedRun",
    "RunOutcome",
    "Store",
    "SyncResult",
    "truncate_text",
]

log = logging.getLogger(__name__)

ERROR_MESSAGE_LIMIT = 2000
#: A health row's ``last_error_message`` (the run row keeps ``ERROR_MESSAGE_LIMIT``).
HEALTH_ERROR_LIMIT = 500
_SYNC_LOCK_KEY = 0x5C4ED_5C  # arbitrary, fixed: "schedctl task sync"
TRACEBACK_LIMIT = 8000


def truncate_text(text: str | None, limit: int) -> str | None:
    """Cut ``text`` to ``limit`` characters, marking the cut. NUL characters (which
    PostgreSQL text cannot hold: one would fail the whole batch's write) become ``\\x00``."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if len(text) <= limit:
        return text
    return text[: limit - 20] + f"... [{len(text) - limit + 20} more]"


@dataclass(frozen=True, kw_only=True)
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)  # not frozen: built per run; a frozen __init__ is ~4x slower
class ClaimedSchedule:
    """A schedule row this instance holds the lease on."""

    name: str
    definition_hash: str
    next_run_at: datetime | None
    retry_at: datetime | None
    retry_scheduled_for: datetime | None
    retry_attempt: int | None
    #: Pending retries after ``retry_at``'s (``pending_retries``); None in the common case.
    retries_queued: str | None
    run_now_requested_at: datetime | None
    claimed_until: datetime
    fire_count: int
    consecutive_failures: int


@dataclass(slots=True, kw_only=True)  # not frozen: built per run; a frozen __init__ is ~4x slower
class DispatchedRun:
    """A run row inserted as ``running``: the engine must execute and finalize it."""

    run_id: int
    task_name: str
    scheduled_for: datetime
    attempt: int
    trigger: str
    started_at: datetime
    definition: TaskDefinition
    consecutive_failures_at_start: int
    #: When to start it: its tick, retry or run-now time (after ``started_at`` when the
    #: engine claimed it ahead of time; see ``EngineSettings.look_ahead``).
    not_before: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class _Planned:
    """What a dispatch wrote: the run rows to start, and each schedule's advance."""

    inserted: list[tuple[Any, ...]]
    definitions: dict[str, TaskDefinition]
    updates: list[dict[str, Any]]
    not_before: dict[tuple[str, datetime, int], datetime]


@dataclass(slots=True, kw_only=True)  # not frozen: built per run; a frozen __init__ is ~4x slower
class RunOutcome:
    """How a run ended, ready to be written."""

    run_id: int
    task_name: str
    status: str
    scheduled_for: datetime
    attempt: int
    started_at: datetime
    finished_at: datetime
    error_message: str | None = None
    error_traceback: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    thread_name: str | None = None
    trace_id: str | None = None

    @property
    def duration_seconds(self) -> float:
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


@dataclass(frozen=True, kw_only=True)
class FinalizeResult:
    """What a finalize batch wrote: the accepted outcomes and per-task failure counts."""

    accepted: list[RunOutcome]
    rejected: list[RunOutcome]
    consecutive_failures: dict[str, int]
    retries_scheduled: dict[str, datetime]
    #: Tasks whose consecutive failures went from above zero back to zero in this batch.
    recovered: frozenset[str] = frozenset()


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    return (pg.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_COUNTER_COLUMN = {
    "success": "runs_success_total",
    "failure": "runs_failure_total",
    "timeout": "runs_timeout_total",
    "cancelled": "runs_cancelled_total",
    "abandoned": "runs_abandoned_total",
    "skipped": "runs_skipped_total",
}

_RUN_KEY = ("task_name", "scheduled_for", "attempt")
_NOT_RUNNING = (0, 0)
_NO_RETRIES = Retries(None)
#: How soon a due tick held by ``settle`` (see ``Store.claim_and_dispatch``) is looked at
#: again: the next pass.
_SETTLE_RECHECK = timedelta(milliseconds=50)

_EMPTY_HISTOGRAMS = {
    **DURATION_HISTOGRAM.values(HistogramCounts.empty(DURATION_BUCKETS)),
    **START_DELAY_HISTOGRAM.values(HistogramCounts.empty(START_DELAY_BUCKETS)),
}

#: The definition text is not among them: it is read only for a digest this process has not
#: parsed yet (``Store._learn_definitions``), not with every claim.
_CLAIM_COLUMNS = (
    schedules.c.name,
    schedules.c.definition_hash,
    schedules.c.next_run_at,
    schedules.c.retry_at,
    schedules.c.retry_scheduled_for,
    schedules.c.retry_attempt,
    schedules.c.retries_queued,
    schedules.c.run_now_requested_at,
    schedules.c.claimed_until,
    schedules.c.fire_count,
    schedules.c.consecutive_failures,
)


#: The statements every pass runs on PostgreSQL, built and compiled once (``PgStatement``).
_PG_CLAIM = PgStatement.of(
    sa.select(*_CLAIM_COLUMNS)
    .where(schedules.c.due_at <= sa.bindparam("horizon"))
    .where(
        sa.or_(schedules.c.claimed_until.is_(None), schedules.c.claimed_until < sa.bindparam("now"))
    )
    .order_by(schedules.c.due_at)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)
#: Per task: its in-flight runs, and how many of them other instances own.
_RUNNING_COLUMNS = (
    task_runs.c.task_name,
    sa.func.count(),
    sa.func.sum(sa.case((task_runs.c.instance_id == sa.bindparam("me"), 0), else_=1)),
)
_PG_RUNNING_COUNTS = PgStatement.of(
    sa.select(*_RUNNING_COLUMNS)
    .where(task_runs.c.status == "running")
    .where(pg_any(task_runs.c.task_name, "names"))
    .group_by(task_runs.c.task_name)
)
_PG_FINALIZE_FENCE = PgStatement.of(
    sa.select(task_runs.c.id)
    .where(pg_any(task_runs.c.id, "ids"))
    .where(task_runs.c.status == "running")
    .where(task_runs.c.instance_id == sa.bindparam("instance"))
    .with_for_update()
)
#: What a finalize reads (and locks) of each schedule row: its failures and pending retries.
_FAILURE_STATE_COLUMNS = (
    schedules.c.name,
    schedules.c.definition_hash,
    schedules.c.consecutive_failures,
    schedules.c.retry_at,
    schedules.c.retry_scheduled_for,
    schedules.c.retry_attempt,
    schedules.c.retries_queued,
)
_PG_FAILURE_STATE = PgStatement.of(
    sa.select(*_FAILURE_STATE_COLUMNS)
    .where(pg_any(schedules.c.name, "names"))
    .order_by(schedules.c.name)
    .with_for_update()
)
_PG_NEXT_DUE = PgStatement.of(sa.select(sa.func.min(schedules.c.due_at)))


def _claimed(r: Any) -> ClaimedSchedule:
    """A row of ``_CLAIM_COLUMNS`` (unpacked by position: thousands a second)."""
    (
        name,
        definition_hash,
        next_run_at,
        retry_at,
        retry_scheduled_for,
        retry_attempt,
        retries_queued,
        run_now_requested_at,
        claimed_until,
        fire_count,
        consecutive_failures,
    ) = r
    return ClaimedSchedule(
        name=name,
        definition_hash=definition_hash,
        next_run_at=next_run_at,
        retry_at=retry_at,
        retry_scheduled_for=retry_scheduled_for,
        retry_attempt=retry_attempt,
        retries_queued=retries_queued,
        run_now_requested_at=run_now_requested_at,
        claimed_until=claimed_until,
        fire_count=fire_count,
        consecutive_failures=consecutive_failures,
    )


_FINISH_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "id": task_runs.c.id.type,
    "status": task_runs.c.status.type,
    "started_at": task_runs.c.started_at.type,
    "finished_at": task_runs.c.finished_at.type,
    "duration": task_runs.c.duration_seconds.type,
    "error": task_runs.c.error_message.type,
    "traceback": task_runs.c.error_traceback.type,
    "exit_code": task_runs.c.exit_code.type,
    "pid": task_runs.c.pid.type,
    "thread": task_runs.c.thread_name.type,
    "trace_id": task_runs.c.trace_id.type,
}

#: Per finished run, what the schedule row's counters need: its bucket indices (None when
#: the run adds no observation), the observed values and the task's consecutive failures.
_TALLY_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "task": schedules.c.name.type,
    "status": task_runs.c.status.type,
    "db": sa.Integer(),
    "wb": sa.Integer(),
    "duration": task_runs.c.duration_seconds.type,
    "delay": task_runs.c.duration_seconds.type,
    "finished_at": task_runs.c.finished_at.type,
    "failures": schedules.c.consecutive_failures.type,
}


def _tally_sql(source: str, now: str) -> str:
    """``UPDATE scheduler_schedules`` adding one batch of finished runs, aggregated per task
    in SQL from ``source`` (rows named ``v`` with the columns of ``_TALLY_TYPES``): outcome
    counters, histogram buckets and sums go up by what the batch holds, so concurrent
    finalizers add to each other's counts instead of overwriting them."""
    aggregates = ["max(v.failures) AS failures"]
    sets = ["consecutive_failures = a.failures"]
    for status, column in _COUNTER_COLUMN.items():
        aggregates.append(f"count(*) FILTER (WHERE v.status = '{status}') AS {column}")
        sets.append(f"{column} = t.{column} + a.{column}")
    for histogram, index, value in (
        (DURATION_HISTOGRAM, "db", "duration"),
        (START_DELAY_HISTOGRAM, "wb", "delay"),
    ):
        for i, column in enumerate(histogram.buckets):
            aggregates.append(f"count(*) FILTER (WHERE v.{index} = {i}) AS {column}")
            sets.append(f"{column} = t.{column} + a.{column}")
        aggregates.append(
            f"COALESCE(sum(v.{value}) FILTER (WHERE v.{index} IS NOT NULL), 0) AS {histogram.sum}"
        )
        sets.append(f"{histogram.sum} = t.{histogram.sum} + a.{histogram.sum}")
    aggregates.append("max(v.finished_at) FILTER (WHERE v.status = 'success') AS last_success")
    aggregates.append(
        "max(v.finished_at) FILTER (WHERE v.status IN ('failure', 'timeout')) AS last_failure"
    )
    sets.append("last_success_at = COALESCE(a.last_success, t.last_success_at)")
    sets.append("last_failure_at = COALESCE(a.last_failure, t.last_failure_at)")
    sets.append(f"updated_at = {now}")
    return (
        f"UPDATE {schedules.name} AS t SET {', '.join(sets)} "
        f"FROM (SELECT v.task, {', '.join(aggregates)} FROM {source} GROUP BY v.task) AS a "
        "WHERE t.name = a.task"
    )


#: PostgreSQL: one JSON document per finalize batch (a row per run, encoded once) feeds
#: both statements: the run rows' finished fields and the schedules' counters.
_PG_FINISHED_TYPES = {**_FINISH_TYPES, **_TALLY_TYPES}
#: The order of ``_finished_record``'s values.
_FINISHED_NAMES = tuple(_PG_FINISHED_TYPES)
_PG_FINISHED_ROWS = pg_recordset(list(_PG_FINISHED_TYPES), _PG_FINISHED_TYPES)
_PG_FINISH_SQL = (
    f"UPDATE {task_runs.name} AS t SET status = v.status, started_at = v.started_at, "
    "finished_at = v.finished_at, duration_seconds = v.duration, error_message = v.error, "
    "error_traceback = v.traceback, exit_code = v.exit_code, pid = v.pid, "
    "thread_name = v.thread, trace_id = v.trace_id "
    f"FROM {_PG_FINISHED_ROWS} WHERE t.id = v.id"
)
_PG_TALLY_SQL = _tally_sql(_PG_FINISHED_ROWS, "%(now)s")
#: SQLite: the same aggregate over ``json_each``; timestamps travel in its stored text form.
_SQLITE_TALLY_SQL = sa.text(
    _tally_sql(
        "(SELECT "
        + ", ".join(f"json_extract(j.value, '$.{n}') AS {n}" for n in _TALLY_TYPES)
        + " FROM json_each(:rows) AS j) AS v",
        ":now",
    )
).bindparams(sa.bindparam("rows", type_=sa.Text()), sa.bindparam("now", type_=UTCDateTime()))


class Store:
    """SQL access for one scheduler instance (or an admin command)."""

    def __init__(self, engine: sa.Engine, *, instance_id: str = "cli") -> None:
        self.engine = engine
        self.instance_id = instance_id
        self.dialect = engine.dialect.name
        self.is_postgres = self.dialect == "postgresql"
        self._definitions: dict[str, TaskDefinition] = {}

    # ----------------------------------------------------------------- definitions
    def _learn_definitions(self, conn: sa.Connection, digests: Iterable[str]) -> None:
        """Parse the stored definitions of those ``digests`` this process has not seen."""
        known = self._definitions
        # Not ``set(known)``: that copies every digest (10,000 tasks) on each claim.
        unknown = sorted({d for d in digests if d not in known})
        for chunk in _chunks(unknown, 900):
            for digest, text in conn.execute(
                sa.select(schedules.c.definition_hash, schedules.c.definition)
                .where(member_of(self.dialect, schedules.c.definition_hash, chunk))
                .distinct()
            ):
                self.definition(digest, text)

    def definition(self, definition_hash: str, definition_json: str) -> TaskDefinition:
        """Parse a stored definition once per digest (callables resolve at run time)."""
        cached = self._definitions.get(definition_hash)
        if cached is None:
            cached = definition_from_json(definition_json)
            self._definitions[definition_hash] = cached
        return cached

    def sync_tasks(
        self, definitions: Sequence[TaskDefinition], *, now: datetime, disable_missing: bool = True
    ) -> SyncResult:
        """Make the schedule table match ``definitions``; counters and history are kept.

        A new task gets its first fire time; an edited one keeps its counters and gets a new
        fire time only if its schedule changed. Tasks no longer defined are disabled, not
        deleted, so their history and counters stay.
        """
        result = SyncResult()
        wanted = {d.name: d for d in definitions}
        # Serialise every definition once, before the transaction: with a large task file the
        # Python work must not sit inside it (PostgreSQL cuts idle-in-transaction sessions).
        for definition in definitions:
            self._definitions.setdefault(definition.digest(), definition)
        with self.engine.begin() as conn:
            if self.is_postgres:
                # Instances starting together with the same file sync one after the other;
                # SQLite's BEGIN IMMEDIATE already serialises them. The per-row work below is
                # in Python between statements, so this transaction may sit idle for a while.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SYNC_LOCK_KEY})
                conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
            existing = {
                row.name: row
                for row in conn.execute(
                    sa.select(
                        schedules.c.name,
                        schedules.c.definition,
                        schedules.c.definition_hash,
                        schedules.c.enabled,
                        schedules.c.paused,
                        schedules.c.next_run_at,
                    )
                )
            }
            inserts: list[dict[str, Any]] = []
            updates: list[tuple[str, dict[str, Any]]] = []
            for name, definition in wanted.items():
                row = existing.get(name)
                digest = definition.digest()
                if row is None:
                    inserts.append(self._new_schedule_row(definition, now))
                    result.created.append(name)
                    continue
                if row.definition_hash == digest and row.enabled == definition.policies.enabled:
                    result.unchanged.append(name)
                    continue
                old = json.loads(row.definition)
                new = definition.to_dict()
                schedule_keys = (
                    "cron",
                    "timezone",
                    "every",
                    "at",
                    "jitter",
                    "anchor",
                    "start",
                    "end",
                )
                schedule_changed = any(old.get(k) != new.get(k) for k in schedule_keys)
                values = self._definition_columns(definition)
                values["updated_at"] = now
                if schedule_changed or not row.enabled:
                    values["next_run_at"] = definition.first_fire_after(now)
                next_run = values.get("next_run_at", row.next_run_at)
                values["due_at"] = (
                    next_run if definition.policies.enabled and not row.paused else None
                )
                updates.append((name, values))
                result.updated.append(name)
            gone = (
                [n for n, row in existing.items() if n not in wanted and row.enabled]
                if disable_missing
                else []
            )
            if updates or gone:
                changed = [n for n, _v in updates] + gone
                for chunk in _chunks(sorted(changed), 900):
                    self._lock_schedules(conn, member_of(self.dialect, schedules.c.name, chunk))
            for name, values in updates:
                conn.execute(schedules.update().where(schedules.c.name == name).values(**values))
            for chunk in _chunks(inserts, 500):
                conn.execute(
                    _insert(conn, schedules).on_conflict_do_nothing(index_elements=["name"]),
                    list(chunk),
                )
            for chunk in _chunks(gone, 500):
                conn.execute(
                    schedules.update()
                    .where(schedules.c.name.in_(chunk))
                    .values(enabled=False, due_at=None, updated_at=now)
                )
            result.disabled.extend(gone)
        return result

    @staticmethod
    def _definition_columns(definition: TaskDefinition) -> dict[str, Any]:
        return {
            "definition": definition.to_json(),
            "definition_hash": definition.digest(),
            "schedule_type": definition.schedule.kind,
            "schedule_expr": definition.schedule.describe()[:300],
            "timezone": definition.timezone,
            "action_kind": definition.action.kind,
            "enabled": definition.policies.enabled,
            "max_runtime_seconds": definition.policies.max_runtime,
            "expected_interval_seconds": definition.schedule.expected_interval,
        }

    def _new_schedule_row(self, definition: TaskDefinition, now: datetime) -> dict[str, Any]:
        first = definition.first_fire_after(now)
        return {
            "name": definition.name,
            **self._definition_columns(definition),
            "paused": False,
            "next_run_at": first,
            "due_at": first if definition.policies.enabled else None,
            "fire_count": 0,
            "consecutive_failures": 0,
            **{column: 0 for column in _COUNTER_COLUMN.values()},
            "missed_runs_total": 0,
            **_EMPTY_HISTOGRAMS,
            "created_at": now,
            "updated_at": now,
        }

    # ----------------------------------------------------------------- claiming
    def next_due_at(self) -> datetime | None:
        """The earliest ``due_at`` of any schedule (the engine sleeps until then)."""
        with self.engine.connect() as conn:
            if self.is_postgres:
                found: datetime | None = _PG_NEXT_DUE.run(conn).scalar()
                return found
            value: datetime | None = conn.execute(
                sa.select(sa.func.min(schedules.c.due_at))
            ).scalar()
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def claim_due_schedules(
        self,
        *,
        now: datetime,
        limit: int,
        lease: timedelta,
        look_ahead: timedelta = timedelta(0),
    ) -> list[ClaimedSchedule]:
        """Claim up to ``limit`` schedules due by ``now + look_ahead`` with a lease until
        ``now + lease``."""
        if limit <= 0:
            return []
        until = now + lease
        candidates = (
            sa.select(schedules.c.name)
            .where(schedules.c.due_at <= now + look_ahead)
            .where(sa.or_(schedules.c.claimed_until.is_(None), schedules.c.claimed_until < now))
            .order_by(schedules.c.due_at)
            .limit(limit)
        )
        if self.is_postgres:
            candidates = candidates.with_for_update(skip_locked=True)
        stmt = (
            schedules.update()
            .where(schedules.c.name.in_(candidates.scalar_subquery()))
            # Re-checked in the UPDATE itself: on SQLite this is the compare-and-swap.
            .where(sa.or_(schedules.c.claimed_until.is_(None), schedules.c.claimed_until < now))
            .values(claimed_by=self.instance_id, claimed_until=until)
            .returning(*_CLAIM_COLUMNS)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(stmt).all()
        return [_claimed(r) for r in rows]

    def claim_and_dispatch(
        self,
        *,
        now: datetime,
        limit: int,
        lease: timedelta,
        thread_name: str | None = None,
        finished_unrecorded: Mapping[str, int] | None = None,
        look_ahead: timedelta = timedelta(0),
        settle: timedelta = timedelta(0),
    ) -> tuple[int, list[DispatchedRun]]:
        """Claim up to ``limit`` due schedules and dispatch them; returns how many were
        claimed and the runs to execute.

        On PostgreSQL this is one transaction: the due rows are locked with ``FOR UPDATE
        SKIP LOCKED`` (other instances skip them), planned, their run rows inserted and the
        schedules advanced before the commit releases the locks, so no lease needs writing
        and no fence re-reading (a crash before the commit leaves nothing behind). Rows
        another instance holds a lease on (``claimed_until`` in the future) are skipped, as
        in ``claim_due_schedules``. SQLite claims with the compare-and-swap and dispatches
        in a second transaction.

        ``look_ahead`` also takes what falls due within that time after ``now``; such runs
        come back with a later ``not_before`` (their tick), for the engine to start then.

        ``settle``: a due tick that overlap or ``max_concurrency`` would skip only because
        of runs other instances own is decided again shortly, until ``settle`` after its
        time: such a run may have finished with its outcome still waiting in its owner's
        batched finalize, and a tick is skipped only for a run still in flight.
        """
        horizon = now + look_ahead
        if not self.is_postgres or limit <= 0:
            claimed = self.claim_due_schedules(
                now=now, limit=limit, lease=lease, look_ahead=look_ahead
            )
            return len(claimed), self.dispatch_claimed(
                claimed,
                now=now,
                thread_name=thread_name,
                finished_unrecorded=finished_unrecorded,
                horizon=horizon,
                settle=settle,
            )
        with self.engine.begin() as conn:
            rows = driver_rows(_PG_CLAIM.run(conn, horizon=horizon, now=now, limit=limit))
            claimed = [_claimed(r) for r in rows]
            planned = self._dispatch_in(
                conn,
                claimed,
                now=now,
                thread_name=thread_name,
                finished_unrecorded=finished_unrecorded,
                fenced=False,
                horizon=horizon,
                settle=settle,
            )
        return len(claimed), self._dispatched(planned, claimed, now)

    def dispatch_claimed(
        self,
        claimed: Sequence[ClaimedSchedule],
        *,
        now: datetime,
        thread_name: str | None = None,
        rand: random.Random | None = None,
        finished_unrecorded: Mapping[str, int] | None = None,
        horizon: datetime | None = None,
        settle: timedelta = timedelta(0),
    ) -> list[DispatchedRun]:
        """Plan each claimed schedule's ticks, insert run/missed/skipped rows, advance it.

        One transaction for the whole batch. Only schedules whose claim is still ours
        (same ``claimed_by`` and ``claimed_until``) are touched. ``finished_unrecorded``
        counts, per task, this instance's runs that have finished but whose rows still read
        ``running`` (their outcome is written at the next finalize): overlap and
        concurrency limits do not count them as running.
        """
        if not claimed:
            return []
        by_name = {c.name: c for c in claimed}
        with self.engine.begin() as conn:
            fence = (
                sa.select(schedules.c.name, schedules.c.claimed_until)
                .where(member_of(self.dialect, schedules.c.name, list(by_name)))
                .where(schedules.c.claimed_by == self.instance_id)
            )
            if self.is_postgres:
                fence = fence.with_for_update()
            still_ours = {
                r.name
                for r in conn.execute(fence)
                if r.claimed_until == by_name[r.name].claimed_until
            }
            ours = [by_name[name] for name in sorted(still_ours)]
            planned = self._dispatch_in(
                conn,
                ours,
                now=now,
                thread_name=thread_name,
                finished_unrecorded=finished_unrecorded,
                fenced=True,
                horizon=horizon,
                settle=settle,
            )
        return self._dispatched(planned, claimed, now)

    def _dispatch_in(
        self,
        conn: sa.Connection,
        claimed: Sequence[ClaimedSchedule],
        *,
        now: datetime,
        thread_name: str | None,
        finished_unrecorded: Mapping[str, int] | None,
        fenced: bool,
        horizon: datetime | None = None,
        settle: timedelta = timedelta(0),
    ) -> _Planned:
        """Plan, insert and advance ``claimed`` (all ours) inside the caller's transaction.

        Ticks and retries due by ``horizon`` (``now`` if not given) are dispatched; those
        after ``now`` carry their time in ``not_before`` and the engine starts them then.
        A schedule whose not-yet-due tick would be skipped, or would replace a run (overlap),
        is left unchanged: it is decided when the tick is due, as without the look-ahead.
        """
        horizon = horizon or now
        not_before: dict[tuple[str, datetime, int], datetime] = {}
        by_name = {c.name: c for c in claimed}
        still_ours = list(by_name)
        running_counts = self._running_split(conn, still_ours)

        run_rows: list[dict[str, Any]] = []
        extra_rows: list[dict[str, Any]] = []  # missed / skipped: finished at once
        schedule_updates: list[dict[str, Any]] = []
        cancel_for_replace: list[str] = []
        #: Tasks with queued retries: what stays pending after this dispatch.
        requeued: dict[str, Retries] = {}
        missed_totals: dict[str, int] = defaultdict(int)
        skipped_totals: dict[str, int] = defaultdict(int)
        definitions: dict[str, TaskDefinition] = {}
        self._learn_definitions(conn, {c.definition_hash for c in claimed})
        unrecorded = finished_unrecorded or {}
        for name in sorted(still_ours):
            item = by_name[name]
            definition = self._definitions[item.definition_hash]
            definitions[name] = definition
            # (scheduled_for, attempt, trigger, not before)
            planned: list[tuple[datetime, int, str, datetime]] = []
            update: dict[str, Any] = {"b_name": name}
            if item.run_now_requested_at is not None and item.run_now_requested_at <= now:
                planned.append((item.run_now_requested_at, 1, "manual", now))
                update["run_now_requested_at"] = None
            still_pending: Retries | None = None
            if (
                item.retry_at is not None
                and item.retry_at <= horizon
                and item.retry_scheduled_for is not None
                and item.retry_attempt is not None
            ):
                if item.retries_queued is None:  # the common case: one pending retry
                    planned.append(
                        (item.retry_scheduled_for, item.retry_attempt, "retry", item.retry_at)
                    )
                else:
                    first = PendingRetry(
                        item.retry_at, item.retry_scheduled_for, item.retry_attempt
                    )
                    due, still_pending = take_due(
                        Retries(first, decode(item.retries_queued)), horizon
                    )
                    planned.extend((r.scheduled_for, r.attempt, "retry", r.at) for r in due)
                update.update(retry_at=None, retry_scheduled_for=None, retry_attempt=None)
            plan = plan_ticks(
                definition, next_run_at=item.next_run_at, fire_count=item.fire_count, now=horizon
            )
            for p in plan.runs:
                planned.append((p.scheduled_for, 1, "schedule", p.scheduled_for))
            policies = definition.policies
            overlap = policies.overlap
            # overlap=skip compares with runs already in flight: catch-up runs planned in
            # this same pass (misfire=run_all) do not skip each other. overlap=allow
            # counts every run against max_concurrency.
            running, others = running_counts.get(name, _NOT_RUNNING)
            if running:
                running = max(0, running - unrecorded.get(name, 0))
            limit = 1 if overlap == "skip" else policies.max_concurrency
            blocked = running > 0 if overlap == "replace" else running >= limit
            hold_until = None
            if blocked and any(p[3] > now for p in planned):
                # Decided when due: not claimable again before its first future start.
                hold_until = min(p[3] for p in planned if p[3] > now)
            elif (
                blocked
                and overlap != "replace"
                and running - others < limit
                and planned
                and now < min(p[3] for p in planned) + settle
            ):
                # Blocked only by other instances' runs, which may have finished with their
                # outcome not yet written (their owner writes it within its finalize
                # delay): decided again shortly, and skipped only if they still run then.
                hold_until = now + _SETTLE_RECHECK
            if hold_until is not None:
                schedule_updates.append(
                    {
                        "b_name": name,
                        "next_run_at": item.next_run_at,
                        "fire_count": item.fire_count,
                        "hold_until": hold_until,
                    }
                )
                continue
            update["next_run_at"] = plan.next_run_at
            update["fire_count"] = item.fire_count + len(plan.runs)
            if plan.missed is not None:
                missed_totals[name] += plan.missed.count
                extra_rows.append(
                    self._finished_row(
                        name,
                        plan.missed.first,
                        "missed",
                        now,
                        missed_count=plan.missed.count,
                        missed_first_at=plan.missed.first,
                        missed_last_at=plan.missed.last,
                        error_message=(
                            f"{plan.missed.count} tick(s) not run "
                            f"(misfire policy {definition.policies.misfire})"
                        ),
                    )
                )
            for scheduled_for, attempt, trigger, start_at in planned:
                if overlap == "replace" and running > 0:
                    cancel_for_replace.append(name)
                    running = 0
                if running >= limit and overlap != "replace":
                    skipped_totals[name] += 1
                    extra_rows.append(
                        self._finished_row(
                            name,
                            scheduled_for,
                            "skipped",
                            now,
                            attempt=attempt,
                            trigger=trigger,
                            error_message=(f"previous run still running (overlap={overlap})"),
                        )
                    )
                    continue
                if overlap != "skip":
                    running += 1
                not_before[(name, scheduled_for, attempt)] = start_at
                run_rows.append(
                    {
                        "task_name": name,
                        "scheduled_for": scheduled_for,
                        "attempt": attempt,
                        "trigger": trigger,
                        "consecutive_failures_at_start": item.consecutive_failures,
                    }
                )
            schedule_updates.append(update)
            if still_pending is not None:
                requeued[name] = still_pending

        if cancel_for_replace:
            conn.execute(
                task_runs.update()
                .where(member_of(self.dialect, task_runs.c.task_name, cancel_for_replace))
                .where(task_runs.c.status == "running")
                .values(
                    cancel_requested=True,
                    cancel_reason="replaced by a newer run (overlap=replace)",
                )
            )
        inserted = bulk_insert_returning(
            conn,
            task_runs,
            run_rows,
            conflict=_RUN_KEY,
            returning=("id", "task_name", "scheduled_for", "attempt", "trigger"),
            consts={
                "status": "running",
                "started_at": now,
                "instance_id": self.instance_id,
                "thread_name": thread_name,
                "cancel_requested": False,
            },
        )
        bulk_insert_returning(conn, task_runs, extra_rows, conflict=_RUN_KEY)
        if missed_totals:
            # Closed once the task succeeds again (``TelemetryWriter.check_alarms``).
            open_alarms(
                conn, "missed", {n: {"missed_runs": c} for n, c in missed_totals.items()}, now=now
            )
        self._apply_schedule_updates(
            conn, schedule_updates, missed_totals, skipped_totals, now, fenced=fenced
        )
        if requeued:
            self._write_retries(conn, requeued)
        return _Planned(
            inserted=inserted,
            definitions=definitions,
            updates=schedule_updates,
            not_before=not_before,
        )

    @staticmethod
    def _dispatched(
        planned: _Planned, claimed: Sequence[ClaimedSchedule], now: datetime
    ) -> list[DispatchedRun]:
        from scheduler_core.otel import otel_instruments

        otel_instruments().next_run.update(
            {u["b_name"]: u["next_run_at"] for u in planned.updates if u["next_run_at"]}
        )
        consec = {c.name: c.consecutive_failures for c in claimed}
        return [
            DispatchedRun(
                run_id=run_id,
                task_name=task_name,
                scheduled_for=scheduled_for,
                attempt=attempt,
                trigger=trigger,
                started_at=now,
                definition=planned.definitions[task_name],
                consecutive_failures_at_start=consec[task_name],
                not_before=planned.not_before.get((task_name, scheduled_for, attempt), now),
            )
            for run_id, task_name, scheduled_for, attempt, trigger in sorted(planned.inserted)
        ]

    def _finished_row(
        self, name: str, scheduled_for: datetime, status: str, now: datetime, **extra: Any
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "task_name": name,
            "scheduled_for": scheduled_for,
            "attempt": 1,
            "trigger": "schedule",
            "status": status,
            "started_at": None,
            "finished_at": now,
            "instance_id": self.instance_id,
            "cancel_requested": False,
            "missed_count": None,
            "missed_first_at": None,
            "missed_last_at": None,
            "error_message": None,
        }
        row.update(extra)
        return row

    def _running_split(self, conn: sa.Connection, names: list[str]) -> dict[str, tuple[int, int]]:
        """Per task of ``names``: (runs in flight, how many of them other instances own)."""
        if not names:
            return {}
        if self.is_postgres:
            rows = _PG_RUNNING_COUNTS.run(conn, names=array_literal(names), me=self.instance_id)
            return {name: (int(count), int(others)) for name, count, others in driver_rows(rows)}
        counts: dict[str, tuple[int, int]] = {}
        for chunk in _chunks(names, 900):
            stmt = (
                sa.select(*_RUNNING_COLUMNS)
                .where(task_runs.c.status == "running")
                .where(member_of(self.dialect, task_runs.c.task_name, chunk))
                .group_by(task_runs.c.task_name)
            )
            found = conn.execute(stmt, {"me": self.instance_id}).all()
            counts.update({r[0]: (int(r[1]), int(r[2])) for r in found})
        return counts

    def _apply_schedule_updates(
        self,
        conn: sa.Connection,
        updates: list[dict[str, Any]],
        missed: dict[str, int],
        skipped: dict[str, int],
        now: datetime,
        *,
        fenced: bool = True,
    ) -> None:
        """Advance each claimed schedule and release its claim: one statement per batch.

        ``fenced``: only rows whose lease is still this instance's are touched (after
        ``claim_due_schedules``); unfenced, the caller holds the rows locked instead.
        """
        if not updates:
            return
        retry = "CASE WHEN {clear_retry} THEN NULL ELSE t.retry_at END"
        run_now = "CASE WHEN {clear_run_now} THEN NULL ELSE t.run_now_requested_at END"
        inline_due = self.is_postgres  # LEAST skips NULLs there; SQLite's min() does not
        earliest = f"CASE WHEN t.enabled AND NOT t.paused THEN LEAST({{next_run_at}}, {retry}) END"
        due = {
            "due_at": f"CASE WHEN ({run_now}) IS NOT NULL "
            f"THEN LEAST({run_now}, {earliest}) ELSE {earliest} END"
        }
        rows = [
            {
                "name": u["b_name"],
                "next_run_at": u["next_run_at"],
                "fire_count": u["fire_count"],
                "clear_run_now": "run_now_requested_at" in u,
                "clear_retry": "retry_at" in u,
                "missed": missed.get(u["b_name"], 0),
                "skipped": skipped.get(u["b_name"], 0),
                "hold_until": u.get("hold_until"),
            }
            for u in updates
        ]
        bulk_update(
            conn,
            schedules,
            rows,
            types={
                "name": schedules.c.name.type,
                "next_run_at": schedules.c.next_run_at.type,
                "fire_count": schedules.c.fire_count.type,
                "clear_run_now": sa.Boolean(),
                "clear_retry": sa.Boolean(),
                "missed": sa.Integer(),
                "skipped": sa.Integer(),
                "hold_until": schedules.c.claimed_until.type,
            },
            consts={
                "now": (now, schedules.c.updated_at.type),
                **({"me": (self.instance_id, schedules.c.claimed_by.type)} if fenced else {}),
            },
            set_={
                "next_run_at": "{next_run_at}",
                "fire_count": "{fire_count}",
                "run_now_requested_at": run_now,
                "retry_at": retry,
                "retry_scheduled_for": (
                    "CASE WHEN {clear_retry} THEN NULL ELSE t.retry_scheduled_for END"
                ),
                "retry_attempt": "CASE WHEN {clear_retry} THEN NULL ELSE t.retry_attempt END",
                "missed_runs_total": "t.missed_runs_total + {missed}",
                "runs_skipped_total": "t.runs_skipped_total + {skipped}",
                "claimed_by": "NULL",
                "claimed_until": "{hold_until}",
                "updated_at": "{now}",
                **(due if inline_due else {}),
            },
            where="t.name = {name} AND t.claimed_by = {me}" if fenced else "t.name = {name}",
        )
        if not inline_due:
            self._refresh_due_at(conn, [u["b_name"] for u in updates])

    def _refresh_due_at(self, conn: sa.Connection, names: Sequence[str]) -> None:
        """``due_at`` = earliest of next run, retry and run-now; NULL when paused or disabled."""
        earliest = sa.case(
            (
                sa.and_(schedules.c.enabled, sa.not_(schedules.c.paused)),
                _least(schedules.c.next_run_at, schedules.c.retry_at),
            ),
            else_=None,
        )
        due = sa.case(
            (
                schedules.c.run_now_requested_at.is_not(None),
                _least(schedules.c.run_now_requested_at, earliest),
            ),
            else_=earliest,
        )
        for chunk in _chunks(list(names), 900):
            conn.execute(
                schedules.update()
                .where(member_of(self.dialect, schedules.c.name, chunk))
                .values(due_at=due)
            )

    # ----------------------------------------------------------------- finishing
    def finalize_runs(self, outcomes: Sequence[RunOutcome], *, now: datetime) -> FinalizeResult:
        """Write how runs ended and update the persisted counters, in one transaction.

        Only runs still ``running`` and owned by this instance are finished (fencing): a
        late completion of a run already reaped as ``abandoned`` is rejected. A failed
        attempt with retries left schedules the retry; only a tick's final failure counts
        toward ``consecutive_failures``.
        """
        if not outcomes:
            return FinalizeResult(
                accepted=[], rejected=[], consecutive_failures={}, retries_scheduled={}
            )
        by_id = {o.run_id: o for o in outcomes}
        with self.engine.begin() as conn:
            # Lock order (every writer): schedule rows in name order, then run rows.
            current = self._failure_state(conn, sorted({o.task_name for o in outcomes}))
            if self.is_postgres:
                ids = array_literal(list(by_id))
                live = set(
                    _PG_FINALIZE_FENCE.run(conn, ids=ids, instance=self.instance_id).scalars()
                )
            else:
                fence = (
                    sa.select(task_runs.c.id)
                    .where(member_of(self.dialect, task_runs.c.id, list(by_id)))
                    .where(task_runs.c.status == "running")
                    .where(task_runs.c.instance_id == self.instance_id)
                )
                live = set(conn.execute(fence).scalars().all())
            accepted = [o for o in outcomes if o.run_id in live]
            rejected = [o for o in outcomes if o.run_id not in live]
            consecutive, retries, recovered = self._decide_failures(conn, accepted, current, now)
            self._write_finished(conn, accepted, consecutive, now)
        return FinalizeResult(
            accepted=accepted,
            rejected=rejected,
            consecutive_failures=consecutive,
            retries_scheduled=retries,
            recovered=frozenset(recovered),
        )

    def _failure_state(
        self, conn: sa.Connection, names: Sequence[str]
    ) -> dict[str, tuple[str, int, Retries]]:
        """Per task of ``names``: (definition digest, consecutive failures, pending
        retries). On PostgreSQL the schedule rows are locked in name order until commit:
        the first lock a finalize takes, as every writer takes schedule rows before run
        rows."""
        if self.is_postgres:
            rows: Iterable[Any] = driver_rows(
                _PG_FAILURE_STATE.run(conn, names=array_literal(list(names)))
            )
        else:  # SQLite: the writer holds the whole database already
            rows = (
                row
                for chunk in _chunks(names, 900)
                for row in select_rows(
                    conn,
                    sa.select(*_FAILURE_STATE_COLUMNS).where(
                        member_of(self.dialect, schedules.c.name, chunk)
                    ),
                )
            )
        current: dict[str, tuple[str, int, Retries]] = {}
        for name, digest, failures, retry_at, retry_for, retry_attempt, queued in rows:
            pending = _NO_RETRIES
            if retry_at is not None and retry_for is not None and retry_attempt is not None:
                pending = Retries(PendingRetry(retry_at, retry_for, retry_attempt), decode(queued))
            current[name] = (digest, failures, pending)
        return current

    def _write_retries(self, conn: sa.Connection, pending: Mapping[str, Retries]) -> None:
        """Store each task's pending retries (the earliest in the ``retry_*`` columns) and
        its due time."""
        params: list[dict[str, Any]] = []
        for name, retries in sorted(pending.items()):
            first = retries.first
            params.append(
                {
                    "b_name": name,
                    "b_retry_at": first.at if first else None,
                    "b_for": first.scheduled_for if first else None,
                    "b_attempt": first.attempt if first else None,
                    "b_queued": encode(retries.queued),
                }
            )
        conn.execute(
            schedules.update()
            .where(schedules.c.name == sa.bindparam("b_name"))
            .values(
                retry_at=sa.bindparam("b_retry_at"),
                retry_scheduled_for=sa.bindparam("b_for"),
                retry_attempt=sa.bindparam("b_attempt"),
                retries_queued=sa.bindparam("b_queued"),
            ),
            params,
        )
        self._refresh_due_at(conn, [p["b_name"] for p in params])

    def _decide_failures(
        self,
        conn: sa.Connection,
        outcomes: Sequence[RunOutcome],
        current: Mapping[str, tuple[str, int, Retries]],
        now: datetime,
    ) -> tuple[dict[str, int], dict[str, datetime], set[str]]:
        """Each task's consecutive failures after ``outcomes``, the retries they schedule
        (written here; every failed attempt with attempts left gets its own) and the tasks
        that recovered; ``current`` is ``_failure_state``. Only a tick's final failure
        counts toward ``consecutive_failures``."""
        if not outcomes:
            return {}, {}, set()
        per_task: dict[str, list[RunOutcome]] = defaultdict(list)
        for o in outcomes:
            per_task[o.task_name].append(o)
        # The definition text only for digests this process has not parsed yet (rare).
        self._learn_definitions(conn, {digest for digest, _f, _r in current.values()})
        consecutive: dict[str, int] = {}
        recovered: set[str] = set()
        retries: dict[str, datetime] = {}
        pending: dict[str, Retries] = {}
        for name in sorted(per_task):
            row = current.get(name)
            if row is None:
                continue
            digest, stored_failures, retries_pending = row
            runs = per_task[name]
            if len(runs) > 1:
                runs = sorted(runs, key=_finished_at)
            failures = stored_failures
            new: list[PendingRetry] = []
            for o in runs:
                if o.status == "success":
                    failures = 0
                elif o.status in ("failure", "timeout"):
                    retry = self._definitions[digest].policies.retries
                    if o.attempt <= retry.max:
                        delay = retry.delay_before(o.attempt + 1, rand=random.random())
                        new.append(
                            PendingRetry(
                                now + timedelta(seconds=delay), o.scheduled_for, o.attempt + 1
                            )
                        )
                    else:
                        failures += 1
            if new:
                merged = merge(retries_pending, new)
                pending[name] = merged
                retries[name] = min(r.at for r in new)
            consecutive[name] = failures
            if stored_failures > 0 and failures == 0:
                recovered.add(name)
        if pending:
            self._write_retries(conn, pending)
        return consecutive, retries, recovered

    def _write_finished(
        self,
        conn: sa.Connection,
        outcomes: Sequence[RunOutcome],
        consecutive: Mapping[str, int],
        now: datetime,
    ) -> None:
        """Finish the run rows and add them to their schedules' counters and histograms.

        Python sends per run only its bucket indices and values; the database adds them up
        per task (``_tally_sql``), so the histograms are never read back or rewritten here.
        A task missing from ``consecutive`` (no schedule row) only gets its run rows written.
        """
        if not outcomes:
            return
        records = [_finished_record(o, consecutive) for o in outcomes]
        if self.is_postgres:
            params = {
                "rows": pg_value_rows(records, _FINISHED_NAMES, _PG_FINISHED_TYPES),
                "now": now,
            }
            conn.exec_driver_sql(_PG_FINISH_SQL, params)
            conn.exec_driver_sql(_PG_TALLY_SQL, params)
            return
        rows = [dict(zip(_FINISHED_NAMES, r, strict=True)) for r in records]
        bulk_update(
            conn,
            task_runs,
            [{n: row[n] for n in _FINISH_TYPES} for row in rows],
            types=_FINISH_TYPES,
            set_={
                "status": "{status}",
                # The real start (a run may wait in its instance's queue after dispatch).
                "started_at": "{started_at}",
                "finished_at": "{finished_at}",
                "duration_seconds": "{duration}",
                "error_message": "{error}",
                "error_traceback": "{traceback}",
                "exit_code": "{exit_code}",
                "pid": "{pid}",
                "thread_name": "{thread}",
                "trace_id": "{trace_id}",
            },
            where="t.id = {id}",
        )
        stored_time = _SQLITE_TIME.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        assert stored_time is not None
        tallies = [
            {n: stored_time(row[n]) if n == "finished_at" else row[n] for n in _TALLY_TYPES}
            for row in rows
        ]
        conn.execute(_SQLITE_TALLY_SQL, {"rows": json.dumps(tallies, allow_nan=False), "now": now})

    # ----------------------------------------------------------------- instances
    def register_instance(
        self,
        *,
        now: datetime,
        lease: timedelta,
        hostname: str,
        pid: int,
        version: str,
        running_runs: int | None = None,
    ) -> list[int]:
        """Upsert this instance as running.

        A process starting up (``running_runs`` None) reaps its own leftovers from a
        previous life under the same id: returns the ids of runs it found still ``running``
        and marked abandoned. A live process whose row was removed rejoins with its
        ``running_runs``, and its runs, claims and health rows stay as they are.
        """
        restarting = running_runs is None
        reaped: list[int] = []
        with self.engine.begin() as conn:
            if restarting:
                reaped = self._abandon_where(
                    conn,
                    (task_runs.c.status == "running")
                    & (task_runs.c.instance_id == self.instance_id),
                    now,
                    f"instance {self.instance_id} restarted while the run was in flight",
                )
                mine = self._lock_schedules(conn, schedules.c.claimed_by == self.instance_id)
                if mine:
                    conn.execute(
                        schedules.update()
                        .where(member_of(self.dialect, schedules.c.name, mine))
                        .values(claimed_by=None, claimed_until=None)
                    )
            values = {
                "hostname": hostname,
                "pid": pid,
                "started_at": now,
                "last_heartbeat_at": now,
                "lease_seconds": lease.total_seconds(),
                "state": "running",
                "version": version,
                "running_runs": running_runs or 0,
            }
            stmt = _insert(conn, instances).values(instance_id=self.instance_id, **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=["instance_id"], set_=values))
            if restarting:
                conn.execute(
                    task_health.update()
                    .where(task_health.c.instance_id == self.instance_id)
                    .values(is_running=False)
                )
        return reaped

    def heartbeat(
        self, *, now: datetime, running_runs: int, state: str = "running"
    ) -> list[tuple[int, str]]:
        """Renew this instance's heartbeat; return (run id, reason) of its runs to cancel.

        Raises LookupError when the instance row is gone (another host's admin removed it).
        """
        with self.engine.begin() as conn:
            result = conn.execute(
                instances.update()
                .where(instances.c.instance_id == self.instance_id)
                .values(last_heartbeat_at=now, running_runs=running_runs, state=state)
            )
            if result.rowcount == 0:
                raise LookupError(f"instance {self.instance_id!r} is not registered")
            conn.execute(
                task_health.update()
                .where(task_health.c.instance_id == self.instance_id)
                .where(task_health.c.is_running)
                .values(last_heartbeat_at=now)
            )
            cancel = conn.execute(
                sa.select(task_runs.c.id, task_runs.c.cancel_reason)
                .where(task_runs.c.status == "running")
                .where(task_runs.c.instance_id == self.instance_id)
                .where(task_runs.c.cancel_requested)
            )
            return [(r.id, r.cancel_reason or "cancel requested") for r in cancel]

    def set_instance_state(self, state: str, *, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                instances.update()
                .where(instances.c.instance_id == self.instance_id)
                .values(state=state, last_heartbeat_at=now)
            )

    def reap_abandoned(self, *, now: datetime) -> list[int]:
        """Mark ``abandoned`` the running rows of instances that stopped heartbeating.

        An instance is dead when ``last_heartbeat_at + lease_seconds < now``; a running row
        whose instance never registered is dead once it started more than the default lease
        ago. Each reaped run counts once in ``runs_abandoned_total``.
        """
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(
                    instances.c.instance_id,
                    instances.c.last_heartbeat_at,
                    instances.c.lease_seconds,
                ).where(instances.c.state != "stopped")
            ).all()
            stale = [
                r.instance_id
                for r in rows
                if r.instance_id != self.instance_id
                and r.last_heartbeat_at + timedelta(seconds=r.lease_seconds) < now
            ]
            known = sa.select(instances.c.instance_id).scalar_subquery()
            orphan = (
                (task_runs.c.status == "running")
                & task_runs.c.instance_id.not_in(known)
                & (task_runs.c.started_at < now - timedelta(seconds=60))
            )
            reaped = self._abandon_where(
                conn, orphan, now, "its instance never registered a heartbeat"
            )
            if stale:
                for chunk in _chunks(stale, 500):
                    reaped += self._abandon_where(
                        conn,
                        (task_runs.c.status == "running")
                        & task_runs.c.instance_id.in_(list(chunk)),
                        now,
                        "its instance stopped heartbeating past its lease",
                    )
                    conn.execute(
                        instances.update()
                        .where(instances.c.instance_id.in_(list(chunk)))
                        .values(running_runs=0)
                    )
                    conn.execute(
                        task_health.update()
                        .where(task_health.c.instance_id.in_(list(chunk)))
                        .values(is_running=False)
                    )
            return reaped

    def _lock_schedules(self, conn: sa.Connection, condition: sa.ColumnElement[bool]) -> list[str]:
        """The names of the schedule rows matching ``condition``, locked in name order on
        PostgreSQL (SQLite's writer already holds the database).

        The one lock order of every writer: schedule rows (in name order), then run rows.
        The claim takes schedule rows with SKIP LOCKED, so it never waits for one."""
        stmt = sa.select(schedules.c.name).where(condition).order_by(schedules.c.name)
        if self.is_postgres:
            stmt = stmt.with_for_update()
        return list(conn.execute(stmt).scalars())

    def _abandon_where(
        self, conn: sa.Connection, condition: sa.ColumnElement[bool], now: datetime, why: str
    ) -> list[int]:
        tasks = sa.select(task_runs.c.task_name).where(condition).distinct().scalar_subquery()
        self._lock_schedules(conn, schedules.c.name.in_(tasks))
        rows = conn.execute(
            task_runs.update()
            .where(condition)
            .values(
                status="abandoned",
                finished_at=now,
                error_message=f"abandoned: {why}",
            )
            .returning(
                task_runs.c.id,
                task_runs.c.task_name,
                task_runs.c.started_at,
                task_runs.c.instance_id,
            )
        ).all()
        if not rows:
            return []
        self._health_abandoned(conn, rows, now, f"abandoned: {why}")
        per_task: dict[str, int] = defaultdict(int)
        for r in rows:
            per_task[r.task_name] += 1
        conn.execute(
            schedules.update()
            .where(schedules.c.name == sa.bindparam("b_name"))
            .values(runs_abandoned_total=schedules.c.runs_abandoned_total + sa.bindparam("b_n")),
            [{"b_name": n, "b_n": c} for n, c in per_task.items()],
        )
        # How long an abandoned run ran is unknown: no duration (the reap time is no finish).
        conn.execute(
            task_runs.update()
            .where(task_runs.c.id.in_([r.id for r in rows]))
            .where(task_runs.c.started_at.is_not(None))
            .values(duration_seconds=None)
        )
        return [r.id for r in rows]

    def _health_abandoned(
        self, conn: sa.Connection, rows: Sequence[Any], now: datetime, message: str
    ) -> None:
        """The abandoned runs' outcome on their instances' health rows, as a finish would
        write it: the health rows are where the exporter reads each task's last finish and
        status, and the dead instance will not write them any more."""
        started: dict[tuple[str, str], datetime | None] = {}
        for r in rows:
            key = (r.task_name, r.instance_id)
            starts = [t for t in (started.get(key), r.started_at) if t is not None]
            started[key] = max(starts) if starts else None
        bulk_insert_returning(
            conn,
            task_health,
            [
                {"task_name": task, "instance_id": instance, "last_started_at": start}
                for (task, instance), start in sorted(started.items())
            ],
            conflict=("task_name", "instance_id"),
            update=(
                "last_finished_at",
                "last_duration_seconds",
                "last_status",
                "is_running",
                "last_error_message",
                "updated_at",
            ),
            latest=("last_started_at",),
            consts={
                # Only a row never written before takes these (the dead instance never
                # wrote the task's health): the exporter does not read them.
                "enabled": True,
                "schedule_type": "",
                "schedule_payload": "{}",
                "consecutive_failures": 0,
                "last_finished_at": now,
                "last_duration_seconds": None,
                "last_status": "abandoned",
                "is_running": False,
                "last_error_message": truncate_text(message, HEALTH_ERROR_LIMIT),
                "updated_at": now,
            },
        )

    # ----------------------------------------------------------------- controls
    def _require_task(self, conn: sa.Connection, name: str) -> Any:
        row = conn.execute(sa.select(schedules).where(schedules.c.name == name)).first()
        if row is None:
            raise TaskLookupError(name)
        return row

    def _audit(
        self,
        conn: sa.Connection,
        *,
        now: datetime,
        actor: str,
        action: str,
        task: str | None = None,
        run_id: int | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        conn.execute(
            audit_events.insert().values(
                at=now,
                actor=actor[:200],
                action=action,
                task_name=task,
                run_id=run_id,
                reason=truncate_text(reason, ERROR_MESSAGE_LIMIT),
                details=json.dumps(details, default=str) if details else None,
            )
        )

    @retry_conflicts()
    def pause(self, name: str, *, reason: str, by: str, now: datetime) -> None:
        """Pause a task: it is not claimed until resumed. Who, when and why are stored."""
        if not reason or not reason.strip():
            raise ValueError("a pause needs a --reason (shown to whoever finds the task paused)")
        with self.engine.begin() as conn:
            self._require_task(conn, name)
            self._audit(conn, now=now, actor=by, action="pause", task=name, reason=reason)
            conn.execute(
                schedules.update()
                .where(schedules.c.name == name)
                .values(
                    paused=True, pause_reason=reason, paused_at=now, paused_by=by, updated_at=now
                )
            )
            self._refresh_due_at(conn, [name])

    @retry_conflicts()
    def resume(self, name: str, *, now: datetime, by: str = "unknown") -> None:
        """Unpause; ticks that fell during the pause are not run or counted as missed."""
        with self.engine.begin() as conn:
            row = self._require_task(conn, name)
            self._audit(
                conn, now=now, actor=by, action="resume", task=name, reason=row.pause_reason
            )
            definition = self.definition(row.definition_hash, row.definition)
            values: dict[str, Any] = {
                "paused": False,
                "pause_reason": None,
                "paused_at": None,
                "paused_by": None,
                "updated_at": now,
            }
            if row.next_run_at is not None and row.next_run_at < now:
                values["next_run_at"] = definition.first_fire_after(now)
            conn.execute(schedules.update().where(schedules.c.name == name).values(**values))
            self._refresh_due_at(conn, [name])

    @retry_conflicts()
    def run_now(self, name: str, *, now: datetime, by: str = "unknown") -> None:
        """Ask for one extra run as soon as an instance polls; the schedule is unchanged."""
        with self.engine.begin() as conn:
            self._require_task(conn, name)
            self._audit(conn, now=now, actor=by, action="run-now", task=name)
            conn.execute(
                schedules.update()
                .where(schedules.c.name == name)
                .values(run_now_requested_at=now, updated_at=now)
            )
            self._refresh_due_at(conn, [name])

    @retry_conflicts()
    def request_cancel(
        self, run_id: int, *, reason: str, by: str = "unknown", now: datetime | None = None
    ) -> str:
        """Flag a running run for cancellation; its owner acts within one heartbeat.

        Returns the run's status (a finished run is left as it is). With ``now`` the request
        is also written to the audit log.
        """
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(task_runs.c.status, task_runs.c.task_name).where(task_runs.c.id == run_id)
            ).first()
            if row is None:
                raise RunLookupError(run_id)
            if row.status == "running":
                conn.execute(
                    task_runs.update()
                    .where(task_runs.c.id == run_id)
                    .values(cancel_requested=True, cancel_reason=reason)
                )
                if now is not None:
                    self._audit(
                        conn,
                        now=now,
                        actor=by,
                        action="cancel",
                        task=row.task_name,
                        run_id=run_id,
                        reason=reason,
                    )
            return str(row.status)

    EMERGENCY_PREFIX = "[emergency-stop] "

    @retry_conflicts()
    def emergency_stop(self, *, reason: str, by: str, now: datetime) -> tuple[int, int]:
        """Pause every task and flag every running run for cancellation.

        Returns (tasks paused, runs flagged). ``resume_all`` undoes the pauses it made; tasks
        already paused for another reason keep that pause and its reason.
        """
        if not reason or not reason.strip():
            raise ValueError("an emergency stop needs a --reason")
        with self.engine.begin() as conn:
            names = self._lock_schedules(conn, sa.not_(schedules.c.paused))
            paused = conn.execute(
                schedules.update()
                .where(member_of(self.dialect, schedules.c.name, names) if names else sa.false())
                .where(sa.not_(schedules.c.paused))
                .values(
                    paused=True,
                    pause_reason=self.EMERGENCY_PREFIX + reason,
                    paused_at=now,
                    paused_by=by,
                    due_at=None,
                    updated_at=now,
                )
            ).rowcount
            flagged = conn.execute(
                task_runs.update()
                .where(task_runs.c.status == "running")
                .where(sa.not_(task_runs.c.cancel_requested))
                .values(cancel_requested=True, cancel_reason=f"emergency stop by {by}: {reason}")
            ).rowcount
            self._audit(
                conn,
                now=now,
                actor=by,
                action="emergency-stop",
                reason=reason,
                details={"tasks_paused": paused, "runs_cancelled": flagged},
            )
        return int(paused or 0), int(flagged or 0)

    @retry_conflicts()
    def resume_all(self, *, by: str, now: datetime) -> tuple[int, int]:
        """Resume the tasks an emergency stop paused; return (resumed, still paused)."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(schedules.c.name, schedules.c.pause_reason).where(schedules.c.paused)
            ).all()
        names = [r.name for r in rows if (r.pause_reason or "").startswith(self.EMERGENCY_PREFIX)]
        for name in names:
            self.resume(name, now=now, by=by)
        with self.engine.begin() as conn:
            self._audit(
                conn, now=now, actor=by, action="resume-all", details={"tasks_resumed": len(names)}
            )
        return len(names), len(rows) - len(names)

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
            finished = sum(getattr(r, c) for s, c in _COUNTER_COLUMN.items() if s != "skipped")
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
                }
            )
        return out

    # ----------------------------------------------------------------- queries
    def list_tasks(
        self, *, now: datetime | None = None, late_grace: float | None = None
    ) -> list[dict[str, Any]]:
        """Every task with its schedule, next run, last run, failure count and status badge.

        The badge is the one ``/api/v1/status`` shows: :func:`scheduler_core.states.badge` of
        the same inputs, as of ``now`` (the wall clock by default), with the exporter's default
        late grace unless ``late_grace`` is given. On PostgreSQL the reads are one snapshot.
        """
        now = datetime.now(UTC) if now is None else now
        grace = states.LATE_GRACE_SECONDS if late_grace is None else late_grace
        with self.engine.connect() as conn:
            if self.is_postgres:
                conn = conn.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            rows = conn.execute(sa.select(schedules).order_by(schedules.c.name)).all()
            health = conn.execute(
                sa.select(
                    task_health.c.task_name,
                    sa.func.max(task_health.c.last_started_at).label("last_started_at"),
                    sa.func.max(task_health.c.last_finished_at).label("last_finished_at"),
                ).group_by(task_health.c.task_name)
            ).all()
            # The most recently finished row per task, across instances, whatever the order
            # the rows come in (the exporter's fold does the same).
            latest: dict[str, Any] = {}
            for r in conn.execute(
                sa.select(
                    task_health.c.task_name,
                    task_health.c.last_status,
                    task_health.c.last_duration_seconds,
                    task_health.c.last_finished_at,
                    task_health.c.last_error_message,
                ).where(task_health.c.last_finished_at.is_not(None))
            ):
                prev = latest.get(r.task_name)
                if prev is None or r.last_finished_at > prev.last_finished_at:
                    latest[r.task_name] = r
            starts = self._running_starts(conn)
        health_by = {h.task_name: h for h in health}
        out = []
        for r in rows:
            h = health_by.get(r.name)
            ls = latest.get(r.name)
            running_starts = starts.get(r.name, [])
            out.append(
                {
                    "name": r.name,
                    "schedule": r.schedule_expr,
                    "action": r.action_kind,
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
                    "badge": states.badge(
                        now=now,
                        enabled=bool(r.enabled),
                        paused=bool(r.paused),
                        running_starts=running_starts,
                        max_runtime_seconds=r.max_runtime_seconds,
                        next_run_at=r.next_run_at,
                        consecutive_failures=int(r.consecutive_failures or 0),
                        last_status=ls.last_status if ls else None,
                        late_grace_seconds=grace,
                    ),
                    "last_success_at": r.last_success_at,
                    "runs_total": sum(getattr(r, c) for c in _COUNTER_COLUMN.values()),
                    "missed_runs_total": r.missed_runs_total,
                }
            )
        return out

    @staticmethod
    def _running_starts(conn: sa.Connection) -> dict[str, list[datetime | None]]:
        """Per task: the ``started_at`` of each of its runs in flight, on any instance."""
        starts: dict[str, list[datetime | None]] = {}
        stmt = sa.select(task_runs.c.task_name, task_runs.c.started_at).where(
            task_runs.c.status == "running"
        )
        for name, started_at in conn.execute(stmt):
            starts.setdefault(name, []).append(started_at)
        return starts

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
            if (
                task is not None
                and conn.execute(
                    sa.select(schedules.c.name).where(schedules.c.name == task)
                ).first()
                is None
            ):
                raise TaskLookupError(task)
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def get_run(self, run_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(task_runs).where(task_runs.c.id == run_id)).first()
        if row is None:
            raise RunLookupError(run_id)
        return dict(row._mapping)

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


def _least(a: sa.ColumnElement[Any], b: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """The earlier of two nullable timestamps (NULL only when both are NULL)."""
    return sa.case(
        (a.is_(None), b),
        (b.is_(None), a),
        (a <= b, a),
        else_=b,
    )


_SQLITE_TIME = UTCDateTime()


def _finished_at(o: RunOutcome) -> datetime:
    return o.finished_at


def _finished_record(o: RunOutcome, consecutive: Mapping[str, int]) -> list[Any]:
    """A finished run as the values of ``_FINISHED_NAMES``: its row's finished fields and
    what it adds to its schedule's counters (a skipped run observes no duration, and only
    a tick's first attempt has a start delay). A list, not a dict: thousands a second."""
    duration = o.duration_seconds
    observed = o.status != "skipped"
    delay = (
        max(0.0, (o.started_at - o.scheduled_for).total_seconds())
        if observed and o.attempt == 1
        else None
    )
    return [
        o.run_id,
        o.status,
        o.started_at,
        o.finished_at,
        duration,
        truncate_text(o.error_message, ERROR_MESSAGE_LIMIT),
        truncate_text(o.error_traceback, TRACEBACK_LIMIT),
        o.exit_code,
        o.pid,
        o.thread_name,
        o.trace_id,
        o.task_name,
        bucket_index(DURATION_BUCKETS, duration) if observed else None,
        bucket_index(START_DELAY_BUCKETS, delay) if delay is not None else None,
        delay,
        consecutive.get(o.task_name),
    ]
