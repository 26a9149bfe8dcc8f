"""Pure retry rule: after a task's finished attempts, what is retried and what failed for good.

For each finished attempt, in the order they finished:

- a success resets the task's consecutive failures to 0;
- a failure or timeout with attempts left (``attempt <= retries.max``) schedules attempt
  ``attempt + 1`` of the same tick, ``delay_before`` seconds after now (fixed or exponential
  backoff, capped at ``max_delay``, plus ``jitter`` times a random fraction);
- a failure or timeout without attempts left is the tick's final failure: consecutive
  failures go up by one. Only final failures count, so a task that fails once and then
  succeeds on its retry never looks failing;
- cancelled, abandoned and skipped runs change neither.

A task *recovers* when its consecutive failures go from above zero back to zero. No SQL: the
store reads each task's stored state and writes the result (``scheduler_core.store``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from scheduler_core.pending_retries import PendingRetry
from scheduler_core.tasks import RetryPolicy

__all__ = ["Attempt", "FailureState", "decide"]


class Attempt(Protocol):
    """What the rule reads of a finished attempt (``RunOutcome`` has these fields)."""

    status: str
    attempt: int
    scheduled_for: datetime
    finished_at: datetime


@dataclass(slots=True, kw_only=True)
class FailureState:
    """One task after a batch of finished attempts."""

    consecutive_failures: int
    #: The retries these attempts schedule (one per failed attempt with attempts left).
    new_retries: list[PendingRetry] = field(default_factory=list)
    recovered: bool = False


def decide(
    attempts: Sequence[Attempt],
    *,
    stored_failures: int,
    policy: RetryPolicy,
    now: datetime,
    rand: Callable[[], float],
) -> FailureState:
    """The task's failure state after ``attempts`` (any order), from ``stored_failures``.

    ``rand`` returns a fraction in [0, 1) for the retry jitter (``random.random``)."""
    if len(attempts) > 1:
        attempts = sorted(attempts, key=_finished_at)
    failures = stored_failures
    new: list[PendingRetry] = []
    for a in attempts:
        if a.status == "success":
            failures = 0
        elif a.status in ("failure", "timeout"):
            if a.attempt <= policy.max:
                delay = policy.delay_before(a.attempt + 1, rand=rand())
                new.append(
                    PendingRetry(now + timedelta(seconds=delay), a.scheduled_for, a.attempt + 1)
                )
            else:
                failures += 1
    return FailureState(
        consecutive_failures=failures,
        new_retries=new,
        recovered=stored_failures > 0 and failures == 0,
    )


def _finished_at(a: Attempt) -> datetime:
    return a.finished_at
