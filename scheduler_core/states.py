"""The one rule for "what state is this task in": the status badge and the flags it rests on.

Every place that shows a task's state derives it here, from plain values: the exporter's
snapshot (``/api/v1/status`` and the ``scheduler_task_stuck`` metric), ``schedctl tasks list``
(through ``Store.list_tasks``) and the dashboards, whose PromQL is generated from
:data:`BADGES` (``dashboards/build.py``, ``status_expr``). A table of cases in
``tests/test_state_rule.py`` checks this rule, the exporter, the CLI and the PromQL against
each other. No SQL and no I/O: callers read the inputs, this module only decides.

The rule, first match wins (:data:`BADGES`):

``disabled``
    the task is disabled in its definition;
``paused``
    an operator paused it;
``stuck``
    its ``max_runtime`` is set and some run in flight started more than ``max_runtime`` ago
    (:func:`is_stuck`);
``running``
    a run is in flight on any instance;
``failing``
    it failed in a row (``consecutive_failures > 0``) and the most recently finished run
    ended in ``failure`` or ``timeout`` (:func:`is_failing`); a pending retry after a
    failure that was followed by a success does not count;
``late``
    its next tick is more than the late grace overdue while it is enabled, not paused and
    not running (:func:`is_late`);
``ok``
    none of the above.

Stuck does not look at heartbeats: schedctl has no per-run heartbeat, only each instance's
lease heartbeat, and a run whose instance stops heartbeating is marked ``abandoned`` by the
reaper, so it leaves ``running`` (and with it the stuck test) instead of being judged here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Final, Literal, NamedTuple

__all__ = [
    "BADGES",
    "FAILED_STATUSES",
    "LATE_GRACE_SECONDS",
    "Badge",
    "TaskState",
    "assess",
    "badge_of",
    "is_failing",
    "is_late",
    "is_stuck",
]

Badge = Literal["disabled", "paused", "stuck", "running", "failing", "late", "ok"]
#: Every badge, in precedence order: the first that applies wins.
BADGES: Final[tuple[Badge, ...]] = (
    "disabled",
    "paused",
    "stuck",
    "running",
    "failing",
    "late",
    "ok",
)
#: The statuses of a finished run that make a task with failures in a row ``failing``.
FAILED_STATUSES: Final[frozenset[str]] = frozenset({"failure", "timeout"})
#: How overdue (seconds, strictly more than) a tick must be for its task to be ``late``: the
#: exporter's default ``--late-grace``, ``schedctl tasks list``, the dashboards and the
#: ``schedctl:threshold:late_grace_seconds`` recording rule of the alerts.
LATE_GRACE_SECONDS: Final[float] = 300.0


def is_stuck(
    *,
    now: datetime,
    running_starts: Iterable[datetime | None],
    max_runtime_seconds: float | None,
) -> bool:
    """True when ``max_runtime_seconds`` is set and a run in flight (its ``started_at`` in
    ``running_starts``) has been running for longer than that."""
    if max_runtime_seconds is None:
        return False
    return any(
        started is not None and (now - started).total_seconds() > max_runtime_seconds
        for started in running_starts
    )


def is_late(
    *,
    now: datetime,
    enabled: bool,
    paused: bool,
    running: int,
    next_run_at: datetime | None,
    late_grace_seconds: float = LATE_GRACE_SECONDS,
) -> bool:
    """True when an enabled, unpaused task with no run in flight is more than
    ``late_grace_seconds`` past its ``next_run_at`` (exactly the grace is not late)."""
    return (
        enabled
        and not paused
        and running == 0
        and next_run_at is not None
        and (now - next_run_at).total_seconds() > late_grace_seconds
    )


def is_failing(*, consecutive_failures: int, last_status: str | None) -> bool:
    """True when the task failed in a row and its most recently finished run failed."""
    return consecutive_failures > 0 and last_status in FAILED_STATUSES


def badge_of(
    *,
    enabled: bool,
    paused: bool,
    stuck: bool,
    running: int,
    failing: bool,
    late: bool,
) -> Badge:
    """The badge from already derived flags, by the precedence of :data:`BADGES`."""
    if not enabled:
        return "disabled"
    if paused:
        return "paused"
    if stuck:
        return "stuck"
    if running > 0:
        return "running"
    if failing:
        return "failing"
    if late:
        return "late"
    return "ok"


class TaskState(NamedTuple):
    """What the rule decides for one task: the badge and the flags it rests on."""

    stuck: bool
    late: bool
    failing: bool
    badge: Badge


def assess(
    *,
    now: datetime,
    enabled: bool,
    paused: bool,
    running_starts: Iterable[datetime | None],
    max_runtime_seconds: float | None,
    next_run_at: datetime | None,
    consecutive_failures: int,
    last_status: str | None,
    late_grace_seconds: float = LATE_GRACE_SECONDS,
) -> TaskState:
    """The one state of a task as of ``now``: its flags and its badge.

    ``running_starts`` holds the ``started_at`` of each of its runs in flight, on every
    instance (its length is the running count); ``last_status`` is the status of the most
    recently finished run across instances.
    """
    starts = tuple(running_starts)
    running = len(starts)
    stuck = is_stuck(now=now, running_starts=starts, max_runtime_seconds=max_runtime_seconds)
    late = is_late(
        now=now, enabled=enabled, paused=paused, running=running, next_run_at=next_run_at,
        late_grace_seconds=late_grace_seconds,
    )  # fmt: skip
    failing = is_failing(consecutive_failures=consecutive_failures, last_status=last_status)
    badge = badge_of(
        enabled=enabled, paused=paused, stuck=stuck, running=running, failing=failing, late=late
    )
    return TaskState(stuck, late, failing, badge)
