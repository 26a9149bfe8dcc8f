"""Misfire planning: after an outage, each policy runs and counts exactly what it promises."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scheduler_core.config import parse_task_mapping
from scheduler_core.planning import MAX_CATCHUP_RUNS, plan_ticks

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def task(**fields: object):
    return parse_task_mapping(
        {"name": "t", "command": ["true"], **fields}, defaults={}, source="test"
    )


@pytest.mark.parametrize(
    ("policy", "extra", "runs", "missed"),
    [
        ("run_once", {}, 1, 119),
        ("skip", {}, 0, 120),
        ("run_all", {"catchup_window": "10m"}, 10, 110),
    ],
)
def test_two_hour_outage(policy: str, extra: dict[str, str], runs: int, missed: int) -> None:
    """2 h down for `every: 1m`: run_once 1 run/+119, skip 0/+120, run_all(10m) 10/+110."""
    definition = task(every="1m", misfire=policy, misfire_grace="30s", **extra)
    now = T0 + timedelta(minutes=120, seconds=45)
    plan = plan_ticks(definition, next_run_at=T0 + timedelta(minutes=1), fire_count=0, now=now)
    assert len(plan.runs) == runs
    assert plan.missed is not None and plan.missed.count == missed
    assert plan.missed.first == T0 + timedelta(minutes=1)
    assert plan.next_run_at == T0 + timedelta(minutes=121)
    assert len(plan.runs) + plan.missed.count == 120  # every tick accounted for exactly once


def test_two_day_outage_of_a_one_second_task_is_bounded() -> None:
    """172,800 missed ticks become one span and a bounded number of runs."""
    definition = task(every="1s", misfire="run_all", catchup_window="1d")
    plan = plan_ticks(definition, next_run_at=T0, fire_count=0, now=T0 + timedelta(days=2))
    assert len(plan.runs) <= 2 * MAX_CATCHUP_RUNS
    assert plan.missed is not None
    assert plan.missed.count + len(plan.runs) == 2 * 86400 + 1


def test_on_time_tick_runs_and_nothing_is_missed() -> None:
    """A tick within the grace runs; nothing is counted missed."""
    plan = plan_ticks(
        task(every="10s"), next_run_at=T0, fire_count=0, now=T0 + timedelta(seconds=0.2)
    )
    assert [r.scheduled_for for r in plan.runs] == [T0]
    assert plan.missed is None and plan.next_run_at == T0 + timedelta(seconds=10)


def test_max_runs_stops_the_schedule() -> None:
    """With max_runs reached, no next run is planned."""
    plan = plan_ticks(task(every="10s", max_runs=3), next_run_at=T0, fire_count=2, now=T0)
    assert len(plan.runs) == 1 and plan.next_run_at is None


@pytest.mark.parametrize(("policy", "runs", "missed"), [("run_once", 1, 23), ("skip", 0, 24)])
def test_cron_outage_counts_missed_ticks(policy: str, runs: int, missed: int) -> None:
    """A day down for an hourly cron task (Berlin time): the late ticks follow the policy."""
    definition = task(cron="0 * * * *", timezone="Europe/Berlin", misfire=policy)
    plan = plan_ticks(
        definition,
        next_run_at=T0 + timedelta(hours=1),
        fire_count=0,
        now=T0 + timedelta(hours=24, minutes=30),
    )
    assert len(plan.runs) == runs
    assert plan.missed is not None and plan.missed.count == missed
    assert plan.next_run_at == T0 + timedelta(hours=25)


def test_cron_last_before_matches_next_after() -> None:
    """For cron, last_before(t) is the tick whose next_after is the first tick at or after t."""
    from scheduler_core.schedules import CronSchedule

    sched = CronSchedule(expression="*/7 3-5 * * 1-5", timezone="America/New_York")
    t = T0 + timedelta(days=3, hours=9)
    last = sched.last_before(t)
    assert last is not None and last < t and sched.next_after(last) >= t
