"""Dispatch: write what admission decided for a batch of claimed schedules.

Inside the claim's transaction (``claims``): per schedule, ``scheduler_core.admission``
decides; this module inserts the run rows to start and the finished missed/skipped rows,
asks replaced runs to stop, and advances each schedule and releases its claim, in a few
statements for the whole batch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scheduler_core.admission import Admission, admit
from scheduler_core.alarms import open_alarms
from scheduler_core.bulk import (
    PgStatement,
    array_literal,
    bulk_insert_returning,
    bulk_update,
    member_of,
    pg_any,
)
from scheduler_core.db import driver_rows
from scheduler_core.models import schedules, task_runs
from scheduler_core.pending_retries import Retries
from scheduler_core.store.base import StoreBase, chunks
from scheduler_core.store.records import ClaimedSchedule, DispatchedRun
from scheduler_core.tasks import TaskDefinition

__all__ = ["Dispatch", "DispatchPart"]

_RUN_KEY = ("task_name", "scheduled_for", "attempt")
_NOT_RUNNING = (0, 0)

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

#: The types of one schedule's advance (``DispatchPart.advance_schedules``).
_ADVANCE_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "name": schedules.c.name.type,
    "next_run_at": schedules.c.next_run_at.type,
    "fire_count": schedules.c.fire_count.type,
    "clear_run_now": sa.Boolean(),
    "clear_retry": sa.Boolean(),
    "missed": sa.Integer(),
    "skipped": sa.Integer(),
    "hold_until": schedules.c.claimed_until.type,
}


@dataclass(kw_only=True)
class Dispatch:
    """What one dispatch writes: run rows to start, finished rows, schedule advances."""

    definitions: dict[str, TaskDefinition] = field(default_factory=dict)
    #: Runs with arguments of their own (JSON, as stored in ``scheduler_task_runs.arguments``)
    #: by (task, tick, attempt): a run-now with arguments, and the retries of such a run.
    arguments: dict[tuple[str, datetime, int], str] = field(default_factory=dict)
    #: Retries to start, by (task, tick, attempt): they take their previous attempt's
    #: arguments (read in ``_write``, rare: only passes that start retries read them).
    retries: list[tuple[str, datetime, int]] = field(default_factory=list)
    #: One row of ``_ADVANCE_TYPES`` per schedule.
    advances: list[dict[str, Any]] = field(default_factory=list)
    not_before: dict[tuple[str, datetime, int], datetime] = field(default_factory=dict)
    run_rows: list[dict[str, Any]] = field(default_factory=list)
    #: missed / skipped: finished at once.
    finished_rows: list[dict[str, Any]] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)
    #: Tasks with queued retries: what stays pending after this dispatch.
    requeued: dict[str, Retries] = field(default_factory=dict)
    missed: dict[str, int] = field(default_factory=dict)
    inserted: list[tuple[Any, ...]] = field(default_factory=list)


def _advance(
    name: str, next_run_at: datetime | None, fire_count: int, **flags: Any
) -> dict[str, Any]:
    row = {
        "name": name,
        "next_run_at": next_run_at,
        "fire_count": fire_count,
        "clear_run_now": False,
        "clear_retry": False,
        "missed": 0,
        "skipped": 0,
        "hold_until": None,
    }
    row.update(flags)
    return row


def _with_arguments(definition: TaskDefinition, arguments: str | None) -> TaskDefinition:
    """``definition`` calling its callable with a run's own ``arguments`` (JSON), if any."""
    if arguments is None:
        return definition
    own = json.loads(arguments)
    return definition.with_arguments(own.get("args"), own.get("kwargs"))


def _previous_arguments(
    conn: sa.Connection, retries: Sequence[tuple[str, datetime, int]]
) -> dict[tuple[str, datetime, int], str]:
    """The arguments of each retry's previous attempt, for those that had their own."""
    found: dict[tuple[str, datetime, int], str] = {}
    wanted = set(retries)
    ticks = sorted({tick for _name, tick, _attempt in retries})
    for chunk in chunks(sorted({name for name, _tick, _attempt in retries}), 400):
        rows = conn.execute(
            sa.select(
                task_runs.c.task_name,
                task_runs.c.scheduled_for,
                task_runs.c.attempt,
                task_runs.c.arguments,
            ).where(
                task_runs.c.task_name.in_(chunk),
                task_runs.c.scheduled_for.in_(ticks[:400]) if len(ticks) <= 400 else sa.true(),
                task_runs.c.arguments.is_not(None),
                task_runs.c.status != "running",
            )
        )
        for name, tick, attempt, arguments in rows:
            key = (name, tick, attempt + 1)
            if key in wanted:
                found[key] = arguments
    return found


def _write_arguments(conn: sa.Connection, batch: Dispatch) -> None:
    """Store the arguments of the runs just inserted that have their own."""
    for run_id, task_name, scheduled_for, attempt, _trigger in batch.inserted:
        arguments = batch.arguments.get((task_name, scheduled_for, attempt))
        if arguments is not None:
            conn.execute(
                task_runs.update().where(task_runs.c.id == run_id).values(arguments=arguments)
            )


class DispatchPart(StoreBase):
    """Admission decisions turned into rows (used by ``ClaimsPart``)."""

    def dispatch_in(
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
    ) -> Dispatch:
        """Decide, insert and advance ``claimed`` (all ours) inside the caller's transaction.

        Work due by ``horizon`` (``now`` if not given) is dispatched; runs after ``now`` carry
        their time in ``not_before`` and the engine starts them then. ``finished_unrecorded``
        counts, per task, this instance's runs that have finished but whose rows still read
        ``running``: admission does not count them as in flight.
        """
        horizon = horizon or now
        by_name = {c.name: c for c in claimed}
        running_counts = self._running_split(conn, list(by_name))
        definitions = self.learn_definitions(conn, {c.definition_hash: c.name for c in claimed})
        unrecorded = finished_unrecorded or {}
        batch = Dispatch()
        for name in sorted(by_name):
            item = by_name[name]
            definition = definitions[item.definition_hash]
            batch.definitions[name] = definition
            running, others = running_counts.get(name, _NOT_RUNNING)
            if running:
                running = max(0, running - unrecorded.get(name, 0))
            decision = admit(
                item,
                definition,
                now=now,
                horizon=horizon,
                settle=settle,
                running=running,
                others=others,
            )
            self._record(batch, item, definition, decision, now)
        self._write(conn, batch, now=now, thread_name=thread_name, fenced=fenced)
        return batch

    def _record(
        self,
        batch: Dispatch,
        item: ClaimedSchedule,
        definition: TaskDefinition,
        decision: Admission,
        now: datetime,
    ) -> None:
        """Add one schedule's decision to ``batch``."""
        name = item.name
        if decision.hold_until is not None:
            batch.advances.append(
                _advance(name, item.next_run_at, item.fire_count, hold_until=decision.hold_until)
            )
            return
        missed = decision.missed
        self._record_not_run(batch, name, definition, decision, now)
        if decision.cancel_running:
            batch.replace.append(name)
        for start in decision.runs:
            if start.trigger == "manual" and item.run_now_overrides:
                batch.arguments[(name, start.scheduled_for, 1)] = item.run_now_overrides
            elif start.trigger == "retry":
                batch.retries.append((name, start.scheduled_for, start.attempt))
            batch.not_before[(name, start.scheduled_for, start.attempt)] = start.start_at
            batch.run_rows.append(
                {
                    "task_name": name,
                    "scheduled_for": start.scheduled_for,
                    "attempt": start.attempt,
                    "trigger": start.trigger,
                    "consecutive_failures_at_start": item.consecutive_failures,
                }
            )
        batch.advances.append(
            _advance(
                name,
                decision.next_run_at,
                decision.fire_count,
                clear_run_now=decision.run_now_taken,
                clear_retry=decision.retries_taken,
                hold_until=decision.recheck_at,
                missed=missed.count if missed is not None else 0,
                skipped=len(decision.skipped),
            )
        )
        if decision.retries_left is not None:
            batch.requeued[name] = decision.retries_left

    def _record_not_run(
        self,
        batch: Dispatch,
        name: str,
        definition: TaskDefinition,
        decision: Admission,
        now: datetime,
    ) -> None:
        """The finished rows of ``decision``'s missed ticks and skipped runs."""
        missed = decision.missed
        if missed is not None:
            batch.missed[name] = missed.count
            batch.finished_rows.append(
                self._finished_row(
                    name,
                    missed.first,
                    "missed",
                    now,
                    missed_count=missed.count,
                    missed_first_at=missed.first,
                    missed_last_at=missed.last,
                    error_message=(
                        f"{missed.count} tick(s) not run "
                        f"(misfire policy {definition.policies.misfire})"
                    ),
                )
            )
        for start in decision.skipped:
            batch.finished_rows.append(
                self._finished_row(
                    name,
                    start.scheduled_for,
                    "skipped",
                    now,
                    attempt=start.attempt,
                    trigger=start.trigger,
                    error_message=(
                        f"previous run still running (overlap={definition.policies.overlap})"
                    ),
                )
            )

    def _write(
        self,
        conn: sa.Connection,
        batch: Dispatch,
        *,
        now: datetime,
        thread_name: str | None,
        fenced: bool,
    ) -> None:
        if batch.replace:
            conn.execute(
                task_runs.update()
                .where(member_of(self.dialect, task_runs.c.task_name, batch.replace))
                .where(task_runs.c.status == "running")
                .values(
                    cancel_requested=True, cancel_reason="replaced by a newer run (overlap=replace)"
                )
            )
        batch.inserted = bulk_insert_returning(
            conn,
            task_runs,
            batch.run_rows,
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
        bulk_insert_returning(conn, task_runs, batch.finished_rows, conflict=_RUN_KEY)
        if batch.retries:
            batch.arguments.update(_previous_arguments(conn, batch.retries))
        if batch.arguments:
            _write_arguments(conn, batch)
        if batch.missed:
            # Closed once the task succeeds again (``TelemetryWriter.check_alarms``).
            open_alarms(
                conn, "missed", {n: {"missed_runs": c} for n, c in batch.missed.items()}, now=now
            )
        self.advance_schedules(conn, batch.advances, now, fenced=fenced)
        if batch.requeued:
            self.write_retries(conn, batch.requeued)

    def dispatched(
        self, batch: Dispatch, claimed: Sequence[ClaimedSchedule], now: datetime
    ) -> list[DispatchedRun]:
        """The runs to execute of a written ``batch``; tells ``on_next_runs`` the advances."""
        if self.on_next_runs is not None:
            self.on_next_runs(
                {u["name"]: u["next_run_at"] for u in batch.advances if u["next_run_at"]}
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
                definition=_with_arguments(
                    batch.definitions[task_name],
                    batch.arguments.get((task_name, scheduled_for, attempt)),
                ),
                consecutive_failures_at_start=consec[task_name],
                not_before=batch.not_before.get((task_name, scheduled_for, attempt), now),
            )
            for run_id, task_name, scheduled_for, attempt, trigger in sorted(batch.inserted)
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
        for chunk in chunks(names, 900):
            stmt = (
                sa.select(*_RUNNING_COLUMNS)
                .where(task_runs.c.status == "running")
                .where(member_of(self.dialect, task_runs.c.task_name, chunk))
                .group_by(task_runs.c.task_name)
            )
            found = conn.execute(stmt, {"me": self.instance_id}).all()
            counts.update({r[0]: (int(r[1]), int(r[2])) for r in found})
        return counts

    def advance_schedules(
        self, conn: sa.Connection, rows: list[dict[str, Any]], now: datetime, *, fenced: bool = True
    ) -> None:
        """Advance each claimed schedule and release its claim: one statement per batch.

        ``fenced``: only rows whose lease is still this instance's are touched (after
        ``claim_due_schedules``); unfenced, the caller holds the rows locked instead. A held
        schedule (``hold_until``) keeps its lease columns set to the hold: not claimable
        before then.
        """
        if not rows:
            return
        retry = "CASE WHEN {clear_retry} THEN NULL ELSE t.retry_at END"
        run_now = "CASE WHEN {clear_run_now} THEN NULL ELSE t.run_now_requested_at END"
        inline_due = self.is_postgres  # LEAST skips NULLs there; SQLite's min() does not
        earliest = f"CASE WHEN t.enabled AND NOT t.paused THEN LEAST({{next_run_at}}, {retry}) END"
        due = {
            "due_at": f"CASE WHEN ({run_now}) IS NOT NULL "
            f"THEN LEAST({run_now}, {earliest}) ELSE {earliest} END"
        }
        bulk_update(
            conn,
            schedules,
            rows,
            types=_ADVANCE_TYPES,
            consts={
                "now": (now, schedules.c.updated_at.type),
                **({"me": (self.instance_id, schedules.c.claimed_by.type)} if fenced else {}),
            },
            set_={
                "next_run_at": "{next_run_at}",
                "fire_count": "{fire_count}",
                "run_now_requested_at": run_now,
                "run_now_overrides": (
                    "CASE WHEN {clear_run_now} THEN NULL ELSE t.run_now_overrides END"
                ),
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
            self.refresh_due_at(conn, [u["name"] for u in rows])
