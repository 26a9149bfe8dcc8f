"""Finalize: write how runs ended, with the retry rule's decision and the counters.

Fenced on the run: only a row still ``running`` and owned by this instance is finished; a
run already marked ``abandoned`` stays so. ``scheduler_core.retries`` decides retries and
consecutive failures; the outcome counters and histograms are added up in SQL per task, so
concurrent finalizers add to each other's counts instead of overwriting them.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler_core import retries
from scheduler_core.bulk import (
    PgStatement,
    array_literal,
    bulk_update,
    member_of,
    pg_any,
    pg_recordset,
    pg_value_rows,
)
from scheduler_core.db import driver_rows, select_rows
from scheduler_core.histograms import DURATION_BUCKETS, START_DELAY_BUCKETS, bucket_index
from scheduler_core.models import (
    DURATION_HISTOGRAM,
    START_DELAY_HISTOGRAM,
    UTCDateTime,
    schedules,
    task_runs,
)
from scheduler_core.pending_retries import PendingRetry, Retries, decode, merge
from scheduler_core.store.base import StoreBase, chunks
from scheduler_core.store.outputs import add_result_totals, write_outputs
from scheduler_core.store.records import (
    ERROR_MESSAGE_LIMIT,
    OUTCOME_COUNTERS,
    TRACEBACK_LIMIT,
    FinalizeResult,
    RunOutcome,
    truncate_text,
)

__all__ = ["FinalizePart"]

_NO_RETRIES = Retries(None)

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
    "duration_bucket": sa.Integer(),
    "delay_bucket": sa.Integer(),
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
    for status, column in OUTCOME_COUNTERS.items():
        aggregates.append(f"count(*) FILTER (WHERE v.status = '{status}') AS {column}")
        sets.append(f"{column} = t.{column} + a.{column}")
    for histogram, index, value in (
        (DURATION_HISTOGRAM, "duration_bucket", "duration"),
        (START_DELAY_HISTOGRAM, "delay_bucket", "delay"),
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


_SQLITE_TIME = UTCDateTime()


class FinalizePart(StoreBase):
    """``finalize_runs``."""

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
            consecutive, scheduled, recovered = self._decide_failures(conn, accepted, current, now)
            self._write_finished(conn, accepted, consecutive, now)
            write_outputs(conn, accepted, now=now)
            add_result_totals(conn, accepted)
        return FinalizeResult(
            accepted=accepted,
            rejected=rejected,
            consecutive_failures=consecutive,
            retries_scheduled=scheduled,
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
                for chunk in chunks(names, 900)
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

    def _decide_failures(
        self,
        conn: sa.Connection,
        outcomes: Sequence[RunOutcome],
        current: Mapping[str, tuple[str, int, Retries]],
        now: datetime,
    ) -> tuple[dict[str, int], dict[str, datetime], set[str]]:
        """Each task's consecutive failures after ``outcomes``, the retries they schedule
        (written here) and the tasks that recovered, by ``scheduler_core.retries.decide``;
        ``current`` is ``_failure_state``."""
        if not outcomes:
            return {}, {}, set()
        per_task: dict[str, list[RunOutcome]] = defaultdict(list)
        for o in outcomes:
            per_task[o.task_name].append(o)
        # The definition text only for digests this process has not parsed yet (rare).
        definitions = self.learn_definitions(
            conn, {digest: name for name, (digest, _f, _r) in current.items()}
        )
        consecutive: dict[str, int] = {}
        recovered: set[str] = set()
        scheduled: dict[str, datetime] = {}
        pending: dict[str, Retries] = {}
        for name in sorted(per_task):
            row = current.get(name)
            if row is None:
                continue
            digest, stored_failures, retries_pending = row
            state = retries.decide(
                per_task[name],
                stored_failures=stored_failures,
                policy=definitions[digest].policies.retries,
                now=now,
                rand=random.random,
            )
            if state.new_retries:
                pending[name] = merge(retries_pending, state.new_retries)
                scheduled[name] = min(r.at for r in state.new_retries)
            consecutive[name] = state.consecutive_failures
            if state.recovered:
                recovered.add(name)
        if pending:
            self.write_retries(conn, pending)
        return consecutive, scheduled, recovered

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
