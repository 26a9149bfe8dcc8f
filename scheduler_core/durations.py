"""Parse human durations: ``500ms``, ``30s``, ``5m``, ``1h``, ``2d`` or plain seconds; and
"since" times, a duration back from now or an ISO time."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

__all__ = ["SINCE_FORMS", "format_duration", "parse_duration", "parse_since"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(value: object, *, allow_zero: bool = False) -> timedelta:
    """Return ``value`` as a timedelta; raise ValueError naming the value when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '30s', '5m' or seconds, got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(
                f"expected a duration like '500ms', '30s', '5m', '1h', '2d' or seconds, "
                f"got {value!r}"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"expected a duration like '30s', '5m' or seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be a positive, finite length of time, got {value!r}")
    if seconds == 0 and not allow_zero:
        raise ValueError(f"duration must be greater than zero, got {value!r}")
    if seconds > 10 * 365 * 86400:
        raise ValueError(f"duration is longer than ten years, got {value!r}")
    return timedelta(seconds=seconds)


def format_duration(seconds: float | None) -> str:
    """Render seconds compactly for tables (``1.2s``, ``3m04s``, ``2h05m``)."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


#: What a ``since`` may be, for messages: ``schedctl runs --since`` and the exporter's
#: ``/api/v1/tasks/{name}/runs?since=`` both parse it with :func:`parse_since`.
SINCE_FORMS = "a duration back from now like 1h or 2d, or an ISO time like 2026-03-01T12:00:00Z"


def parse_since(value: str, *, now: datetime) -> datetime:
    """``value`` as an aware UTC time: a duration back from ``now`` (``90m``, ``2d``, plain
    seconds) or an ISO-8601 time (one without an offset is UTC, like every time schedctl
    stores). Raises ValueError when it is neither."""
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected {SINCE_FORMS}, got {value!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
