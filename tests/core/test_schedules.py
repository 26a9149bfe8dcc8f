"""Schedules compute the right fire times: DST-correct cron, gridded intervals, one-time."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_core.schedules import AtSchedule, CronSchedule, IntervalSchedule

BERLIN = ZoneInfo("Europe/Berlin")


def fires(schedule: CronSchedule, start: datetime, n: int) -> list[datetime]:
    out, t = [], start
    for _ in range(n):
        nxt = schedule.next_after(t)
        assert nxt is not None
        out.append(nxt)
        t = nxt
    return out


def test_cron_spring_forward_runs_once_after_the_gap() -> None:
    """`30 2 * * *` in Berlin on 2026-03-29 (02:00→03:00) runs once, at 03:00 CEST."""
    sched = CronSchedule(expression="30 2 * * *", timezone="Europe/Berlin")
    got = [t.astimezone(BERLIN) for t in fires(sched, datetime(2026, 3, 27, 12, tzinfo=BERLIN), 4)]
    assert [(t.day, t.hour, t.minute) for t in got] == [
        (28, 2, 30),
        (29, 3, 0),
        (30, 2, 30),
        (31, 2, 30),
    ]
    assert got[1].utcoffset() == timedelta(hours=2)


def test_cron_fall_back_runs_once_in_the_repeated_hour() -> None:
    """`30 2 * * *` in Berlin on 2026-10-25 (03:00→02:00) runs once, not in both 02:30s."""
    sched = CronSchedule(expression="30 2 * * *", timezone="Europe/Berlin")
    got = fires(sched, datetime(2026, 10, 23, 12, tzinfo=BERLIN), 3)
    local = [t.astimezone(BERLIN) for t in got]
    assert [(t.day, t.hour, t.minute) for t in local] == [(24, 2, 30), (25, 2, 30), (26, 2, 30)]
    assert got[1] == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first 02:30 (CEST)


def test_wildcard_hour_cron_fires_in_both_repeated_hours() -> None:
    """`*/30 * * * *` keeps its 30-minute rhythm through fall-back (both 02:xx hours run)."""
    sched = CronSchedule(expression="*/30 * * * *", timezone="Europe/Berlin")
    got = fires(sched, datetime(2026, 10, 25, 1, 50, tzinfo=BERLIN), 6)
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(got)}
    assert gaps == {1800.0}


def test_cron_with_seconds_field() -> None:
    """A 6-field expression fires on seconds."""
    sched = CronSchedule(expression="* * * * * */15")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert fires(sched, start, 2) == [start + timedelta(seconds=15), start + timedelta(seconds=30)]


@settings(max_examples=200, deadline=None)
@given(
    every=st.integers(min_value=1, max_value=7200),
    jitter_frac=st.floats(min_value=0, max_value=0.99),
    offset=st.integers(min_value=0, max_value=10**7),
    span=st.integers(min_value=0, max_value=50_000),
)
def test_interval_count_matches_iteration(
    every: int, jitter_frac: float, offset: int, span: int
) -> None:
    """count_between (arithmetic) equals walking next_after, with and without jitter."""
    sched = IntervalSchedule(every=float(every), jitter=every * jitter_frac, seed="t")
    after = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=offset)
    until = after + timedelta(seconds=span)
    walked, t = 0, after
    while True:
        t = sched.next_after(t)
        if t is None or t > until or walked > 100_000:
            break
        walked += 1
    assert sched.count_between(after, until, cap=10**9) == walked
    last = sched.last_before(until)
    assert last is not None and last < until and (sched.next_after(last) or until) >= until


def test_interval_is_on_a_grid_shared_by_all_instances() -> None:
    """Two computations from different moments agree on the ticks (anchored at the epoch)."""
    sched = IntervalSchedule(every=300)
    a = sched.next_after(datetime(2026, 1, 1, 0, 1, 7, tzinfo=UTC))
    b = sched.next_after(datetime(2026, 1, 1, 0, 4, 59, tzinfo=UTC))
    assert a == b == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def test_at_fires_once() -> None:
    """A one-time schedule has one fire time and none after it."""
    at = datetime(2026, 12, 1, 9, tzinfo=ZoneInfo("Europe/Berlin"))
    sched = AtSchedule(at=at)
    assert sched.next_after(at - timedelta(days=1)) == at
    assert sched.next_after(at) is None
