"""The next fire time of a plain cron expression, found without croniter's stepping.

croniter finds the next fire time by adjusting one field at a time with ``relativedelta``
arithmetic (~80 us a call); a scheduler asks for one per distinct new schedule at start-up
(~6,000 of them, 0.5 s, for a 10,000-task file) and after every cron run. What it finds,
for the expressions most files hold, is simply the first whole minute after ``t`` whose
minute, hour, month and day match the expanded fields, the day by day-of-month *or*
day-of-week when both are restricted (cron's rule), *and* when one is ``*``.
:class:`PlainCron` computes that directly from croniter's own expansion of the expression
(the same sets, so the parsing rules stay croniter's).

Only five fields of plain numbers are taken (no ``L``, ``W`` or ``#``), walked as naive
times: UTC, or a zone's wall time, whose answer the caller keeps only where no DST change
can decide it (``schedules._next_plain``; croniter's DST rules decide the rest). A search
that finds nothing within :data:`SEARCH_MONTHS` (``0 0 30 2 *``, say) answers None: the
caller then asks croniter, which has the last word.

The fields come from croniter's expansion (:func:`plain_cron`) or, for the plainest forms
(numbers, ranges, steps, lists; :func:`parse_plain`), are read directly as croniter reads
them: its parse (~90 us an expression) was 0.5 s of a 10,000-task file's start-up.
tests/core/test_cron_walk.py compares both readings, and both walks, on many expressions
and start times.
"""

from __future__ import annotations

import bisect
import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = ["SEARCH_MONTHS", "PlainCron", "parse_plain", "plain_cron"]

#: How many months the direct search looks at before leaving the answer to croniter: nine
#: years, enough for the rarest plain date (29 February of a leap year, up to 8 years on).
SEARCH_MONTHS = 9 * 12
#: Past this year the float timestamps croniter converts through lose microseconds.
_LAST_YEAR = 2199
_MINUTE = timedelta(minutes=1)
#: The lowest and highest value of each field: minute, hour, day, month, day of week.
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


@dataclass(frozen=True)
class PlainCron:
    """The expanded fields of a plain five-field expression (None: every value)."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int] | None
    months: frozenset[int] | None
    weekdays: frozenset[int] | None  # 0 is Sunday, as cron counts

    def next_after(self, t: datetime) -> datetime | None:
        """The first fire time strictly after the naive ``t`` (seconds and microseconds
        count: the next whole minute is the first candidate); None when the search of
        :data:`SEARCH_MONTHS` months finds none, or ``t`` is past its years."""
        if t.year > _LAST_YEAR:
            return None
        start = t.replace(second=0, microsecond=0) + _MINUTE
        year, month, day = start.year, start.month, start.day
        hour, minute = start.hour, start.minute
        for _ in range(SEARCH_MONTHS):
            if self.months is None or month in self.months:
                last_day = calendar.monthrange(year, month)[1]
                while day <= last_day:
                    if self._day_matches(year, month, day):
                        found = self._time_from(hour, minute)
                        if found is not None:
                            return datetime(year, month, day, found[0], found[1])
                    day += 1
                    hour = minute = 0
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            day, hour, minute = 1, 0, 0
        return None

    def _day_matches(self, year: int, month: int, day: int) -> bool:
        days, weekdays = self.days, self.weekdays
        if days is None:
            return weekdays is None or (calendar.weekday(year, month, day) + 1) % 7 in weekdays
        if weekdays is None:
            return day in days
        # Both restricted: either one matching is enough (cron's day rule).
        return day in days or (calendar.weekday(year, month, day) + 1) % 7 in weekdays

    def _time_from(self, hour: int, minute: int) -> tuple[int, int] | None:
        """The first (hour, minute) of the fields at or after ``hour:minute``, same day."""
        hours, minutes = self.hours, self.minutes
        at = bisect.bisect_left(hours, hour)
        if at == len(hours):
            return None
        if hours[at] == hour:
            later = bisect.bisect_left(minutes, minute)
            if later < len(minutes):
                return hour, minutes[later]
            at += 1
            if at == len(hours):
                return None
        return hours[at], minutes[0]


def plain_cron(iterator: Any) -> PlainCron | None:
    """:class:`PlainCron` of a ``croniter`` built with its defaults (day-of-month or
    day-of-week, no cron bug, at most 50 years between fires), from its expansion; None when
    the expression is not a plain five-field one."""
    expanded = iterator.expanded
    if (
        len(expanded) != len(_RANGES)
        or iterator.nth_weekday_of_month
        or getattr(iterator, "nearest_weekday", None)
        or not getattr(iterator, "_day_or", False)
        or getattr(iterator, "_implement_cron_bug", True)
        or getattr(iterator, "_expand_from_start_time", True)
        or getattr(iterator, "_max_years_between_matches", None) != 50
    ):
        return None
    fields: list[tuple[int, ...] | None] = []
    for values, (low, high) in zip(expanded, _RANGES, strict=True):
        if values == ["*"]:
            fields.append(None)
        elif values and all(type(v) is int and low <= v <= high for v in values):
            fields.append(tuple(sorted(set(values))))
        else:
            return None
    return _from_fields(fields)


def _from_fields(fields: list[tuple[int, ...] | None]) -> PlainCron:
    minutes, hours, days, months, weekdays = fields
    return PlainCron(
        minutes=minutes if minutes is not None else _ALL_MINUTES,
        hours=hours if hours is not None else _ALL_HOURS,
        days=None if days is None else frozenset(days),
        months=None if months is None else frozenset(months),
        weekdays=None if weekdays is None else frozenset(weekdays),
    )


_ALL_MINUTES = tuple(range(60))
_ALL_HOURS = tuple(range(24))
#: The characters of a plain expression (ASCII: croniter splits fields on ASCII blanks).
_PLAIN_CHARACTERS = frozenset("0123456789*,-/ \t")
_DAY, _WEEKDAY = 2, 4


def parse_plain(expression: str) -> PlainCron | None:
    """:class:`PlainCron` of ``expression`` read directly, when every field is ``*`` or a
    list of ``N``, ``N-M`` (N < M), ``N-M/S`` and ``*/S`` within the field's range (the day
    of week 0-6): what croniter accepts and expands, for these forms, as the values of
    ``range(N, M + 1, S)``, a field holding them all counting as ``*`` (except the day of
    month, or of week, while the other day field has no ``*``: cron's day rule then keeps
    it). None for anything else (names, ``L``, ``N/S``, ``7``, an error...): croniter reads
    it. tests/core/test_cron_walk.py checks this against croniter's own expansion."""
    if not _PLAIN_CHARACTERS.issuperset(expression):
        return None
    texts = expression.split()
    if len(texts) != len(_RANGES):
        return None
    fields: list[tuple[int, ...] | None] = []
    for index, (text, (low, high)) in enumerate(zip(texts, _RANGES, strict=True)):
        if text == "*":
            fields.append(None)
            continue
        values = _field_values(text, low, high)
        if values is None:
            return None
        other = texts[_WEEKDAY] if index == _DAY else texts[_DAY] if index == _WEEKDAY else "*"
        whole = len(values) == high - low + 1 and "*" in other
        fields.append(None if whole else tuple(sorted(values)))
    return _from_fields(fields)


def _field_values(text: str, low: int, high: int) -> set[int] | None:
    """The values of one plain field other than ``*`` (see :func:`parse_plain`), or None."""
    values: set[int] = set()
    for item in text.split(","):
        bounds, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                return None
            step = int(step_text)
        if bounds == "*" and slash:
            first, last = low, high
        else:
            first_text, dash, last_text = bounds.partition("-")
            if not (first_text.isdigit() and dash and last_text.isdigit()):
                if slash or not bounds.isdigit():  # "N/S" and the rest: croniter's
                    return None
                first_text = last_text = bounds
            first, last = int(first_text), int(last_text)
            if first < low or last > high or (dash and first >= last):
                return None
        values.update(range(first, last + 1, step))
    return values
