"""When alarm events open and close: consecutive failures (at the task's own
``alerts.failures`` where it sets one), ``missed`` alarms of tasks that have succeeded since,
stuck runs (the rule is scheduler_core.states.is_stuck), and the kinds of a task's ``alerts:``
policy (:data:`~scheduler_core.models.POLICY_ALARM_KINDS`: ``too_fast``, ``slow``,
``deadline_missed``, judged by the rules of scheduler_core.alert_policy in
:func:`policy_alarms`). The statement that opens an alarm row is
scheduler_core.alarms.open_alarms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler_core.alarms import open_alarms
from scheduler_core.alert_policy import (
    deadline_missed,
    latest_deadline,
    too_fast,
    too_slow,
    usual_duration,
)
from scheduler_core.models import POLICY_ALARM_KINDS, alarm_events, schedules, task_runs
from scheduler_core.states import is_stuck
from scheduler_core.store import HEALTH_ERROR_LIMIT, RunOutcome, truncate_text
from scheduler_core.store.alert_inputs import DeadlineSchedules, PolicyTask, read_policy_tasks
from scheduler_core.telemetry.otel import otel_instruments
from scheduler_core.telemetry.writes import BestEffortWriter

__all__ = ["AlarmRules", "policy_alarms"]


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
        self._deadlines = DeadlineSchedules()

    def update_failure_alarms(
        self,
        failures: dict[str, int],
        recovered: frozenset[str],
        latest: dict[str, RunOutcome],
        *,
        now: datetime,
        thresholds: Mapping[str, int] | None = None,
    ) -> None:
        """Open a ``consecutive_failures`` alarm for each task at its threshold (its own in
        ``thresholds``, the global ``failure_threshold`` otherwise); close those of the
        ``recovered`` tasks."""
        own = thresholds or {}
        default = self.failure_threshold
        to_open = [n for n, c in failures.items() if c >= own.get(n, default)]
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
                        "threshold": own.get(n, default),
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

    def check_policy_alarms(self, *, now: datetime) -> dict[str, set[str]]:
        """Open the :data:`~scheduler_core.models.POLICY_ALARM_KINDS` alarms whose condition
        holds (:func:`policy_alarms`) for the tasks with an ``alerts:`` policy; close those
        whose condition cleared, whose task lost its policy, or whose task is paused or
        disabled (such a task opens none: Prometheus would not page for it either).
        Returns ``{kind: tasks}`` of the alarms open after the check (empty when the check
        could not run). The rules are judged between two short transactions, the second
        only when an alarm opens or closes (on SQLite each holds the write lock)."""

        def _read(conn: sa.Connection) -> tuple[list[PolicyTask], list[tuple[str, str]]]:
            open_rows = conn.execute(
                sa.select(alarm_events.c.task_name, alarm_events.c.kind)
                .where(alarm_events.c.kind.in_(POLICY_ALARM_KINDS))
                .where(alarm_events.c.closed_at.is_(None))
            ).all()
            return read_policy_tasks(conn, self._deadlines), [(r[0], r[1]) for r in open_rows]

        read = self._writer.write("policy alarm check", _read)
        if read is None:
            return {}
        policy_tasks, open_rows = read
        found: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in POLICY_ALARM_KINDS}
        for task in policy_tasks:
            if task.enabled and not task.paused:
                for kind, details in policy_alarms(task, now=now).items():
                    found[kind][task.name] = details
        changes: list[tuple[str, dict[str, Any], list[str]]] = []
        for kind, holding in found.items():
            already = {name for name, k in open_rows if k == kind}
            new = {n: holding[n] for n in holding if n not in already}
            cleared = sorted(already - set(holding))
            if new or cleared:
                changes.append((kind, new, cleared))

        def _write(conn: sa.Connection) -> bool:
            for kind, new, cleared in changes:
                open_alarms(conn, kind, new, now=now)
                if cleared:
                    close_alarms(conn, kind, cleared, now=now)
            return True

        if changes and self._writer.write("policy alarm check", _write) is None:
            return {}
        return {kind: set(holding) for kind, holding in found.items()}


def policy_alarms(task: PolicyTask, *, now: datetime) -> dict[str, dict[str, Any]]:
    """The policy alarm kinds whose condition holds for ``task`` as of ``now``, each with
    its details (the threshold and what was observed), by the rules of
    :mod:`scheduler_core.alert_policy`. Pure: whether the task is paused is the caller's."""
    policy = task.policy
    found: dict[str, dict[str, Any]] = {}
    last = task.last_duration_seconds
    if too_fast(policy=policy, last_status=task.last_status, last_duration=last):
        found["too_fast"] = {"duration_seconds": last, "threshold_seconds": policy.min_duration}
    usual = usual_duration(task.duration) if policy.slower_than_usual is not None else None
    if last is not None and too_slow(policy=policy, last_duration=last, usual=usual):
        slow: dict[str, Any] = {"duration_seconds": last}
        if policy.max_duration is not None and last > policy.max_duration:
            slow["threshold_seconds"] = policy.max_duration  # max_duration, the bound crossed
        elif policy.slower_than_usual is not None and usual is not None:
            slow["threshold_seconds"] = policy.slower_than_usual * usual
        if policy.slower_than_usual is not None and usual is not None:
            slow["slower_than_usual"] = policy.slower_than_usual
            slow["usual_seconds"] = usual
        found["slow"] = slow
    deadline = policy.deadline
    if (
        deadline is not None
        and task.schedule is not None
        and deadline_missed(
            deadline=deadline, schedule=task.schedule, timezone=task.timezone, now=now,
            last_success_at=task.last_success_at, created_at=task.created_at,
        )
    ):  # fmt: skip
        found["deadline_missed"] = {
            "deadline": deadline.at.isoformat(timespec="seconds"),
            "timezone": deadline.timezone or task.timezone,
            "due_at": latest_deadline(deadline, now=now, timezone=task.timezone).isoformat(),
            "last_success_at": task.last_success_at.isoformat() if task.last_success_at else None,
        }
    return found


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
