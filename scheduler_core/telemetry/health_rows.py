"""The ``task_health`` rows of one instance: per task its latest start and outcome and
whether runs of it are in flight here. Written best-effort, in batches (finalize hot path)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler_core.bulk import bulk_insert_returning
from scheduler_core.models import task_health
from scheduler_core.store import (
    HEALTH_ERROR_LIMIT,
    DispatchedRun,
    FinalizeResult,
    RunOutcome,
    truncate_text,
)
from scheduler_core.telemetry.writes import BestEffortWriter

__all__ = ["HealthRows"]

#: Columns a start row updates on conflict.
START_COLUMNS = (
    "enabled",
    "schedule_type",
    "schedule_payload",
    "is_running",
    "last_heartbeat_at",
    "max_runtime_seconds",
    "updated_at",
)
#: Columns a finish row updates on conflict.
FINISH_COLUMNS = (
    "last_finished_at",
    "last_duration_seconds",
    "last_status",
    "is_running",
    "consecutive_failures",
    "last_error_message",
    "last_heartbeat_at",
    "updated_at",
)


class HealthRows:
    """Tracks this instance's runs in flight and writes their ``task_health`` rows."""

    def __init__(self, writer: BestEffortWriter, *, instance_id: str) -> None:
        self._writer = writer
        self.instance_id = instance_id
        self._running_per_task: dict[str, int] = {}
        #: Per task, the latest start not yet written:
        #: (monotonic time, run id, (the run, when its start was noted)).
        self._unwritten_starts: dict[str, tuple[float, int, tuple[DispatchedRun, datetime]]] = {}
        self._lock = threading.Lock()

    def _upsert(
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

        self._writer.write(what, work)

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
        self._upsert("health start", rows, START_COLUMNS)

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
    ) -> dict[str, RunOutcome]:
        """Write the health rows of a finalize batch: each task's latest outcome, its latest
        start and whether runs of it are still in flight here. Rejected outcomes (runs
        another instance already marked abandoned) are no longer in flight either.
        Returns each task's latest accepted outcome."""
        latest, started, still_running, idle_rejected = self._tally(result)
        if idle_rejected:
            self.mark_idle(idle_rejected, now=now)
        if not result.accepted:
            return latest
        failures = result.consecutive_failures
        rows = [
            finish_row(
                o,
                definitions.get(name),
                started_at=started[name],
                is_running=name in still_running,
                consecutive_failures=failures.get(name, 0),
            )
            for name, o in latest.items()
        ]
        self._upsert(
            "health finish",
            rows,
            FINISH_COLUMNS,
            consts={"instance_id": self.instance_id, "last_heartbeat_at": now, "updated_at": now},
        )
        return latest

    def _tally(
        self, result: FinalizeResult
    ) -> tuple[dict[str, RunOutcome], dict[str, datetime], set[str], list[str]]:
        """Count the batch's runs out of flight; per task its latest accepted outcome and
        latest start, the tasks still running here and the idle tasks of rejected runs."""
        latest: dict[str, RunOutcome] = {}
        started: dict[str, datetime] = {}
        running = self._running_per_task
        unwritten = self._unwritten_starts
        with self._lock:
            for batch, accepted in ((result.accepted, True), (result.rejected, False)):
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
        return latest, started, still_running, idle_rejected

    def mark_idle(self, names: Sequence[str], *, now: datetime) -> None:
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

        self._writer.write("health idle", work)


def finish_row(
    o: RunOutcome,
    d: Any,
    *,
    started_at: datetime,
    is_running: bool,
    consecutive_failures: int,
) -> dict[str, Any]:
    """The health row of a task's latest outcome (``d``: its definition, if known), without
    the batch's constants (instance, heartbeat and update times)."""
    return {
        "task_name": o.task_name,
        "enabled": True if d is None else d.policies.enabled,
        "schedule_type": "" if d is None else d.schedule.kind,
        "schedule_payload": "{}" if d is None else d.schedule_json(),
        "last_started_at": started_at,
        "last_finished_at": o.finished_at,
        "last_duration_seconds": o.duration_seconds,
        "last_status": o.status,
        "is_running": is_running,
        "consecutive_failures": consecutive_failures,
        "last_error_message": truncate_text(o.error_message, HEALTH_ERROR_LIMIT),
        "max_runtime_seconds": None if d is None else d.policies.max_runtime,
    }
