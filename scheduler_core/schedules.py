"""Schedules: when a task fires. ``cron`` (time zones, DST), ``every`` (interval) and ``at``.

Every schedule answers ``next_after(t)``: the first fire time strictly after ``t``. They are
pure functions of their definition, so any instance computes the same ticks.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from scheduler_core.cron_walk import PlainCron, parse_plain, plain_cron

__all__ = [
    "AtSchedule",
    "CronSchedule",
    "IntervalSchedule",
    "Schedule",
    "cron_problem",
    "load_timezone",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def load_timezone(name: str) -> ZoneInfo:
    """Return the IANA zone ``name``; ValueError naming it when it does not exist."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin')"
        ) from None


class Schedule(Protocol):
    """When a task fires."""

    @property
    def kind(self) -> str:
        """``cron``, ``every`` or ``at``."""
        ...

    def next_after(self, t: datetime) -> datetime | None:
        """The first fire time strictly after ``t`` (aware UTC), or None when there is none."""
        ...

    def count_between(self, after: datetime, until: datetime, *, cap: int) -> int:
        """How many fire times lie in ``(after, until]``, counting at most ``cap``."""
        ...

    def last_before(self, t: datetime) -> datetime | None:
        """The last fire time strictly before ``t``, or None."""
        ...

    def describe(self) -> str:
        """A short human form, used as the ``schedule`` label and in tables."""
        ...

    @property
    def expected_interval(self) -> float | None:
        """Typical seconds between fires (None for one-time schedules)."""
        ...


@functools.lru_cache(maxsize=16384)
def _parsed_cron(expression: str) -> croniter:
    """croniter's parse of ``expression``, done once per expression, and only where croniter
    is needed: to check or walk an expression that is not plain (``_plain``), to walk one
    back, or in a time zone other than UTC. Parsing (``_expand``) is most of a croniter's
    cost (~90 us). Never iterated itself: :meth:`CronSchedule._walk` iterates a shallow
    copy (the expanded fields are only read; each step copies them)."""
    return croniter(expression, datetime(2026, 1, 1, tzinfo=UTC))


@functools.lru_cache(maxsize=16384)
def _plain(expression: str) -> PlainCron | None:
    """The expression's fields for :class:`PlainCron`'s direct walk, read directly when it
    is plain (``parse_plain``: ~10x cheaper than croniter's parse, which then never runs
    for it unless a walk back or a time zone needs croniter), else from croniter's
    expansion. None: croniter walks it (or refuses it)."""
    plain = parse_plain(expression)
    if plain is None:
        with contextlib.suppress(*_CRON_ERRORS):
            plain = plain_cron(_parsed_cron(expression))
    return plain


_CRON_ERRORS = (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError)


@functools.lru_cache(maxsize=16384)
def cron_problem(expression: str) -> str | None:
    """What croniter finds wrong with ``expression``, or None. A plain expression (which
    croniter accepts, and expands as ``parse_plain`` does) is not given to croniter."""
    if _plain(expression) is not None:
        return None
    try:
        _parsed_cron(expression)
    except _CRON_ERRORS as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=16384)
def _cron_interval(schedule: CronSchedule) -> float | None:
    """Seconds between the first two fires after a fixed Monday (the same on every instance)."""
    start = datetime(2026, 1, 5, tzinfo=UTC)
    first = schedule.next_after(start)
    second = schedule.next_after(first) if first else None
    if first is None or second is None:
        return None
    return (second - first).total_seconds()


@dataclass(frozen=True, kw_only=True)
class CronSchedule:
    """A 5-field (or 6-field, with seconds last) cron expression in an IANA time zone.

    DST: a wall time skipped by spring-forward fires at the first instant after the jump; a
    wall time repeated by fall-back fires once when the hour field is fixed (``30 2 * * *``)
    and in both occurrences when it is a wildcard or step (``*/30 * * * *``), as cron does.
    """

    expression: str
    timezone: str = "UTC"
    kind: str = field(default="cron", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str) or not self.expression.strip():
            raise ValueError(f"invalid cron expression {self.expression!r}")
        fields = self.expression.split()
        if len(fields) not in (5, 6):
            raise ValueError(
                f"invalid cron expression {self.expression!r}: expected 5 fields "
                "(minute hour day month weekday) or 6 (with seconds last)"
            )
        problem = cron_problem(self.expression)
        if problem is not None:
            raise ValueError(f"invalid cron expression {self.expression!r}: {problem}")
        load_timezone(self.timezone)

    @property
    def _fixed_hour(self) -> bool:
        hour = self.expression.split()[1]
        return not (hour == "*" or "/" in hour or "-" in hour or "," in hour)

    def _walk(self, t: datetime, *, forward: bool) -> datetime | None:
        """The nearest fire time strictly after (or before) ``t``, DST rules applied.

        In UTC croniter walks naive (UTC) times: the same fire times, without its time-zone
        steps (localising, DST checks), which are a fifth of a walk; UTC has no DST. Forward,
        a plain expression's next fire time is found without croniter (``_next_plain``)
        unless a DST change may decide it."""
        utc = self.timezone == "UTC"
        if forward and (plain := _plain(self.expression)) is not None:
            found = _next_plain(plain, t, None if utc else load_timezone(self.timezone))
            if found is not None:
                return found
        zone = load_timezone(self.timezone)
        it = copy.copy(_parsed_cron(self.expression))
        it.set_current(
            t.astimezone(UTC).replace(tzinfo=None) if utc else t.astimezone(zone), force=True
        )
        fixed_hour = not utc and self._fixed_hour
        for _ in range(4):
            try:
                candidate: datetime = it.get_next(datetime) if forward else it.get_prev(datetime)
            except CroniterBadDateError:
                return None
            if candidate.tzinfo is None:
                candidate = candidate.replace(tzinfo=zone)
            if fixed_hour and _is_second_occurrence(candidate, zone):
                continue
            result = candidate.astimezone(UTC)
            if (result > t) if forward else (result < t):
                return result
        return None

    def next_after(self, t: datetime) -> datetime | None:
        return self._walk(t, forward=True)

    def count_between(self, after: datetime, until: datetime, *, cap: int) -> int:
        count = 0
        current: datetime | None = after
        while count < cap:
            current = self.next_after(current) if current is not None else None
            if current is None or current > until:
                break
            count += 1
        return count

    def last_before(self, t: datetime) -> datetime | None:
        return self._walk(t, forward=False)

    def describe(self) -> str:
        return (
            f"cron {self.expression} {self.timezone}"
            if self.timezone != "UTC"
            else f"cron {self.expression}"
        )

    @property
    def expected_interval(self) -> float | None:
        return _cron_interval(self)


def _next_plain(plain: PlainCron, t: datetime, zone: ZoneInfo | None) -> datetime | None:
    """croniter's next fire time after ``t`` for a plain expression, found directly
    (scheduler_core.cron_walk) in UTC (``zone`` None) or in ``zone``'s wall time; None when
    croniter must say: no fire time near, or a DST change may decide it. croniter looks
    for the next matching wall time after ``t``'s and keeps it as it is when that wall time
    exists once and has ``t``'s UTC offset; otherwise its DST rules apply (and those of
    :meth:`CronSchedule._walk`, for a repeated wall time)."""
    if zone is None:
        found = plain.next_after(t.astimezone(UTC).replace(tzinfo=None))
        result = None if found is None else found.replace(tzinfo=UTC)
    else:
        local = t.astimezone(zone)
        found = plain.next_after(local.replace(tzinfo=None))
        if found is None:
            return None
        candidate = found.replace(tzinfo=zone)
        offset = candidate.utcoffset()
        if offset != local.utcoffset() or offset != found.replace(tzinfo=zone, fold=1).utcoffset():
            return None
        result = candidate.astimezone(UTC)
    return result if result is not None and result > t else None


def _is_second_occurrence(local: datetime, zone: ZoneInfo) -> bool:
    """True when ``local`` is the later of two identical wall times (DST fall-back)."""
    naive = local.replace(tzinfo=None)
    first = naive.replace(tzinfo=zone, fold=0).utcoffset()
    second = naive.replace(tzinfo=zone, fold=1).utcoffset()
    return (
        first != second
        and local.utcoffset() == second
        and first is not None
        and second is not None
        and first > second
    )


@dataclass(frozen=True, kw_only=True)
class IntervalSchedule:
    """Every ``every`` seconds, on a grid anchored at ``anchor`` (default: the Unix epoch).

    The grid makes the schedule stateless: every instance computes the same ticks, and the
    number of ticks in a gap is arithmetic, however long the gap. ``jitter`` shifts each tick
    by a stable pseudo-random amount in ``[0, jitter)`` derived from the task name and tick.
    """

    every: float
    anchor: datetime = _EPOCH
    jitter: float = 0.0
    seed: str = ""
    kind: str = field(default="every", init=False)

    def __post_init__(self) -> None:
        if not math.isfinite(self.every) or self.every <= 0:
            raise ValueError(f"interval must be greater than zero, got {self.every!r}")
        if not 0 <= self.jitter < self.every:
            raise ValueError(
                f"jitter must be at least 0 and less than the interval, got {self.jitter!r}"
            )
        if self.anchor.tzinfo is None:
            raise ValueError(f"anchor must have a time zone, got {self.anchor.isoformat()!r}")

    def _offset(self, k: int) -> float:
        if not self.jitter:
            return 0.0
        digest = hashlib.blake2b(f"{self.seed}:{k}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 * self.jitter

    def _tick(self, k: int) -> datetime:
        return self.anchor + timedelta(seconds=k * self.every + self._offset(k))

    def _index_at_or_before(self, t: datetime) -> int:
        return math.floor((t - self.anchor).total_seconds() / self.every)

    def next_after(self, t: datetime) -> datetime | None:
        k = self._index_at_or_before(t)
        if not self.jitter:  # the common case, asked once per run: ``_tick`` inlined
            anchor, every = self.anchor, self.every
            for candidate_k in (k, k + 1, k + 2):
                tick = anchor + timedelta(seconds=candidate_k * every)
                if tick > t:
                    return tick
            return None  # unreachable, as below
        for candidate_k in (k, k + 1, k + 2):
            tick = self._tick(candidate_k)
            if tick > t:
                return tick
        return None  # unreachable: tick k+2 is at least one interval after t

    def count_between(self, after: datetime, until: datetime, *, cap: int) -> int:
        first = self.next_after(after)
        if first is None or first > until:
            return 0
        # Offsets are below one interval, so ticks are increasing and floor() recovers k.
        k_first = self._index_at_or_before(first)
        k_last = self._index_at_or_before(until)
        if self._tick(k_last) > until:
            k_last -= 1
        return min(cap, k_last - k_first + 1)

    def last_before(self, t: datetime) -> datetime | None:
        k = self._index_at_or_before(t)
        for candidate_k in (k, k - 1, k - 2):
            tick = self._tick(candidate_k)
            if tick < t:
                return tick
        return None

    def describe(self) -> str:
        return f"every {_compact_seconds(self.every)}"

    @property
    def expected_interval(self) -> float | None:
        return self.every


@dataclass(frozen=True, kw_only=True)
class AtSchedule:
    """Once, at ``at``."""

    at: datetime
    kind: str = field(default="at", init=False)

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError(f"'at' needs a time zone offset, got {self.at.isoformat()!r}")

    def next_after(self, t: datetime) -> datetime | None:
        return self.at.astimezone(UTC) if self.at > t else None

    def count_between(self, after: datetime, until: datetime, *, cap: int) -> int:
        return 1 if after < self.at <= until and cap > 0 else 0

    def last_before(self, t: datetime) -> datetime | None:
        return self.at.astimezone(UTC) if self.at < t else None

    def describe(self) -> str:
        return f"at {self.at.isoformat()}"

    @property
    def expected_interval(self) -> float | None:
        return None


def _compact_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"
