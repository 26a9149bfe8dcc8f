"""Alerting per task: the ``alerts:`` block of a task file and the rules that judge it.

A task (or its file's ``defaults:``) may set its own alert thresholds::

    alerts:
      failures: 1                # consecutive final failures
      late_after: 10m            # overdue by more than this
      no_success_for: 2d         # no success for longer than this
      max_duration: 30m          # a finished run took longer
      min_duration: 2s           # a success finished faster: suspicious
      slower_than_usual: 3       # a finished run took over 3x the task's median
      deadline: {at: "06:00", timezone: Europe/Berlin}
      severity: critical         # critical | warning | info

Each field becomes one series of ``scheduler_task_alert_threshold{task, kind}`` (the kinds of
:data:`THRESHOLD_KINDS`, in their units) or ``scheduler_task_alert_policy_info{task,
severity}``; the shipped Prometheus rules use a task's value where it has one and the global
``schedctl:threshold:*`` value otherwise. The same thresholds open the SQL alarms, judged by
the pure rules here (:func:`too_fast`, :func:`too_slow`, :func:`deadline_missed`), so the
JSON API, the CLI and the dashboards show what Prometheus would page on. No SQL, no I/O.

"Slower than usual" compares with the task's median duration, read from its persisted
duration histogram exactly as PromQL's ``histogram_quantile(0.5, ...)`` reads the exported
buckets (:meth:`scheduler_core.histograms.HistogramCounts.quantile`), once the task has
:data:`MIN_RUNS_FOR_USUAL` finished runs.

A deadline (``at`` in ``timezone``, the task's time zone by default) is missed when no success
finished since the task's last tick before the latest deadline that has passed. So before the
first deadline nothing is missed; a success after the deadline clears it (the SQL alarm keeps
when it was missed); a task created after that tick is not judged until the next deadline.
The deadline is a wall-clock time: across a DST change it stays at 06:00 local, whichever
UTC offset that day has.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, time, timedelta
from typing import Any, Final

from scheduler_core.durations import parse_duration
from scheduler_core.histograms import HistogramCounts
from scheduler_core.schedules import Schedule, load_timezone

__all__ = [
    "ALERT_KEYS",
    "MIN_RUNS_FOR_USUAL",
    "SEVERITIES",
    "THRESHOLD_KINDS",
    "AlertPolicy",
    "Deadline",
    "deadline_missed",
    "latest_deadline",
    "merge_alert_policies",
    "parse_alert_policy",
    "too_fast",
    "too_slow",
    "usual_duration",
]

SEVERITIES: Final[tuple[str, ...]] = ("critical", "warning", "info")
#: The fields of an ``alerts:`` block.
ALERT_KEYS: Final[frozenset[str]] = frozenset(
    {
        "failures", "late_after", "no_success_for", "max_duration", "min_duration",
        "slower_than_usual", "deadline", "severity",
    }
)  # fmt: skip
#: The ``kind`` label values of ``scheduler_task_alert_threshold``, by the field that sets them.
THRESHOLD_KINDS: Final[dict[str, str]] = {
    "failures": "consecutive_failures",
    "late_after": "late_seconds",
    "no_success_for": "no_success_seconds",
    "max_duration": "max_duration_seconds",
    "min_duration": "min_duration_seconds",
    "slower_than_usual": "slower_than_usual_factor",
}
#: Finished runs a task needs before "slower than usual" judges it: fewer say little about
#: what is usual (the ``schedctl:threshold:slower_than_usual_min_runs`` recording rule).
MIN_RUNS_FOR_USUAL: Final[int] = 20
FAILURES_RANGE: Final[tuple[int, int]] = (1, 1000)
FACTOR_RANGE: Final[tuple[float, float]] = (1.0, 1000.0)
DEADLINE_KEYS: Final[frozenset[str]] = frozenset({"at", "timezone"})

_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?")
_DAY = timedelta(days=1)


@dataclass(frozen=True, kw_only=True)
class Deadline:
    """A daily wall-clock time a success must have finished by; ``timezone`` None means the
    task's own time zone."""

    at: time
    timezone: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at.isoformat(timespec="seconds")}
        if self.timezone is not None:
            out["timezone"] = self.timezone
        return out


@dataclass(frozen=True, kw_only=True)
class AlertPolicy:
    """A task's alert thresholds (seconds for durations); None means "the global default"."""

    failures: int | None = None
    late_after: float | None = None
    no_success_for: float | None = None
    max_duration: float | None = None
    min_duration: float | None = None
    slower_than_usual: float | None = None
    deadline: Deadline | None = None
    severity: str | None = None

    def is_empty(self) -> bool:
        return self == _EMPTY

    def thresholds(self) -> dict[str, float]:
        """``{kind: value}`` of the thresholds set, kinds of :data:`THRESHOLD_KINDS`."""
        out: dict[str, float] = {}
        for key, kind in THRESHOLD_KINDS.items():
            value = getattr(self, key)
            if value is not None:
                out[kind] = float(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The fields set, JSON-ready (durations in seconds); ``{}`` when none is."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = value.to_dict() if isinstance(value, Deadline) else value
        return out

    def to_json(self) -> str | None:
        """:meth:`to_dict` as JSON for the schedule row, None when nothing is set."""
        data = self.to_dict()
        return json.dumps(data, sort_keys=True, separators=(",", ":")) if data else None

    @classmethod
    def from_json(cls, text: str | None) -> AlertPolicy | None:
        """The policy stored by :meth:`to_json` (None for NULL), without validating again."""
        if not text:
            return None
        data = json.loads(text)
        deadline = data.pop("deadline", None)
        return cls(
            **data,
            deadline=None
            if deadline is None
            else Deadline(at=time.fromisoformat(deadline["at"]), timezone=deadline.get("timezone")),
        )


_EMPTY = AlertPolicy()


# --- parsing -------------------------------------------------------------------------------

Issue = tuple[str, object, str]  # (field, value, message)


def parse_alert_policy(value: object, *, prefix: str = "alerts") -> tuple[AlertPolicy, list[Issue]]:
    """The ``alerts:`` block ``value`` parsed, and the problems found as (field, value,
    message) with fields named ``alerts.<key>``. Fields with problems are left unset."""
    issues: list[Issue] = []
    if value is None:
        return _EMPTY, issues
    if not isinstance(value, Mapping):
        return _EMPTY, [(prefix, value, "must be a mapping of alert fields, like {failures: 1}")]
    values: dict[str, Any] = {}
    for key in sorted(str(k) for k in value):
        if key not in ALERT_KEYS:
            issues.append((f"{prefix}.{key}", value[key], _unknown(key)))
    for key, parse in _PARSERS.items():
        if key not in value:
            continue
        raw = value[key]
        if raw is None:
            continue
        try:
            values[key] = parse(raw, f"{prefix}.{key}", issues)
        except ValueError as exc:
            issues.append((f"{prefix}.{key}", raw, str(exc)))
    low, high = values.get("min_duration"), values.get("max_duration")
    if low is not None and high is not None and low >= high:
        issues.append(
            (f"{prefix}.min_duration", value["min_duration"], "must be shorter than max_duration")
        )
        values.pop("min_duration")
    values = {k: v for k, v in values.items() if v is not None}
    return AlertPolicy(**values), issues


def merge_alert_policies(
    base: AlertPolicy, override: AlertPolicy, *, prefix: str = "alerts"
) -> tuple[AlertPolicy, list[Issue]]:
    """``override``'s fields over ``base``'s (a task's block over its file's defaults), and
    the problems of the result: a ``min_duration`` from one and a ``max_duration`` from the
    other that contradict each other are named like a contradiction within one block (the
    merged ``min_duration`` is left unset)."""
    changed = {f.name: getattr(override, f.name) for f in fields(override)}
    merged = replace(base, **{k: v for k, v in changed.items() if v is not None})
    low, high = merged.min_duration, merged.max_duration
    if low is None or high is None or low < high:
        return merged, []
    where = "the task" if override.min_duration is not None else "defaults"
    message = f"must be shorter than max_duration ({high:g}s); min_duration comes from {where}"
    return replace(merged, min_duration=None), [(f"{prefix}.min_duration", f"{low:g}s", message)]


def _unknown(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(ALERT_KEYS), n=1)
    return f"unknown alert field; did you mean {close[0]!r}?" if close else "unknown alert field"


def _failures(raw: object, field: str, issues: list[Issue]) -> int:
    low, high = FAILURES_RANGE
    if isinstance(raw, int) and not isinstance(raw, bool) and low <= raw <= high:
        return raw
    raise ValueError(f"must be a whole number from {low} to {high}")


def _duration(raw: object, field: str, issues: list[Issue]) -> float:
    return parse_duration(raw).total_seconds()


def _factor(raw: object, field: str, issues: list[Issue]) -> float:
    low, high = FACTOR_RANGE
    if isinstance(raw, int | float) and not isinstance(raw, bool) and low < raw <= high:
        return float(raw)
    raise ValueError(f"must be a number above {low:g} and at most {high:g}, like 3")


def _severity(raw: object, field: str, issues: list[Issue]) -> str:
    if raw in SEVERITIES:
        return str(raw)
    raise ValueError(f"must be one of {', '.join(SEVERITIES)}")


def _deadline(raw: object, field: str, issues: list[Issue]) -> Deadline | None:
    if isinstance(raw, str | int):
        raw = {"at": raw}
    if not isinstance(raw, Mapping):
        raise ValueError("must be a mapping like {at: '06:00', timezone: Europe/Berlin}")
    problems = len(issues)
    for key in sorted(str(k) for k in raw):
        if key not in DEADLINE_KEYS:
            issues.append((f"{field}.{key}", raw[key], "unknown field; expected at or timezone"))
    at = raw.get("at")
    parsed: time | None = None
    if isinstance(at, int) and not isinstance(at, bool):
        # YAML 1.1 reads an unquoted 06:00 as the sexagesimal number 360 (minutes).
        at = f"{at // 60:02d}:{at % 60:02d}" if 0 <= at < 24 * 60 else str(at)
    match = _CLOCK.fullmatch(at) if isinstance(at, str) else None
    if match is None:
        issues.append((f"{field}.at", raw.get("at"), "must be a time of day like '06:00'"))
    else:
        parsed = time(int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))
    zone = raw.get("timezone")
    if zone is not None:
        try:
            load_timezone(zone)
        except ValueError as exc:
            issues.append((f"{field}.timezone", zone, str(exc)))
    if len(issues) > problems or parsed is None:
        return None
    return Deadline(at=parsed, timezone=None if zone is None else str(zone))


_PARSERS = {
    "failures": _failures,
    "late_after": _duration,
    "no_success_for": _duration,
    "max_duration": _duration,
    "min_duration": _duration,
    "slower_than_usual": _factor,
    "deadline": _deadline,
    "severity": _severity,
}


# --- the rules -----------------------------------------------------------------------------


def too_fast(
    *, policy: AlertPolicy | None, last_status: str | None, last_duration: float | None
) -> bool:
    """The latest finished run succeeded in less than the task's ``min_duration``."""
    return (
        policy is not None
        and policy.min_duration is not None
        and last_status == "success"
        and last_duration is not None
        and last_duration < policy.min_duration
    )


def usual_duration(duration: HistogramCounts) -> float | None:
    """The task's median run duration, once it has :data:`MIN_RUNS_FOR_USUAL` runs (else None):
    what PromQL's ``histogram_quantile(0.5, ...)`` reads from the same buckets."""
    if duration.count < MIN_RUNS_FOR_USUAL:
        return None
    return duration.quantile(0.5)


def too_slow(
    *, policy: AlertPolicy | None, last_duration: float | None, usual: float | None
) -> bool:
    """The latest finished run took longer than ``max_duration``, or longer than
    ``slower_than_usual`` times the ``usual`` (median) duration when that is known."""
    if policy is None or last_duration is None:
        return False
    if policy.max_duration is not None and last_duration > policy.max_duration:
        return True
    return (
        policy.slower_than_usual is not None
        and usual is not None
        and last_duration > policy.slower_than_usual * usual
    )


def latest_deadline(deadline: Deadline, *, now: datetime, timezone: str) -> datetime:
    """The latest moment at or before ``now`` when ``deadline`` fell (aware), in its zone
    (``timezone``, the task's, when the deadline names none)."""
    zone = load_timezone(deadline.timezone or timezone)
    local_day = now.astimezone(zone).date()
    for day in (local_day, local_day - _DAY, local_day - 2 * _DAY):
        # A wall time that a DST jump skips (02:30 on the spring-forward day) is read with
        # the offset before the jump, as zoneinfo does: it falls an hour later on the clock.
        moment = datetime.combine(day, deadline.at, tzinfo=zone)
        if moment <= now:
            return moment
    raise AssertionError("a deadline falls once a day")  # pragma: no cover


def deadline_missed(
    *,
    deadline: Deadline | None,
    schedule: Schedule,
    timezone: str,
    now: datetime,
    last_success_at: datetime | None,
    created_at: datetime | None = None,
) -> bool:
    """True when the latest deadline passed without a success since the task's last tick
    before it (see the module docstring)."""
    if deadline is None:
        return False
    due = latest_deadline(deadline, now=now, timezone=timezone)
    tick = schedule.last_before(due)
    if tick is None or (created_at is not None and created_at > tick):
        return False
    return last_success_at is None or last_success_at < tick
