"""Pure admission: of a claimed schedule's due work, what runs, is skipped, missed or waits.

Given one schedule as claimed (its next tick, pending retries and run-now request), its
definition, the time and how many of its runs are in flight, :func:`admit` decides:

- **what is due**: a run-now request due by ``now``; pending retries due by ``horizon``; the
  regular ticks due by ``horizon``, planned by the misfire rule (:func:`plan_ticks`: late
  ticks are run once, all, or none, and the rest counted as missed);
- **overlap** (``skip``: a run in flight skips every new one; ``allow``: up to
  ``max_concurrency`` in flight, the rest skipped; ``replace``: the run in flight is asked to
  stop and the new one starts). A run-now is never skipped: blocked, it stays pending and
  runs once the task's runs in flight allow it (an operator asked for it, with arguments
  perhaps);
- **hold**: blocked work is not decided ahead of its time. A look-ahead claim (``horizon``
  after ``now``) whose work is blocked waits until its first start; a tick blocked only by
  other instances' runs waits up to ``settle`` after its time, as such a run may have
  finished with its outcome not yet written.

No SQL: the store reads the inputs and writes the decision (see ``scheduler_core.store``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

from scheduler_core.pending_retries import PendingRetry, Retries, decode, take_due
from scheduler_core.planning import MissedSpan, plan_ticks
from scheduler_core.tasks import TaskDefinition

__all__ = ["RUN_NOW_RECHECK", "SETTLE_RECHECK", "Admission", "DueSchedule", "Start", "admit"]

#: How soon a tick held by ``settle`` is looked at again: the next pass.
SETTLE_RECHECK = timedelta(milliseconds=50)
#: How soon a run-now that waits for the task's runs in flight is looked at again.
RUN_NOW_RECHECK = timedelta(seconds=1)


class DueSchedule(Protocol):
    """The fields of a claimed schedule row that admission reads."""

    next_run_at: datetime | None
    fire_count: int
    retry_at: datetime | None
    retry_scheduled_for: datetime | None
    retry_attempt: int | None
    #: Pending retries after ``retry_at``'s, encoded (``pending_retries``); None when none.
    retries_queued: str | None
    run_now_requested_at: datetime | None


class Start(NamedTuple):
    """One run of a tick: attempt ``attempt`` of ``scheduled_for``, not before ``start_at``.

    A tuple, not a dataclass: a busy pass builds thousands."""

    scheduled_for: datetime
    attempt: int
    trigger: str  # "manual" (run now), "retry" or "schedule"
    start_at: datetime


@dataclass(slots=True, kw_only=True)  # not frozen: one per claimed schedule per pass
class Admission:
    """The decision for one schedule.

    When ``hold_until`` is set nothing else applies: the schedule is left as it was and
    looked at again then. Otherwise ``runs`` start, ``skipped`` are recorded as skipped,
    ``missed`` (late ticks not run) is recorded, and the schedule advances to
    ``next_run_at`` / ``fire_count``.
    """

    next_run_at: datetime | None
    fire_count: int
    hold_until: datetime | None = None
    runs: list[Start] = field(default_factory=list)
    skipped: list[Start] = field(default_factory=list)
    missed: MissedSpan | None = None
    #: overlap=replace: the run(s) in flight are asked to stop for the new one.
    cancel_running: bool = False
    #: The run-now request was taken (the stored request is cleared).
    run_now_taken: bool = False
    #: The stored pending retries were taken (the ``retry_*`` columns are cleared).
    retries_taken: bool = False
    #: Retries still pending after those taken, when several were queued.
    retries_left: Retries | None = None
    #: A run-now blocked by runs in flight stays pending (never skipped: it is an operator's
    #: request): the schedule is looked at again then, the rest of the decision applies.
    recheck_at: datetime | None = None


def admit(
    item: DueSchedule,
    definition: TaskDefinition,
    *,
    now: datetime,
    horizon: datetime,
    settle: timedelta,
    running: int,
    others: int,
) -> Admission:
    """Decide ``item``'s due work at ``now`` (work due by ``horizon`` is claimed ahead).

    ``running``: its runs in flight that count (finished runs whose outcome is not written
    yet excluded); ``others``: how many of those other instances own.
    """
    due: list[Start] = []
    decision = Admission(next_run_at=item.next_run_at, fire_count=item.fire_count)
    if item.run_now_requested_at is not None and item.run_now_requested_at <= now:
        due.append(Start(item.run_now_requested_at, 1, "manual", now))
        decision.run_now_taken = True
    _take_retries(item, horizon, due, decision)
    plan = plan_ticks(
        definition, next_run_at=item.next_run_at, fire_count=item.fire_count, now=horizon
    )
    for p in plan.runs:
        due.append(Start(p.scheduled_for, 1, "schedule", p.scheduled_for))
    policies = definition.policies
    overlap = policies.overlap
    # overlap=skip compares with runs already in flight: catch-up runs planned in this same
    # pass (misfire=run_all) do not skip each other. overlap=allow counts every run against
    # max_concurrency.
    limit = 1 if overlap == "skip" else policies.max_concurrency
    blocked = running > 0 if overlap == "replace" else running >= limit
    if blocked and due:
        hold = _hold_until(
            due, now=now, settle=settle, blocked_by_us=running - others >= limit, overlap=overlap
        )
        if hold is not None:
            return Admission(
                next_run_at=item.next_run_at, fire_count=item.fire_count, hold_until=hold
            )
    decision.next_run_at = plan.next_run_at
    decision.fire_count = item.fire_count + len(plan.runs)
    decision.missed = plan.missed
    for start in due:
        if overlap == "replace" and running > 0:
            decision.cancel_running = True
            running = 0
        if running >= limit and overlap != "replace":
            if start.trigger == "manual":
                decision.run_now_taken = False
                decision.recheck_at = _run_now_recheck(item, decision, now=now, horizon=horizon)
                continue
            decision.skipped.append(start)
            continue
        if overlap != "skip":
            running += 1
        decision.runs.append(start)
    return decision


def _run_now_recheck(
    item: DueSchedule, decision: Admission, *, now: datetime, horizon: datetime
) -> datetime | None:
    """When to look again at a run-now that waits for runs in flight: soon, but never so
    late that the task's next tick or retry is claimed later than the look-ahead allows;
    None when that is now."""
    at = now + RUN_NOW_RECHECK
    pending_retry = item.retry_at if not decision.retries_taken else None
    if decision.retries_left is not None and decision.retries_left.first is not None:
        pending_retry = decision.retries_left.first.at
    for due_at in (decision.next_run_at, pending_retry):
        if due_at is not None:
            at = min(at, due_at - (horizon - now))
    return at if at > now else None


def _take_retries(
    item: DueSchedule, horizon: datetime, due: list[Start], decision: Admission
) -> None:
    """Add ``item``'s retries due by ``horizon`` to ``due``; note what stays pending."""
    if (
        item.retry_at is None
        or item.retry_at > horizon
        or item.retry_scheduled_for is None
        or item.retry_attempt is None
    ):
        return
    decision.retries_taken = True
    if item.retries_queued is None:  # the common case: one pending retry
        due.append(Start(item.retry_scheduled_for, item.retry_attempt, "retry", item.retry_at))
        return
    first = PendingRetry(item.retry_at, item.retry_scheduled_for, item.retry_attempt)
    taken, decision.retries_left = take_due(Retries(first, decode(item.retries_queued)), horizon)
    due.extend(Start(r.scheduled_for, r.attempt, "retry", r.at) for r in taken)


def _hold_until(
    due: list[Start], *, now: datetime, settle: timedelta, blocked_by_us: bool, overlap: str
) -> datetime | None:
    """When blocked ``due`` work is decided instead of now, or None to decide it now."""
    future = [s.start_at for s in due if s.start_at > now]
    if future:
        # Decided when due: not claimable again before its first future start.
        return min(future)
    if overlap != "replace" and not blocked_by_us and now < min(s.start_at for s in due) + settle:
        # Blocked only by other instances' runs, which may have finished with their outcome
        # not yet written (their owner writes it within its finalize delay): decided again
        # shortly, and skipped only if they still run then.
        return now + SETTLE_RECHECK
    return None
