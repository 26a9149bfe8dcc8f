"""The retry rule, with no database: retry with attempts left, backoff, final failure,
success resets, recovery, and what does not count."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from scheduler_core.retries import decide
from scheduler_core.tasks import RetryPolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TICK = T0 - timedelta(minutes=1)


@dataclass
class Attempt:
    status: str
    attempt: int = 1
    scheduled_for: datetime = TICK
    finished_at: datetime = T0


def half() -> float:
    return 0.5


def test_a_failure_with_attempts_left_is_retried_and_does_not_count() -> None:
    state = decide(
        [Attempt("failure")],
        stored_failures=0,
        policy=RetryPolicy(max=2, backoff="fixed", delay=30),
        now=T0,
        rand=half,
    )
    assert state.consecutive_failures == 0
    assert [(r.at, r.scheduled_for, r.attempt) for r in state.new_retries] == [
        (T0 + timedelta(seconds=30), TICK, 2)
    ]


def test_a_timeout_is_retried_like_a_failure() -> None:
    state = decide(
        [Attempt("timeout")], stored_failures=0, policy=RetryPolicy(max=1), now=T0, rand=half
    )
    assert [r.attempt for r in state.new_retries] == [2]


def test_exponential_backoff_doubles_per_attempt_up_to_max_delay() -> None:
    policy = RetryPolicy(max=10, backoff="exponential", delay=10, max_delay=60, jitter=4)
    delays = []
    for attempt in (1, 2, 3, 4, 5):
        state = decide(
            [Attempt("failure", attempt=attempt)],
            stored_failures=0,
            policy=policy,
            now=T0,
            rand=half,
        )
        delays.append((state.new_retries[0].at - T0).total_seconds())
    assert delays == [12.0, 22.0, 42.0, 62.0, 62.0]  # 10, 20, 40, 60 (cap), 60, plus 4 * 0.5


def test_the_last_attempts_failure_is_final_and_counts() -> None:
    state = decide(
        [Attempt("failure", attempt=3)],
        stored_failures=1,
        policy=RetryPolicy(max=2),
        now=T0,
        rand=half,
    )
    assert state.new_retries == [] and state.consecutive_failures == 2
    assert not state.recovered


def test_success_resets_and_recovers() -> None:
    state = decide([Attempt("success")], stored_failures=3, policy=RetryPolicy(), now=T0, rand=half)
    assert state.consecutive_failures == 0 and state.recovered


def test_attempts_apply_in_finish_order() -> None:
    """A success finished before a final failure: the task ends failing, not recovered."""
    attempts = [
        Attempt("failure", finished_at=T0 + timedelta(seconds=2)),
        Attempt("success", finished_at=T0 + timedelta(seconds=1)),
    ]
    state = decide(attempts, stored_failures=2, policy=RetryPolicy(max=0), now=T0, rand=half)
    assert state.consecutive_failures == 1 and not state.recovered


def test_cancelled_abandoned_and_skipped_change_nothing() -> None:
    attempts = [Attempt("cancelled"), Attempt("abandoned"), Attempt("skipped")]
    state = decide(attempts, stored_failures=2, policy=RetryPolicy(max=3), now=T0, rand=half)
    assert state.consecutive_failures == 2 and state.new_retries == [] and not state.recovered
