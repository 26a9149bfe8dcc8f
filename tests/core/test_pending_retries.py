"""The pending-retries rule, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scheduler_core.pending_retries import PendingRetry, Retries, decode, encode, merge, take_due

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float, tick: float, attempt: int = 2) -> PendingRetry:
    return PendingRetry(T0 + timedelta(seconds=seconds), T0 + timedelta(seconds=tick), attempt)


def test_merge_keeps_every_retry_with_the_earliest_first() -> None:
    merged = merge(Retries(at(150, 60)), [at(210, 120), at(100, 30)])
    assert merged.first == at(100, 30)
    assert merged.queued == (at(150, 60), at(210, 120))


def test_merge_keeps_one_retry_per_tick_and_attempt() -> None:
    merged = merge(Retries(at(150, 60)), [at(160, 60)])
    assert merged.all() == [at(160, 60)]


def test_take_due_returns_what_is_due_and_keeps_the_rest_in_order() -> None:
    pending = Retries.of([at(150, 60), at(210, 120), at(100, 30)])
    due, rest = take_due(pending, T0 + timedelta(seconds=150))
    assert due == [at(100, 30), at(150, 60)]
    assert rest == Retries(at(210, 120))
    assert take_due(rest, T0)[0] == []


def test_the_queue_round_trips_through_its_stored_text() -> None:
    queued = (at(150, 60), at(210, 120, 3))
    assert decode(encode(queued)) == queued
    assert encode(()) is None and decode(None) == ()
