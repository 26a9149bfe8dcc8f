"""When alarm events open and close: consecutive failures, ``missed`` alarms of tasks
that have succeeded since, and stuck runs (the rule is scheduler_core.states.is_stuck).
The statement that opens an alarm row is scheduler_core.alarms.open_alarms."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from scheduler_core.alarms import open_alarms
from scheduler_core.models import alarm_events, schedules, task_runs
from scheduler_core.states import is_stuck
from scheduler_core.store import HEALTH_ERROR_LIMIT, RunOutcome, truncate_text
from scheduler_core.telemetry.otel import otel_instruments
from scheduler_core.telemetry.writes import BestEffortWriter

__all__ = ["AlarmRules"]


def close_alarms(conn: sa.Connection, kind: str, names: Sequence[str], *, now: datetime) -> None:
    """Close the open alarms of ``kind`` of the tasks ``names``."""
    conn.execute(
        alarm_events.update()
        .where(alarm_events.c.task_name.in_(names))
        .where(alarm_events.c.kind == kind)
        .where(alarm_events.c.closed_at.is_(None))
        .values(closed_at=now)
    )


class AlarmRules:
    """Opens and closes this instance's alarm events, best-effort."""

    def __init__(self, writer: BestEffortWriter, *, failure_threshold: int) -> None:
        self._writer = writer
        self.failure_threshold = failure_threshold

    def update_failure_alarms(
        self,
        failures: dict[str, int],
        recovered: frozenset[str],
        latest: dict[str, RunOutcome],
        *,
        now: datetime,
    ) -> None:
        """Open a ``consecutive_failures`` alarm for each task at the threshold; close
        those of the ``recovered`` tasks."""
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
                close_alarms(conn, "consecutive_failures", to_close, now=now)
            return True

        self._writer.write("alarms", _work)

    def close_recovered_missed(self, *, now: datetime) -> None:
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

        self._writer.write("missed alarms", work)

    def check_stuck(self, *, now: datetime) -> set[str]:
        """Open a ``stuck`` alarm for each task with a run past ``max_runtime``; close cleared ones.

        Returns the names of stuck tasks (empty when the check could not run).
        """
        stuck: set[str] = set()

        def _work(conn: sa.Connection) -> bool:
            stuck.update(stuck_tasks(conn, now=now))
            open_rows = conn.execute(
                sa.select(alarm_events.c.task_name)
                .where(alarm_events.c.kind == "stuck")
                .where(alarm_events.c.closed_at.is_(None))
            ).all()
            already = {r.task_name for r in open_rows}
            open_alarms(conn, "stuck", dict.fromkeys(stuck - already), now=now)
            cleared = sorted(already - stuck)
            if cleared:
                close_alarms(conn, "stuck", cleared, now=now)
            return True

        if self._writer.write("stuck check", _work) is None:
            return set()
        instruments = otel_instruments()
        instruments.stuck.clear()
        instruments.stuck.update(dict.fromkeys(stuck, 1))
        return stuck


def stuck_tasks(conn: sa.Connection, *, now: datetime) -> set[str]:
    """The tasks with a run in flight past their ``max_runtime``."""
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
    # The oldest run in flight decides: the one rule (scheduler_core.states).
    return {
        r.task_name
        for r in rows
        if is_stuck(now=now, running_starts=(r.oldest,), max_runtime_seconds=r.max_runtime_seconds)
    }
