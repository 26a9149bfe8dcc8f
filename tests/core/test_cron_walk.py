"""The direct walk of plain UTC cron expressions finds croniter's fire times exactly.

``PlainCron.next_after`` is compared with croniter's own ``get_next`` (naive, as
``CronSchedule`` walks UTC) on random expressions of every shape croniter accepts, from
start times with and without seconds, at month, year and leap-day edges; what it does not
take (``L``, ``W``, ``#``, a sixth field) it must refuse, and ``CronSchedule.next_after``
must give the same answers with and without it.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import CroniterBadDateError, croniter

from scheduler_core import schedules
from scheduler_core.cron_walk import PlainCron, parse_plain, plain_cron
from scheduler_core.schedules import CronSchedule

FIELD_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
NAMES = {3: ["jan", "feb", "jun", "dec"], 4: ["mon", "fri", "sat", "sun"]}


def random_field(rng: random.Random, index: int) -> str:
    """One field of a cron expression, in any of the forms croniter reads (some refused)."""
    low, high = FIELD_RANGES[index]
    a, b = sorted(rng.randint(low, high) for _ in range(2))
    forms = [
        "*",
        f"*/{rng.randint(1, high)}",
        str(rng.randint(low, high)),
        str(rng.randint(low, high)),
        f"{a}-{b}",
        f"{a}-{b}/{rng.randint(1, 10)}",
        f"{a}/{rng.randint(1, 20)}",
        f"{b}-{a}",
        "?",
        rng.choice(NAMES.get(index, ["*"])),
        rng.choice({2: ["l", "15w"], 4: ["1#2", "l5"]}.get(index, ["*"])),
    ]
    if rng.random() < 0.15:
        return ",".join(random_field(rng, index) for _ in range(rng.randint(2, 3)))
    return rng.choice(forms)


def random_expression(rng: random.Random) -> str:
    fields = [random_field(rng, i) for i in range(5)]
    if rng.random() < 0.3:
        fields[2] = "*"
    if rng.random() < 0.3:
        fields[4] = "*"
    if rng.random() < 0.05:
        fields[2], fields[3] = rng.choice(["29", "30", "31"]), "2"
    return " ".join(fields)


def random_plain_expression(rng: random.Random) -> str:
    """Fields of the forms ``parse_plain`` reads, now and then the whole range."""
    fields = []
    for index, (low, high) in enumerate(FIELD_RANGES):
        high = min(high, 6) if index == 4 else high
        items = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            a, b = sorted(rng.sample(range(low, high + 1), 2))
            n = rng.randint(1, high)
            items.append(
                rng.choice([str(a), f"{a}-{b}", f"{a}-{b}/{n}", f"*/{n}", f"{low}-{high}"])
            )
        fields.append(rng.choice(["*", ",".join(items), ",".join(items)]))
    return " ".join(fields)


def random_time(rng: random.Random) -> datetime:
    year = rng.choice([2024, 2025, 2026, 2027, 2028, 2099])
    t = datetime(year, 1, 1) + timedelta(seconds=rng.randint(0, 366 * 86400))
    shape = rng.random()
    if shape < 0.3:
        return t
    if shape < 0.45:
        return t.replace(second=59, microsecond=999_999)
    if shape < 0.55:  # just before or at the turn of a month
        return t.replace(day=1, hour=0, minute=0) - timedelta(microseconds=rng.choice([0, 1]))
    return t.replace(microsecond=rng.randint(0, 999_999))


def croniter_next(expression: str, t: datetime) -> datetime | None:
    iterator = croniter(expression, datetime(2026, 1, 1, tzinfo=UTC))
    iterator.set_current(t, force=True)
    try:
        found: datetime = iterator.get_next(datetime)
    except CroniterBadDateError:
        return None
    return found


def parsed(expression: str) -> PlainCron | None:
    return plain_cron(croniter(expression, datetime(2026, 1, 1, tzinfo=UTC)))


@pytest.mark.parametrize("seed", range(4))
def test_random_expressions_fire_when_croniter_says(seed: int) -> None:
    rng = random.Random(seed)
    compared = 0
    while compared < 1500:
        expression = random_expression(rng)
        try:
            plain = parsed(expression)
        except Exception:  # croniter refuses it: nothing to walk
            continue
        if plain is None:
            continue
        for _ in range(10):
            t = random_time(rng)
            found = plain.next_after(t)
            expected = croniter_next(expression, t)
            if found is None:  # left to croniter: only when there is no fire time near
                assert expected is None or expected.year - t.year >= 8, (expression, t)
                continue
            assert found == expected, (expression, t, found, expected)
            compared += 1


@pytest.mark.parametrize(
    ("expression", "t", "expected"),
    [
        ("0 12 29 2 *", datetime(2025, 3, 1), datetime(2028, 2, 29, 12)),
        ("30 9 * * *", datetime(2026, 5, 4, 9, 30), datetime(2026, 5, 5, 9, 30)),
        ("30 9 * * *", datetime(2026, 5, 4, 9, 29, 59, 999_999), datetime(2026, 5, 4, 9, 30)),
        ("*/15 * * * *", datetime(2026, 12, 31, 23, 59, 59), datetime(2027, 1, 1)),
        ("0 9 13 * 5", datetime(2026, 2, 6, 10), datetime(2026, 2, 13, 9)),  # Friday the 13th
        ("0 9 13 * 5", datetime(2026, 2, 13, 10), datetime(2026, 2, 20, 9)),  # or any Friday
        ("0 0 31 * *", datetime(2026, 4, 1), datetime(2026, 5, 31)),
        ("0 0 * * 0", datetime(2026, 1, 1), datetime(2026, 1, 4)),
        ("0 0 * * 7", datetime(2026, 1, 1), datetime(2026, 1, 4)),
    ],
)
def test_edges(expression: str, t: datetime, expected: datetime) -> None:
    assert croniter_next(expression, t) == expected
    plain = parsed(expression)
    assert plain is None or plain.next_after(t) == expected


def test_a_date_that_never_comes_is_left_to_croniter() -> None:
    plain = parsed("0 0 30 2 *")
    assert plain is not None and plain.next_after(datetime(2026, 1, 1)) is None
    assert (
        CronSchedule(expression="0 0 30 2 *").next_after(datetime(2026, 1, 1, tzinfo=UTC)) is None
    )


@pytest.mark.parametrize(
    "expression", ["0 0 l * *", "0 0 15w * *", "0 0 * * 1#2", "0 0 * * l5", "0 0 * * * 30"]
)
def test_what_is_not_plain_is_refused(expression: str) -> None:
    assert parsed(expression) is None


def test_cron_schedules_answer_the_same_with_and_without_the_direct_walk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(18)
    cases = []
    while len(cases) < 400:
        expression = random_expression(rng)
        try:
            schedule = CronSchedule(expression=expression)
        except ValueError:
            continue
        t = random_time(rng).replace(tzinfo=UTC)
        cases.append(
            (
                schedule,
                t,
                schedule.next_after(t),
                schedule.count_between(t, t + timedelta(days=3), cap=50),
            )
        )
    monkeypatch.setattr(schedules, "_plain", lambda expression: None)
    for schedule, t, found, count in cases:
        assert schedule.next_after(t) == found, (schedule, t)
        assert schedule.count_between(t, t + timedelta(days=3), cap=50) == count, (schedule, t)


def croniter_plain(expression: str) -> PlainCron | str | None:
    """croniter's reading of ``expression`` as a PlainCron; "refused" when it refuses it."""
    try:
        return parsed(expression)
    except Exception:
        return "refused"


def test_plain_expressions_are_read_as_croniter_reads_them() -> None:
    """Every field form ``parse_plain`` takes, alone and with the other day field restricted
    or not (cron's day rule), and random whole expressions: what it reads, croniter accepts
    and expands the same; what it leaves, it leaves whole."""
    expressions = []
    for index, (low, high) in enumerate(FIELD_RANGES):
        high = min(high, 6) if index == 4 else high
        items = ["*", *(f"*/{n}" for n in (1, 2, 5, 7, 13, high, high + 1, 100))]
        items += [str(v) for v in range(low - 1, high + 3)]
        items += [f"{a}-{b}" for a in range(low - 1, high + 2) for b in range(a, high + 2)][::7]
        items += [f"{a}-{b}/{n}" for a, b, n in ((low, high, 2), (low + 1, high, 3), (1, 4, 9))]
        items += [f"{low}/{2}", f"0{low}", f"{low},{high}", f"{low}-{high}", "5-5", "1,*", ""]
        for item in items:
            for other_day in ("*", "1", "*/2"):
                fields = ["*", "*", "*", "*", "*"]
                fields[index] = item
                if index in (2, 4):
                    fields[6 - index] = other_day
                expressions.append(" ".join(fields).strip())
    rng = random.Random(7)
    expressions += [random_expression(rng) for _ in range(1000)]
    expressions += [random_plain_expression(rng) for _ in range(2000)]
    read = 0
    for expression in expressions:
        plain = parse_plain(expression)
        if plain is not None:
            assert croniter_plain(expression) == plain, expression
            read += 1
    assert read > 1500


def test_the_bench_file_expressions_are_plain() -> None:
    from bench.runtime_adds import task_document

    expressions = {t["cron"] for t in task_document(2000)["tasks"]}
    for expression in expressions:
        assert parse_plain(expression) is not None, expression
        assert croniter_plain(expression) == parse_plain(expression), expression


ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Asia/Tokyo",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "Europe/Dublin",  # "negative" DST in the tz database
    "America/Santiago",
    "Pacific/Apia",  # skipped a whole day (2011)
]


def transitions(zone: str) -> list[datetime]:
    """The instants (UTC, to the hour) at which ``zone``'s UTC offset changes, 2010-2029."""
    tz = ZoneInfo(zone)
    found, t = [], datetime(2010, 1, 1, tzinfo=UTC)
    before = t.astimezone(tz).utcoffset()
    while t.year < 2030:
        t += timedelta(hours=1)
        offset = t.astimezone(tz).utcoffset()
        if offset != before:
            found.append(t)
            before = offset
    return found


def test_zoned_schedules_answer_the_same_with_and_without_the_direct_walk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a time zone the direct walk answers only when no DST change can decide the fire
    time; around transitions (within a day of one) and elsewhere, croniter's DST rules and
    the direct walk give the same fire times."""
    rng = random.Random(29)
    near = {zone: transitions(zone) for zone in ZONES}
    fixed = ["30 2 * * *", "0 2 * * *", "*/30 * * * *", "15 1 * * *", "0 3 * * *", "30 1,2 * * *"]
    fixed += ["0 * * * *", "45 * * * *", "*/15 * * * *", "0 1-4 * * *", "30 23 * * *"]
    cases = []
    while len(cases) < 3000:
        expression = rng.choice(fixed) if rng.random() < 0.5 else random_plain_expression(rng)
        zone = rng.choice(ZONES)
        try:
            schedule = CronSchedule(expression=expression, timezone=zone)
        except ValueError:
            continue
        if near[zone] and rng.random() < 0.7:
            hours = rng.choice([3, 26])  # mostly around the change itself
            offset = timedelta(
                minutes=rng.randint(-hours * 60, hours * 60), seconds=rng.choice([0, 59])
            )
            t = rng.choice(near[zone]) + offset
        else:
            t = random_time(rng).replace(tzinfo=UTC)
        cases.append((schedule, t, schedule.next_after(t)))
    monkeypatch.setattr(schedules, "_plain", lambda expression: None)
    for schedule, t, found in cases:
        assert schedule.next_after(t) == found, (schedule, t)
