"""What every part of the store shares: the engine, this instance's id, the parsed
definitions, and the building blocks used inside a caller's transaction (the row-lock order,
``due_at``, pending retries). The PostgreSQL/SQLite differences these need are here too.

The one lock order of every writer: schedule rows (in name order), then run rows. The claim
takes schedule rows with SKIP LOCKED, so it never waits for one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite

from scheduler_core.bulk import member_of
from scheduler_core.config import definition_from_json
from scheduler_core.models import schedules
from scheduler_core.pending_retries import Retries, encode
from scheduler_core.tasks import TaskDefinition

__all__ = [
    "DEFINITION_CACHE_LIMIT",
    "ONE_TIME_CACHE_LIMIT",
    "StoreBase",
    "chunks",
    "least",
    "upsert",
]

#: Parsed definitions of recurring tasks one store keeps (by digest): more than any fleet
#: we measure (100,000).
DEFINITION_CACHE_LIMIT = 200_000
#: Parsed one-time definitions one store keeps, apart: each is used by its run's dispatch
#: and finalize, about a second apart, then not again. Every kept definition is objects the
#: cyclic garbage collector walks at each full collection, which stops every thread: with
#: the 100,000 one-time tasks of a minute kept, those pauses reached 276 ms (issue 18's
#: start delays); this many are five seconds at 1,000 one-time runs a second.
ONE_TIME_CACHE_LIMIT = 5_000


def upsert(conn: sa.Connection, table: sa.Table) -> Any:
    """An INSERT that takes ``on_conflict_do_*`` on either backend."""
    return (pg.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """``items`` in slices of ``size`` (SQLite binds at most 999 parameters a statement)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def least(a: sa.ColumnElement[Any], b: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """The earlier of two nullable timestamps (NULL only when both are NULL)."""
    return sa.case(
        (a.is_(None), b),
        (b.is_(None), a),
        (a <= b, a),
        else_=b,
    )


class StoreBase:
    """SQL access for one scheduler instance (or an admin command): the shared state."""

    def __init__(self, engine: sa.Engine, *, instance_id: str = "cli") -> None:
        self.engine = engine
        self.instance_id = instance_id
        self.dialect = engine.dialect.name
        self.is_postgres = self.dialect == "postgresql"
        self._definitions: dict[str, TaskDefinition] = {}
        self._one_time: dict[str, TaskDefinition] = {}
        #: Called with each dispatch's advanced ``next_run_at`` per task (the runtime feeds
        #: its OpenTelemetry gauge with it); the store itself exports nothing.
        self.on_next_runs: Callable[[Mapping[str, datetime]], None] | None = None

    # ----------------------------------------------------------------- definitions
    def learn_definitions(
        self, conn: sa.Connection, names_by_digest: Mapping[str, str]
    ) -> dict[str, TaskDefinition]:
        """The definitions of those digests, parsed once per process: each one not seen yet is
        read from the row of one task that has it (``names_by_digest``: digest -> a name).

        By name, the primary key: a lookup by digest (not indexed) scanned the whole table,
        96 ms a claim at 100,000 one-time tasks, each of them new to the claimer.
        """
        known, once = self._definitions, self._one_time
        found: dict[str, TaskDefinition] = {}
        unknown: list[str] = []
        for digest, name in names_by_digest.items():
            cached = known.get(digest) or once.get(digest)
            if cached is None:
                unknown.append(name)
            else:
                found[digest] = cached
        for chunk in chunks(sorted(unknown), 900):
            for digest, text in conn.execute(
                sa.select(schedules.c.definition_hash, schedules.c.definition).where(
                    member_of(self.dialect, schedules.c.name, chunk)
                )
            ):
                found[digest] = self.definition(digest, text)
        return found

    def definition(self, definition_hash: str, definition_json: str) -> TaskDefinition:
        """Parse a stored definition once per digest (callables resolve at run time)."""
        cached = self._definitions.get(definition_hash) or self._one_time.get(definition_hash)
        if cached is None:
            cached = definition_from_json(definition_json)
            self._remember(definition_hash, cached)
        return cached

    def remember_definition(self, definition: TaskDefinition) -> None:
        """Cache a definition this process has in hand (a sync's)."""
        digest = definition.digest()
        if digest not in self._definitions and digest not in self._one_time:
            self._remember(digest, definition)

    def _remember(self, digest: str, definition: TaskDefinition) -> None:
        """Cache ``definition``; past its cache's limit (``DEFINITION_CACHE_LIMIT``, or
        ``ONE_TIME_CACHE_LIMIT`` for a one-time task's) the older half goes (each use
        re-learns what it needs by name): one-time tasks are each a new definition, and an
        instance running a million of them a day must not keep them all."""
        if definition.one_time:
            cache, limit = self._one_time, ONE_TIME_CACHE_LIMIT
        else:
            cache, limit = self._definitions, DEFINITION_CACHE_LIMIT
        if len(cache) >= limit:
            for old in list(itertools.islice(cache, len(cache) // 2)):
                del cache[old]
        cache[digest] = definition

    # ----------------------------------------------------------------- in a transaction
    def lock_schedules(self, conn: sa.Connection, condition: sa.ColumnElement[bool]) -> list[str]:
        """The names of the schedule rows matching ``condition``, locked in name order on
        PostgreSQL (SQLite's writer already holds the database)."""
        stmt = sa.select(schedules.c.name).where(condition).order_by(schedules.c.name)
        if self.is_postgres:
            stmt = stmt.with_for_update()
        return list(conn.execute(stmt).scalars())

    def refresh_due_at(self, conn: sa.Connection, names: Sequence[str]) -> None:
        """``due_at`` = earliest of next run, retry and run-now; NULL when paused or disabled."""
        earliest = sa.case(
            (
                sa.and_(schedules.c.enabled, sa.not_(schedules.c.paused)),
                least(schedules.c.next_run_at, schedules.c.retry_at),
            ),
            else_=None,
        )
        due = sa.case(
            (
                schedules.c.run_now_requested_at.is_not(None),
                least(schedules.c.run_now_requested_at, earliest),
            ),
            else_=earliest,
        )
        for chunk in chunks(list(names), 900):
            conn.execute(
                schedules.update()
                .where(member_of(self.dialect, schedules.c.name, chunk))
                .values(due_at=due)
            )

    def write_retries(self, conn: sa.Connection, pending: Mapping[str, Retries]) -> None:
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
        self.refresh_due_at(conn, [p["b_name"] for p in params])
