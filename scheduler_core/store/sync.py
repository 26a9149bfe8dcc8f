"""Definitions and sync: make the schedule table match a set of task definitions.

A new task gets its first fire time; an edited one keeps its counters and gets a new fire
time only if its schedule changed. Tasks no longer defined are disabled, not deleted, so
their history and counters stay. A sync is one source's (a task file, a module's ``@task``
functions): it never touches another source's tasks, and a name another source owns is
refused (``TaskConflictError``) before anything is written.

A first start with a large file: the new rows go to PostgreSQL by ``COPY`` (less than half
the time of one INSERT a row), and the expected intervals of many new cron tasks may be left
for just after start-up (``intervals_later``, then ``SyncPart.store_expected_intervals``):
two cron walks each, they were a third of such a start.
"""

from __future__ import annotations

import contextlib
import functools
import json
import operator
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler_core.alert_policy import AlertPolicy
from scheduler_core.bulk import member_of
from scheduler_core.errors import TaskConflictError
from scheduler_core.gc_pause import gc_paused
from scheduler_core.histograms import DURATION_BUCKETS, START_DELAY_BUCKETS, HistogramCounts
from scheduler_core.models import (
    DURATION_HISTOGRAM,
    START_DELAY_HISTOGRAM,
    audit_events,
    schedules,
)
from scheduler_core.store.base import StoreBase, chunks, upsert
from scheduler_core.store.records import OUTCOME_COUNTERS, SyncResult
from scheduler_core.tasks import TaskDefinition

__all__ = [
    "FILE_SOURCE",
    "LATER_INTERVALS_FROM",
    "SyncPart",
    "changed_values",
    "definition_columns",
    "insert_task_audited",
    "insert_tasks",
    "names_taken_as_conflict",
    "new_schedule_row",
    "new_schedule_rows",
    "owners_of",
    "result_totals",
]

#: The source of tasks synced from a task file.
FILE_SOURCE = "file"
#: A sync asked to (``intervals_later``) leaves the expected intervals of its new cron tasks
#: for later from this many on: fewer cost too little to be worth a second step.
LATER_INTERVALS_FROM = 500

_SYNC_LOCK_KEY = 0x5C4ED_5C  # arbitrary, fixed: "schedctl task sync"
#: The definition keys whose change gives a task a new fire time.
_SCHEDULE_KEYS = ("cron", "timezone", "every", "at", "jitter", "anchor", "start", "end")
_EMPTY_HISTOGRAMS = {
    **DURATION_HISTOGRAM.values(HistogramCounts.empty(DURATION_BUCKETS)),
    **START_DELAY_HISTOGRAM.values(HistogramCounts.empty(START_DELAY_BUCKETS)),
}


def definition_columns(definition: TaskDefinition, *, interval: bool = True) -> dict[str, Any]:
    """The schedule row's columns that come from the definition; without ``interval`` a cron
    task's expected interval is left NULL (stored later by ``store_expected_intervals``)."""
    schedule = definition.schedule
    return {
        "definition": definition.to_json(),
        "definition_hash": definition.digest(),
        "schedule_type": definition.schedule.kind,
        "schedule_expr": definition.schedule.describe()[:300],
        "timezone": definition.timezone,
        "action_kind": definition.action.kind,
        "enabled": definition.policies.enabled,
        "max_runtime_seconds": definition.policies.max_runtime,
        "expected_interval_seconds": (
            schedule.expected_interval if interval or schedule.kind != "cron" else None
        ),
        "alert_policy": _alerts_json(definition.policies.alerts),
    }


#: ``AlertPolicy.to_json`` per policy object, the object kept (an id is unique only while its
#: object lives): the tasks of a file share a few, and 10,000 rows made it 10,000 times.
_ALERTS_JSON: dict[int, tuple[AlertPolicy, str | None]] = {}


def _alerts_json(alerts: AlertPolicy) -> str | None:
    hit = _ALERTS_JSON.get(id(alerts))
    if hit is None or hit[0] is not alerts:
        if len(_ALERTS_JSON) >= 256:  # one-off policies (API tasks): keep it small
            _ALERTS_JSON.clear()
        hit = _ALERTS_JSON[id(alerts)] = (alerts, alerts.to_json())
    return hit[1]


def new_schedule_row(definition: TaskDefinition, now: datetime) -> dict[str, Any]:
    """A new task's schedule row: first fire time, zero counters and empty histograms."""
    return {**_schedule_row(definition, now, definition.first_fire_after(now)), **_NEW_TASK_ZEROS}


#: The columns every new task starts with at zero (and not paused).
_NEW_TASK_ZEROS: dict[str, Any] = {
    "paused": False,
    "fire_count": 0,
    "consecutive_failures": 0,
    **{column: 0 for column in OUTCOME_COUNTERS.values()},
    "missed_runs_total": 0,
    **_EMPTY_HISTOGRAMS,
}
#: The insert of new tasks with those zeros written into its SQL, not sent per row: a row
#: then binds ~18 values, not ~60, which keeps the statement within psycopg's parse cache
#: (50 parameters at most); parsing it again took 0.56 of a create's ~3 ms.
_NEW_TASK_LITERALS: dict[str, Any] = {
    column: sa.false() if value is False else sa.literal_column(str(value))
    for column, value in _NEW_TASK_ZEROS.items()
}
_NEW_TASK_INSERT = schedules.insert().values(_NEW_TASK_LITERALS)


def _schedule_row(
    definition: TaskDefinition, now: datetime, first: datetime | None, *, interval: bool = True
) -> dict[str, Any]:
    """A new task's row without the columns every new task has at zero (``_NEW_TASK_ZEROS``)."""
    return {
        "name": definition.name,
        **definition_columns(definition, interval=interval),
        "next_run_at": first,
        "due_at": first if definition.policies.enabled else None,
        "result_totals": result_totals(definition, None),
        "created_at": now,
        "updated_at": now,
    }


def _new_rows(
    definitions: Sequence[TaskDefinition], now: datetime, *, source: str, intervals: bool = True
) -> list[dict[str, Any]]:
    """New tasks' rows owned by ``source``, without the zero columns. Tasks with the same
    schedule and bounds share one first fire time: a cron walk costs ~0.06 ms, and a
    10,000-task file repeats its schedules (one per distinct schedule, not one per task)."""
    first_fires: dict[tuple[Any, ...], datetime | None] = {}
    rows = []
    for definition in definitions:
        key = (definition.schedule, definition.start, definition.end)
        if key not in first_fires:
            first_fires[key] = definition.first_fire_after(now)
        row = _schedule_row(definition, now, first_fires[key], interval=intervals)
        row["source"] = source
        rows.append(row)
    return rows


def new_schedule_rows(
    definitions: Sequence[TaskDefinition], now: datetime, *, source: str
) -> list[dict[str, Any]]:
    """New tasks' rows, owned by ``source``: first fire time, zero counters, empty histograms."""
    return [{**row, **_NEW_TASK_ZEROS} for row in _new_rows(definitions, now, source=source)]


def result_totals(definition: TaskDefinition, stored: str | None) -> str | None:
    """The ``result_totals`` of a task with ``definition``: the keys it declares, each at its
    stored total or 0 (so its counter starts at 0 and a key no longer declared goes)."""
    declared = definition.policies.output.result_metrics
    if not declared:
        return None
    current: dict[str, float] = json.loads(stored) if stored else {}
    return json.dumps({key: current.get(key, 0) for key in declared}, sort_keys=True)


def changed_values(definition: TaskDefinition, row: Any, now: datetime) -> dict[str, Any]:
    """The columns to write for an edited task whose stored row is ``row``."""
    old = json.loads(row.definition)
    new = definition.to_dict()
    values = definition_columns(definition)
    values["result_totals"] = result_totals(definition, row.result_totals)
    values["updated_at"] = now
    if any(old.get(k) != new.get(k) for k in _SCHEDULE_KEYS) or not row.enabled:
        values["next_run_at"] = definition.first_fire_after(now)
    next_run = values.get("next_run_at", row.next_run_at)
    values["due_at"] = next_run if definition.policies.enabled and not row.paused else None
    return values


def owners_of(conn: sa.Connection, names: Sequence[str]) -> dict[str, str]:
    """The source of each of ``names`` that has a schedule row."""
    found: dict[str, str] = {}
    for chunk in chunks(sorted(set(names)), 900):
        rows = conn.execute(
            sa.select(schedules.c.name, schedules.c.source).where(schedules.c.name.in_(chunk))
        )
        found.update({name: source for name, source in rows})
    return found


def insert_tasks(
    conn: sa.Connection,
    definitions: Sequence[TaskDefinition],
    *,
    now: datetime,
    source: str,
    skip_existing: bool = False,
    intervals: bool = True,
) -> list[dict[str, Any]]:
    """Insert new tasks owned by ``source``: the one path of a sync's new tasks and of
    ``add_tasks``, both by COPY from 100 rows on PostgreSQL. A name that exists already
    fails the statement (IntegrityError, which :func:`names_taken_as_conflict` turns into
    TaskConflictError naming the owner), unless ``skip_existing`` (a sync: another instance
    syncing the same file at the same moment may have inserted the row; its owner was
    checked under the sync lock). Without ``intervals``, cron tasks' expected intervals are
    left NULL. Returns the rows meant to be written."""
    with gc_paused():  # 10,000 new rows are ~1M objects, none of them garbage
        sent = _new_rows(definitions, now, source=source, intervals=intervals)
        # A taken name fails the COPY (its savepoint is rolled back); the INSERT then skips
        # it (a sync) or fails naming it (add_tasks).
        if not _copied(conn, sent):
            statement = _NEW_TASK_INSERT
            if skip_existing:
                statement = upsert(conn, schedules).values(_NEW_TASK_LITERALS)
                statement = statement.on_conflict_do_nothing(index_elements=["name"])
            for chunk in chunks(sent, 1000):
                conn.execute(statement, list(chunk))
        return [{**row, **_NEW_TASK_ZEROS} for row in sent]


def insert_task_audited(
    conn: sa.Connection,
    definition: TaskDefinition,
    *,
    now: datetime,
    source: str,
    audit: Mapping[str, Any],
) -> dict[str, Any]:
    """Insert one new task owned by ``source`` and its audit event (``audit``: the
    ``audit_events`` values but ``task_name``) in ONE statement: PostgreSQL's data-modifying
    ``WITH`` makes it atomic on an autocommit connection, one round trip where a transaction
    took five (BEGIN, two inserts sent as executemany, COMMIT; an admin-API create went from
    ~1.75 to ~1.1 ms of CPU). A name taken fails it as :func:`insert_tasks` does. Returns
    the row meant to be written, as :func:`insert_tasks` does."""
    [sent] = _new_rows([definition], now, source=source)
    audited = {f"audit_{column}": audit[column] for column in _AUDIT_COLUMNS}
    conn.execute(_audited_insert(tuple(sent)), {**sent, **audited})
    return {**sent, **_NEW_TASK_ZEROS}


@functools.cache
def _audited_insert(columns: tuple[str, ...]) -> sa.Insert:
    """The statement of :func:`insert_task_audited` for a row of ``columns``, built once
    (building it per create cost more than its round trips)."""
    new = (
        schedules.insert()
        .values({c: sa.bindparam(c, type_=schedules.c[c].type) for c in columns})
        .values(_NEW_TASK_LITERALS)
        .returning(schedules.c.name)
        .cte("new_task")
    )
    values = [sa.bindparam(f"audit_{c}", type_=audit_events.c[c].type) for c in _AUDIT_COLUMNS]
    return (
        audit_events.insert()
        .from_select([*_AUDIT_COLUMNS, "task_name"], sa.select(*values, new.c.name))
        .add_cte(new)
    )


#: The audit columns :func:`insert_task_audited` writes besides ``task_name``.
_AUDIT_COLUMNS = ("at", "actor", "action", "details")


#: From this many new rows a sync or ``add_tasks`` on PostgreSQL sends them by COPY.
_COPY_FROM = 100


def _copied(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> bool:
    """Write ``rows`` (and the zero columns) by PostgreSQL's ``COPY``, in a savepoint; True
    when done: 10,000 rows in ~0.45 s, against ~1.1 s for one INSERT a row (pipelined).
    False, nothing written, on SQLite, for a few rows, and when a name was taken (COPY has
    no ON CONFLICT: the caller's INSERT then skips it, or fails naming it)."""
    if conn.dialect.name != "postgresql" or len(rows) < _COPY_FROM:
        return False
    columns = [*rows[0], *_NEW_TASK_ZEROS]
    quote = conn.dialect.identifier_preparer.quote
    sql = f"COPY {quote(schedules.name)} ({', '.join(map(quote, columns))}) FROM STDIN"
    values = operator.itemgetter(*rows[0])
    zeros = tuple(_NEW_TASK_ZEROS.values())
    driver = conn.connection.driver_connection
    assert driver is not None  # a connection in use has its driver's
    try:
        with conn.begin_nested(), driver.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(values(row) + zeros)
    except conn.dialect.loaded_dbapi.IntegrityError:
        return False
    return True


@contextlib.contextmanager
def names_taken_as_conflict(
    engine: sa.Engine, names: Sequence[str], *, action: str
) -> Iterator[None]:
    """Around a transaction that inserts ``names``: when another writer took one of them
    first (a unique-key error), raise TaskConflictError naming its owner instead."""
    try:
        yield
    except sa.exc.IntegrityError:
        with engine.connect() as conn:
            taken = owners_of(conn, names)
        if taken:
            raise TaskConflictError(taken, action=action) from None
        raise


class SyncPart(StoreBase):
    """``sync_tasks``, ``store_expected_intervals``."""

    # long: one transaction, read, plan and write in order
    def sync_tasks(
        self,
        definitions: Sequence[TaskDefinition],
        *,
        now: datetime,
        source: str = FILE_SOURCE,
        disable_missing: bool = True,
        intervals_later: list[TaskDefinition] | None = None,
    ) -> SyncResult:
        """Make ``source``'s tasks match ``definitions``; counters and history are kept.

        With an ``intervals_later`` list, the expected intervals of new cron tasks, when
        there are at least ``LATER_INTERVALS_FROM``, are left NULL and their definitions
        added to it, with those of unchanged cron tasks whose interval a start left NULL and
        never stored (it stopped first): for :meth:`store_expected_intervals`."""
        result = SyncResult()
        wanted = {d.name: d for d in definitions}
        # Serialise every definition once, before the transaction: with a large task file the
        # Python work must not sit inside it (PostgreSQL cuts idle-in-transaction sessions).
        for definition in definitions:
            self.remember_definition(definition)
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
                        schedules.c.source,
                        schedules.c.result_totals,
                        schedules.c.expected_interval_seconds,
                    )
                )
            }
            taken = {n: r.source for n, r in existing.items() if n in wanted and r.source != source}
            if taken:
                raise TaskConflictError(taken, action=f"sync ({source})")
            inserts, updates = self._plan_sync(wanted, existing, now, result)
            gone = [
                n
                for n, row in existing.items()
                if disable_missing and n not in wanted and row.enabled and row.source == source
            ]
            self._write_sync(conn, updates, gone, now)
            new_cron = [d for d in inserts if d.schedule.kind == "cron"]
            defer = intervals_later is not None and len(new_cron) >= LATER_INTERVALS_FROM
            if intervals_later is not None:
                intervals_later.extend(new_cron if defer else [])
                intervals_later.extend(
                    wanted[n]
                    for n in result.unchanged
                    if existing[n].expected_interval_seconds is None
                    and wanted[n].schedule.kind == "cron"
                )
            insert_tasks(
                conn, inserts, now=now, source=source, skip_existing=True, intervals=not defer
            )
            result.disabled.extend(gone)
        return result

    def store_expected_intervals(
        self, definitions: Sequence[TaskDefinition], *, batch: int = 500
    ) -> int:
        """Store the expected interval of each of ``definitions`` whose row has none and still
        holds that definition (a sync's ``intervals_later``); a batch at a time, each in its
        own short transaction, computed before it. Returns how many were sent."""
        statement = (
            schedules.update()
            .where(
                schedules.c.name == sa.bindparam("task"),
                schedules.c.definition_hash == sa.bindparam("digest"),
                schedules.c.expected_interval_seconds.is_(None),
            )
            .values(expected_interval_seconds=sa.bindparam("interval"))
        )
        sent = 0
        for chunk in chunks(definitions, batch):
            values = [
                {"task": d.name, "digest": d.digest(), "interval": interval}
                for d in chunk
                if (interval := d.schedule.expected_interval) is not None
            ]
            if values:
                with self.engine.begin() as conn:
                    conn.execute(statement, values)
                sent += len(values)
        return sent

    @staticmethod
    def _plan_sync(
        wanted: Mapping[str, TaskDefinition],
        existing: Mapping[str, Any],
        now: datetime,
        result: SyncResult,
    ) -> tuple[list[TaskDefinition], list[tuple[str, dict[str, Any]]]]:
        """The new tasks and the (name, values) to update; noted in ``result``."""
        inserts: list[TaskDefinition] = []
        updates: list[tuple[str, dict[str, Any]]] = []
        for name, definition in wanted.items():
            row = existing.get(name)
            if row is None:
                inserts.append(definition)
                result.created.append(name)
            elif (
                row.definition_hash == definition.digest()
                and row.enabled == definition.policies.enabled
            ):
                result.unchanged.append(name)
            else:
                updates.append((name, changed_values(definition, row, now)))
                result.updated.append(name)
        return inserts, updates

    def _write_sync(
        self,
        conn: sa.Connection,
        updates: list[tuple[str, dict[str, Any]]],
        gone: list[str],
        now: datetime,
    ) -> None:
        if updates or gone:
            changed = [n for n, _v in updates] + gone
            for chunk in chunks(sorted(changed), 900):
                self.lock_schedules(conn, member_of(self.dialect, schedules.c.name, chunk))
        for name, values in updates:
            conn.execute(schedules.update().where(schedules.c.name == name).values(**values))
        for chunk in chunks(gone, 500):
            conn.execute(
                schedules.update()
                .where(schedules.c.name.in_(chunk))
                .values(enabled=False, due_at=None, updated_at=now)
            )
