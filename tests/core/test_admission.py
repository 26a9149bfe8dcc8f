"""Admission rules, one test per rule, with no database: overlap skip/allow/replace,
max_concurrency, the look-ahead and settle holds, misfire skip/run_once/run_all, run now
and pending retries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from scheduler_core.admission import RUN_NOW_RECHECK, SETTLE_RECHECK, Admission, admit
from scheduler_core.config import parse_task_mapping
from scheduler_core.pending_retries import PendingRetry, decode, encode
from scheduler_core.tasks import TaskDefinition

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def task(**fields: object) -> TaskDefinition:
    return parse_task_mapping(
        {"name": "t", "command": ["true"], "every": "1m", **fields}, defaults={}, source="test"
    )


@dataclass
class Due:
    """A claimed schedule as admission reads it."""

    next_run_at: datetime | None = T0
    fire_count: int = 0
    retry_at: datetime | None = None
    retry_scheduled_for: datetime | None = None
    retry_attempt: int | None = None
    retries_queued: str | None = None
    run_now_requested_at: datetime | None = None


def decide(
    definition: TaskDefinition,
    item: Due | None = None,
    *,
    now: datetime = T0,
    horizon: datetime | None = None,
    settle: timedelta = timedelta(0),
    running: int = 0,
    others: int = 0,
) -> Admission:
    return admit(
        item or Due(),
        definition,
        now=now,
        horizon=horizon or now,
        settle=settle,
        running=running,
        others=others,
    )


def ticks(starts: list[object]) -> list[datetime]:
    return [s.scheduled_for for s in starts]  # type: ignore[attr-defined]


def test_a_due_tick_runs_and_the_schedule_advances() -> None:
    d = decide(task())
    assert ticks(d.runs) == [T0]
    assert d.runs[0].trigger == "schedule" and d.runs[0].attempt == 1
    assert d.skipped == [] and d.hold_until is None and not d.cancel_running
    assert d.next_run_at == T0 + timedelta(minutes=1) and d.fire_count == 1


def test_overlap_skip_skips_while_a_run_is_in_flight() -> None:
    d = decide(task(overlap="skip"), running=1)
    assert d.runs == [] and ticks(d.skipped) == [T0]
    assert d.next_run_at == T0 + timedelta(minutes=1)  # the skipped tick is consumed


def test_overlap_skip_does_not_skip_catch_up_runs_of_one_pass() -> None:
    definition = task(overlap="skip", misfire="run_all", catchup_window="10m", misfire_grace="1s")
    d = decide(definition, now=T0 + timedelta(minutes=2, seconds=30))
    assert len(d.runs) == 3 and d.skipped == []


def test_overlap_allow_runs_alongside_up_to_max_concurrency() -> None:
    allowed = decide(task(overlap="allow", max_concurrency=2), running=1)
    assert ticks(allowed.runs) == [T0] and allowed.skipped == []
    full = decide(task(overlap="allow", max_concurrency=2), running=2)
    assert full.runs == [] and ticks(full.skipped) == [T0]


def test_max_concurrency_counts_runs_planned_in_the_same_pass() -> None:
    definition = task(
        overlap="allow",
        max_concurrency=2,
        misfire="run_all",
        catchup_window="10m",
        misfire_grace="1s",
    )
    d = decide(definition, now=T0 + timedelta(minutes=2, seconds=30), running=1)
    assert len(d.runs) == 1 and len(d.skipped) == 2


def test_overlap_replace_cancels_the_run_in_flight_and_starts_the_new_one() -> None:
    d = decide(task(overlap="replace"), running=1)
    assert d.cancel_running and ticks(d.runs) == [T0] and d.skipped == []
    idle = decide(task(overlap="replace"))
    assert not idle.cancel_running and ticks(idle.runs) == [T0]


def test_look_ahead_holds_blocked_work_until_it_is_due() -> None:
    """Claimed ahead of its tick and blocked: left unchanged until the tick, not skipped."""
    item = Due(next_run_at=T0 + 5 * S, fire_count=3)
    d = decide(task(), item, now=T0, horizon=T0 + 10 * S, running=1)
    assert d.hold_until == T0 + 5 * S
    assert d.runs == [] and d.skipped == [] and d.missed is None
    assert d.next_run_at == item.next_run_at and d.fire_count == 3


def test_look_ahead_run_carries_its_start_time() -> None:
    d = decide(task(), Due(next_run_at=T0 + 5 * S), now=T0, horizon=T0 + 10 * S)
    assert [s.start_at for s in d.runs] == [T0 + 5 * S]


def test_settle_holds_a_tick_blocked_only_by_another_instances_run() -> None:
    d = decide(task(), now=T0 + 0.2 * S, settle=S, running=1, others=1)
    assert d.hold_until == T0 + 0.2 * S + SETTLE_RECHECK and d.skipped == []


def test_settle_ends_and_the_tick_is_skipped() -> None:
    d = decide(task(), now=T0 + 1.5 * S, settle=S, running=1, others=1)
    assert d.hold_until is None and ticks(d.skipped) == [T0]


def test_settle_does_not_hold_for_this_instances_own_run() -> None:
    d = decide(task(), now=T0 + 0.2 * S, settle=S, running=1, others=0)
    assert d.hold_until is None and ticks(d.skipped) == [T0]


@pytest.mark.parametrize(
    ("misfire", "extra", "runs", "missed"),
    [("skip", {}, 0, 5), ("run_once", {}, 1, 4), ("run_all", {"catchup_window": "1h"}, 5, 0)],
)
def test_misfire_policy_after_an_outage(
    misfire: str, extra: dict[str, str], runs: int, missed: int
) -> None:
    """Five ticks older than misfire_grace: skip runs none, run_once one, run_all all."""
    definition = task(misfire=misfire, misfire_grace="30s", **extra)
    d = decide(definition, now=T0 + timedelta(minutes=4, seconds=45))
    assert len(d.runs) == runs
    assert (d.missed.count if d.missed else 0) == missed
    assert d.next_run_at == T0 + timedelta(minutes=5)
    assert d.fire_count == runs


def test_run_now_runs_at_once_and_is_taken() -> None:
    item = Due(next_run_at=T0 + timedelta(minutes=1), run_now_requested_at=T0 - S)
    d = decide(task(), item)
    assert [(s.trigger, s.start_at) for s in d.runs] == [("manual", T0)]
    assert d.run_now_taken and d.next_run_at == item.next_run_at


def test_a_run_now_blocked_by_a_run_in_flight_stays_pending() -> None:
    """overlap=skip with a run in flight (one claimed ahead, say): the run-now is neither run
    nor skipped; it stays pending and the schedule is looked at again within a second."""
    item = Due(next_run_at=T0 + timedelta(minutes=1), run_now_requested_at=T0 - S)
    d = decide(task(overlap="skip"), item, running=1)
    assert d.runs == [] and d.skipped == []
    assert not d.run_now_taken
    assert d.recheck_at == T0 + RUN_NOW_RECHECK
    assert d.hold_until is None and d.next_run_at == item.next_run_at


def test_a_pending_run_now_never_delays_the_next_tick_past_the_look_ahead() -> None:
    """The recheck of a blocked run-now comes no later than the next tick's claim would."""
    look_ahead = timedelta(milliseconds=500)
    item = Due(next_run_at=T0 + timedelta(milliseconds=800), run_now_requested_at=T0 - S)
    d = decide(task(overlap="skip"), item, horizon=T0 + look_ahead, running=1)
    assert not d.run_now_taken
    assert d.recheck_at == T0 + timedelta(milliseconds=300)
    item = Due(next_run_at=T0 + timedelta(milliseconds=400), run_now_requested_at=T0 - S)
    d = decide(task(overlap="skip"), item, horizon=T0 + look_ahead, running=1)
    assert d.recheck_at is None  # the tick is claimable now: no hold at all


def test_a_run_now_runs_once_the_task_is_free() -> None:
    """The same pending run-now, looked at again with nothing in flight, runs."""
    item = Due(next_run_at=T0 + timedelta(minutes=1), run_now_requested_at=T0 - S)
    d = decide(task(overlap="skip"), item, now=T0 + RUN_NOW_RECHECK, running=0)
    assert [s.trigger for s in d.runs] == ["manual"] and d.run_now_taken


def test_a_due_retry_runs_with_its_attempt_and_is_taken() -> None:
    item = Due(
        next_run_at=T0 + timedelta(minutes=1),
        retry_at=T0,
        retry_scheduled_for=T0 - timedelta(minutes=1),
        retry_attempt=2,
    )
    d = decide(task(), item)
    assert [(s.trigger, s.attempt) for s in d.runs] == [("retry", 2)]
    assert d.retries_taken and d.retries_left is None


def test_queued_retries_not_due_stay_pending() -> None:
    later = PendingRetry(T0 + timedelta(minutes=5), T0 - timedelta(minutes=2), 2)
    item = Due(
        next_run_at=T0 + timedelta(minutes=1),
        retry_at=T0,
        retry_scheduled_for=T0 - timedelta(minutes=1),
        retry_attempt=2,
        retries_queued=encode([later]),
    )
    d = decide(task(), item)
    assert [s.attempt for s in d.runs] == [2]
    assert d.retries_left is not None and d.retries_left.first == later
    assert decode(encode(d.retries_left.queued)) == ()
