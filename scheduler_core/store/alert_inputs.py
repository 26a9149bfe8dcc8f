"""What the per-task alert rules read: the stored ``alerts:`` policy and, for a task with a
deadline, its schedule; read-only.

The policy is the schedule row's ``alert_policy`` (JSON, NULL for a task without one), parsed
once per distinct text (:func:`stored_policy`). A deadline is judged against the task's
ticks, so it needs the task's :class:`~scheduler_core.schedules.Schedule`: rebuilt from the
stored definition once per definition digest and kept by :class:`DeadlineSchedules`, which the
exporter's snapshot and the scheduler's policy alarm check each hold across their reads.
Tasks without a policy cost nothing here: the rows read are the ones where it is set.

:func:`read_policy_tasks` is the policy alarm check's read (``check_policy_alarms`` in
``scheduler_core.telemetry.alarm_rules``): every task with a policy, with what the rules of
:mod:`scheduler_core.alert_policy` judge, the way the snapshot reads it (the latest finished
run of the per-instance health rows, the persisted duration histogram).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler_core.alert_policy import AlertPolicy, deadline_missed
from scheduler_core.bulk import member_of
from scheduler_core.config import definition_from_json
from scheduler_core.db import select_rows
from scheduler_core.errors import ConfigError
from scheduler_core.histograms import HistogramCounts
from scheduler_core.models import DURATION_HISTOGRAM, TERMINAL_STATUSES, schedules, task_health
from scheduler_core.schedules import Schedule

__all__ = [
    "DeadlineSchedules",
    "PolicyTask",
    "judge_deadline",
    "read_policy_tasks",
    "stored_policy",
]

_S = schedules.c
_H = task_health.c


@functools.lru_cache(maxsize=4096)
def stored_policy(text: str | None) -> AlertPolicy | None:
    """The policy of a schedule row's ``alert_policy`` (None for NULL), parsed once per text:
    a fleet shares a handful of policies, and a frozen value is safe to share."""
    return AlertPolicy.from_json(text)


class DeadlineSchedules:
    """The schedules of tasks with a deadline, by definition digest, rebuilt from the stored
    definition once and kept while some read uses them. One per reader; not thread-safe.

    A read asks :meth:`get` for each digest it needs, :meth:`learn` the ones missing (one
    SELECT of their definitions, by name), then :meth:`keep_used` forgets the rest, so an
    edited or removed task's schedule does not stay.
    """

    def __init__(self) -> None:
        self._known: dict[str, Schedule | None] = {}
        self._used: dict[str, Schedule | None] = {}

    def get(self, digest: str) -> tuple[bool, Schedule | None]:
        """(known, schedule) of ``digest``: unknown ones need :meth:`learn`; a known None
        is a definition that could not be parsed (its deadline is not judged)."""
        if digest in self._used:
            return True, self._used[digest]
        if digest in self._known:
            schedule = self._used[digest] = self._known[digest]
            return True, schedule
        return False, None

    def learn(self, conn: sa.Connection, names_by_digest: Mapping[str, str]) -> None:
        """Parse the stored definitions of those digests (digest -> the name of a task
        that has it), read by name (the primary key)."""
        names = sorted(set(names_by_digest.values()))
        for start in range(0, len(names), 900):
            chunk = names[start : start + 900]
            stmt = sa.select(_S.definition_hash, _S.definition).where(
                member_of(conn.dialect.name, _S.name, chunk)
            )
            for digest, text in conn.execute(stmt):
                self._used[digest] = _schedule_of(text)

    def keep_used(self) -> None:
        """End a read: keep only the schedules it asked for."""
        self._known, self._used = self._used, {}


def _schedule_of(definition_json: str) -> Schedule | None:
    try:
        return definition_from_json(definition_json).schedule
    except (ConfigError, ValueError, KeyError, TypeError):
        return None  # not judged, rather than failing a whole refresh


def judge_deadline(
    policy: AlertPolicy | None,
    schedule: Schedule | None,
    *,
    timezone: str,
    now: datetime,
    last_success_at: datetime | None,
    created_at: datetime | None,
) -> bool | None:
    """Whether the deadline of ``policy`` was missed as of ``now``
    (:func:`scheduler_core.alert_policy.deadline_missed`); None when it cannot be judged (no
    deadline, or a stored definition that did not parse, so no ``schedule``)."""
    if policy is None or policy.deadline is None or schedule is None:
        return None
    return deadline_missed(
        deadline=policy.deadline, schedule=schedule, timezone=timezone, now=now,
        last_success_at=last_success_at, created_at=created_at,
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicyTask:
    """One task with an alert policy, as its policy alarms judge it."""

    name: str
    policy: AlertPolicy
    enabled: bool
    paused: bool
    #: The task's time zone (the schedule row's): a deadline without one of its own is in it.
    timezone: str
    created_at: datetime | None
    last_success_at: datetime | None
    #: The status and duration of the run that finished last, on any instance.
    last_status: str | None
    last_duration_seconds: float | None
    duration: HistogramCounts
    #: None when the policy has no deadline (or the definition could not be parsed).
    schedule: Schedule | None


def read_policy_tasks(conn: sa.Connection, deadlines: DeadlineSchedules) -> list[PolicyTask]:
    """Every task whose ``alert_policy`` is set, in name order, with its latest finished
    run: two SELECTs (three when a deadline's definition is new to ``deadlines``)."""
    with_policy = _S.alert_policy.is_not(None)
    rows = list(
        select_rows(
            conn,
            sa.select(
                _S.name, _S.alert_policy, _S.enabled, _S.paused, _S.timezone, _S.created_at,
                _S.last_success_at, _S.definition_hash,
                *(_S[c] for c in (*DURATION_HISTOGRAM.buckets, DURATION_HISTOGRAM.sum)),
            ).where(with_policy).order_by(_S.name),
        )
    )  # fmt: skip
    if not rows:
        deadlines.keep_used()
        return []
    latest: dict[str, tuple[datetime, str | None, float | None]] = {}
    health = (
        sa.select(_H.task_name, _H.last_finished_at, _H.last_status, _H.last_duration_seconds)
        .where(_H.last_finished_at.is_not(None))
        .where(_H.task_name.in_(sa.select(_S.name).where(with_policy)))
    )
    for name, finished, status, duration in select_rows(conn, health):
        seen = latest.get(name)
        if seen is None or finished > seen[0]:
            latest[name] = (finished, status if status in TERMINAL_STATUSES else None, duration)
    policies = [stored_policy(row[1]) for row in rows]
    missing = {
        row[7]: row[0]
        for row, policy in zip(rows, policies, strict=True)
        if policy is not None and policy.deadline is not None and not deadlines.get(row[7])[0]
    }
    if missing:
        deadlines.learn(conn, missing)
    out = [
        _policy_task(row, policy, latest.get(row[0]), deadlines)
        for row, policy in zip(rows, policies, strict=True)
        if policy is not None
    ]
    deadlines.keep_used()
    return out


def _policy_task(
    row: Any,
    policy: AlertPolicy,
    finished: tuple[datetime, str | None, float | None] | None,
    deadlines: DeadlineSchedules,
) -> PolicyTask:
    name, _text, enabled, paused, timezone, created_at, last_success_at, digest, *hist = row
    *buckets, total = hist
    _f, status, duration = finished if finished is not None else (None, None, None)
    return PolicyTask(
        name=name,
        policy=policy,
        enabled=bool(enabled),
        paused=bool(paused),
        timezone=timezone,
        created_at=created_at,
        last_success_at=last_success_at,
        last_status=status,
        last_duration_seconds=duration,
        duration=HistogramCounts.from_columns(
            tuple(int(b) for b in buckets), float(total), DURATION_HISTOGRAM.bounds
        ),
        schedule=deadlines.get(digest)[1] if policy.deadline is not None else None,
    )
