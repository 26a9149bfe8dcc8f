"""The alerts block and its rules (scheduler_core.alert_policy), without a database: parsing
with every problem named, thresholds, too fast / too slow at their boundaries, and deadlines
with an injected clock, across the Europe/Berlin DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from scheduler_core.alert_policy import (
    MIN_RUNS_FOR_USUAL,
    AlertPolicy,
    Deadline,
    deadline_missed,
    latest_deadline,
    merge_alert_policies,
    parse_alert_policy,
    too_fast,
    too_slow,
    usual_duration,
)
from scheduler_core.histograms import DURATION_BUCKETS, HistogramCounts
from scheduler_core.schedules import CronSchedule, IntervalSchedule


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_full_block_parses_with_durations_in_seconds() -> None:
    policy, issues = parse_alert_policy(
        {
            "failures": 1, "late_after": "10m", "no_success_for": "2d", "max_duration": "30m",
            "min_duration": "2s", "slower_than_usual": 3,
            "deadline": {"at": "06:00", "timezone": "Europe/Berlin"}, "severity": "critical",
        }
    )  # fmt: skip
    assert issues == []
    assert policy == AlertPolicy(
        failures=1, late_after=600.0, no_success_for=172800.0, max_duration=1800.0,
        min_duration=2.0, slower_than_usual=3.0,
        deadline=Deadline(at=time(6, 0), timezone="Europe/Berlin"), severity="critical",
    )  # fmt: skip
    assert policy.thresholds() == {
        "consecutive_failures": 1.0, "late_seconds": 600.0, "no_success_seconds": 172800.0,
        "max_duration_seconds": 1800.0, "min_duration_seconds": 2.0,
        "slower_than_usual_factor": 3.0,
    }  # fmt: skip
    assert AlertPolicy.from_json(policy.to_json()) == policy


@pytest.mark.parametrize(
    ("block", "field", "value"),
    [
        ({"failures": 0}, "alerts.failures", 0),
        ({"failures": True}, "alerts.failures", True),
        ({"late_after": "soon"}, "alerts.late_after", "soon"),
        ({"no_success_for": -5}, "alerts.no_success_for", -5),
        ({"slower_than_usual": 1}, "alerts.slower_than_usual", 1),
        ({"severity": "page"}, "alerts.severity", "page"),
        ({"deadline": {"at": "25:00"}}, "alerts.deadline.at", "25:00"),
        ({"deadline": {"at": "06:00", "timezone": "Mars/Base"}}, "alerts.deadline.timezone", "Mars/Base"),
        ({"deadline": {"at": "06:00", "when": 1}}, "alerts.deadline.when", 1),
        ({"failurs": 2}, "alerts.failurs", 2),
        ({"min_duration": "1h", "max_duration": "30m"}, "alerts.min_duration", "1h"),
    ],
)  # fmt: skip
def test_each_bad_field_is_named_with_its_value(
    block: dict[str, object], field: str, value: object
) -> None:
    _, issues = parse_alert_policy(block)
    assert [(f, v) for f, v, _ in issues] == [(field, value)]


def test_an_unknown_field_suggests_the_close_one() -> None:
    _, issues = parse_alert_policy({"failurs": 2})
    assert "did you mean 'failures'?" in issues[0][2]


def test_a_block_that_is_not_a_mapping_is_named() -> None:
    _, issues = parse_alert_policy("loud")
    assert issues == [("alerts", "loud", "must be a mapping of alert fields, like {failures: 1}")]


def test_an_unquoted_yaml_clock_time_reads_as_that_time() -> None:
    # YAML 1.1 reads 06:30 as the base-60 number 390.
    policy, issues = parse_alert_policy({"deadline": {"at": 390}})
    assert issues == []
    assert policy.deadline == Deadline(at=time(6, 30))


def test_a_task_block_overrides_its_defaults_field_by_field() -> None:
    defaults, _ = parse_alert_policy({"failures": 5, "severity": "warning"})
    task, _ = parse_alert_policy({"failures": 1})
    merged = merge_alert_policies(defaults, task)
    assert merged == (AlertPolicy(failures=1, severity="warning"), [])
    assert AlertPolicy().is_empty() and AlertPolicy().to_json() is None


def test_too_fast_is_a_success_strictly_under_min_duration() -> None:
    policy = AlertPolicy(min_duration=2.0)
    assert too_fast(policy=policy, last_status="success", last_duration=1.999)
    assert not too_fast(policy=policy, last_status="success", last_duration=2.0)
    assert not too_fast(policy=policy, last_status="failure", last_duration=0.1)
    assert not too_fast(policy=AlertPolicy(), last_status="success", last_duration=0.1)
    assert not too_fast(policy=None, last_status="success", last_duration=0.1)


def test_too_slow_over_max_duration() -> None:
    policy = AlertPolicy(max_duration=60.0)
    assert not too_slow(policy=policy, last_duration=60.0, usual=None)
    assert too_slow(policy=policy, last_duration=60.001, usual=None)


def test_slower_than_usual_needs_enough_runs_and_compares_with_the_median() -> None:
    policy = AlertPolicy(slower_than_usual=3.0)
    few = HistogramCounts.empty(DURATION_BUCKETS).observe([1.0] * (MIN_RUNS_FOR_USUAL - 1))
    assert usual_duration(few) is None
    assert not too_slow(policy=policy, last_duration=1000.0, usual=usual_duration(few))
    enough = few.observe([1.0])
    median = usual_duration(enough)
    assert median is not None and median == enough.quantile(0.5)
    assert not too_slow(policy=policy, last_duration=3 * median, usual=median)
    assert too_slow(policy=policy, last_duration=3 * median + 0.001, usual=median)


# --- deadlines ------------------------------------------------------------------------------

BERLIN_05 = CronSchedule(expression="0 5 * * *", timezone="Europe/Berlin")
AT_06 = Deadline(at=time(6, 0), timezone="Europe/Berlin")


def missed(now: datetime, last_success: datetime | None, **kw: object) -> bool:
    return deadline_missed(
        deadline=AT_06, schedule=BERLIN_05, timezone="UTC", now=now,
        last_success_at=last_success, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_deadline_missed_moves_with_the_spring_dst_change() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 06:00 in Berlin is 05:00 UTC on the 28th, 04:00 UTC
    # on the 29th.
    assert latest_deadline(AT_06, now=utc(2026, 3, 28, 5, 0), timezone="UTC") == utc(
        2026, 3, 28, 5, 0
    )
    assert latest_deadline(AT_06, now=utc(2026, 3, 29, 4, 0), timezone="UTC") == utc(
        2026, 3, 29, 4, 0
    )
    success_28th = utc(2026, 3, 28, 4, 10)  # the 05:00 CET run of the 28th, done 05:10 local
    # Just before 06:00 CEST on the 29th: judged on the 28th's deadline, which was met.
    assert not missed(utc(2026, 3, 29, 3, 59, 59), success_28th)
    # Just after 06:00 CEST (still before 05:00 UTC): the 29th's run did not succeed.
    assert missed(utc(2026, 3, 29, 4, 0, 1), success_28th)
    # A success of the 29th's 05:00 CEST (03:00 UTC) tick before the deadline meets it.
    assert not missed(utc(2026, 3, 29, 4, 0, 1), utc(2026, 3, 29, 3, 40))


def test_deadline_missed_moves_with_the_autumn_dst_change() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: 06:00 in Berlin is 04:00 UTC on the 24th, 05:00 UTC
    # on the 25th.
    success_24th = utc(2026, 10, 24, 3, 10)
    assert not missed(utc(2026, 10, 25, 4, 30), success_24th)  # 05:30 CET: not yet due
    assert missed(utc(2026, 10, 25, 5, 0, 1), success_24th)
    assert not missed(utc(2026, 10, 25, 5, 0, 1), utc(2026, 10, 25, 4, 20))  # 05:20 CET


def test_the_deadline_counts_from_the_last_tick_before_it() -> None:
    now = utc(2026, 6, 2, 4, 30)  # 06:30 CEST
    tick = utc(2026, 6, 2, 3, 0)  # 05:00 CEST
    assert missed(now, tick - timedelta(seconds=1))  # yesterday's success does not count
    assert not missed(now, tick)


def test_a_late_success_clears_a_missed_deadline() -> None:
    assert not missed(utc(2026, 6, 2, 9, 0), utc(2026, 6, 2, 8, 0))


def test_never_succeeded_is_missed_but_a_task_newer_than_the_tick_is_not_judged() -> None:
    now = utc(2026, 6, 2, 4, 30)
    assert missed(now, None)
    assert not missed(now, None, created_at=utc(2026, 6, 2, 3, 30))
    assert missed(now, None, created_at=utc(2026, 6, 1, 12, 0))


def test_the_deadline_defaults_to_the_task_time_zone_and_works_with_intervals() -> None:
    every_hour = IntervalSchedule(every=3600.0)
    deadline = Deadline(at=time(9, 0))
    now = utc(2026, 6, 2, 7, 30)  # 09:30 in Berlin
    kw = {"deadline": deadline, "schedule": every_hour, "now": now}
    # Berlin 09:00 = 07:00 UTC; the tick before it is 06:00 UTC.
    assert deadline_missed(**kw, timezone="Europe/Berlin", last_success_at=utc(2026, 6, 2, 5, 59))  # type: ignore[arg-type]
    assert not deadline_missed(
        **kw, timezone="Europe/Berlin", last_success_at=utc(2026, 6, 2, 6, 5)
    )  # type: ignore[arg-type]
    # In UTC, 09:00 has not come yet today: judged on yesterday's.
    assert not deadline_missed(**kw, timezone="UTC", last_success_at=utc(2026, 6, 1, 8, 30))  # type: ignore[arg-type]


def test_no_deadline_is_never_missed() -> None:
    assert not deadline_missed(
        deadline=None, schedule=BERLIN_05, timezone="UTC", now=utc(2026, 6, 2), last_success_at=None
    )


def test_a_min_duration_from_defaults_above_the_task_max_duration_is_named() -> None:
    """The contradiction check holds across the merge too: defaults' min_duration against a
    task's shorter max_duration (and the other way round) is an issue naming min_duration
    with its value and where it came from; the merged policy keeps only max_duration."""
    defaults, _ = parse_alert_policy({"min_duration": "10m"})
    task_block, _ = parse_alert_policy({"max_duration": "5m"})
    merged, issues = merge_alert_policies(defaults, task_block)
    assert issues == [
        (
            "alerts.min_duration",
            "600s",
            "must be shorter than max_duration (300s); min_duration comes from defaults",
        )
    ]
    assert merged.min_duration is None and merged.max_duration == 300.0
    _, issues = merge_alert_policies(
        parse_alert_policy({"max_duration": "1m"})[0], parse_alert_policy({"min_duration": "2m"})[0]
    )
    assert [(f, v) for f, v, _ in issues] == [("alerts.min_duration", "120s")]
    assert "comes from the task" in issues[0][2]
    fine, issues = merge_alert_policies(defaults, parse_alert_policy({"max_duration": "1h"})[0])
    assert issues == [] and fine.min_duration == 600.0
