"""Times and durations as the status page shows them: relative ("in 4 min", "3 h ago") next
to absolute UTC, and durations in the largest fitting unit."""

from __future__ import annotations

from datetime import UTC, datetime

from exporter.ui.markup import Markup, html

__all__ = ["absolute", "age", "duration", "relative", "time_cell"]


def duration(seconds: float | None) -> str:
    """``250 ms``, ``1.25 s``, ``3 min 20 s``, ``2 h 5 min``, ``3 d 4 h``; an em dash for None."""
    if seconds is None:
        return "\u2014"
    if seconds < 1:
        return "0 s" if seconds <= 0 else f"{max(1.0, seconds * 1000):.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    first = next(i for i, (count, _unit) in enumerate(parts) if count)
    shown = [f"{count} {unit}" for count, unit in parts[first : first + 2] if count]
    return " ".join(shown)


def age(seconds: float) -> str:
    """A short age: ``0.4 s``, ``3 s``, ``4 min 2 s``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds:.1f} s"
    return f"{int(seconds)} s" if seconds < 60 else duration(seconds)


def relative(when: datetime | None, now: datetime) -> str:
    """``in 4 min 10 s`` / ``3 h ago`` / ``now``; an em dash for None."""
    if when is None:
        return "\u2014"
    delta = (when - now).total_seconds()
    if abs(delta) < 1:
        return "now"
    shown = duration(abs(delta))
    return f"in {shown}" if delta > 0 else f"{shown} ago"


def absolute(when: datetime | None) -> str:
    """``2026-03-01 12:00:05 UTC``; an em dash for None."""
    if when is None:
        return "\u2014"
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def time_cell(when: datetime | None, now: datetime) -> Markup:
    """A ``<time>``: the relative time, and the absolute one under it (and as its title)."""
    if when is None:
        return Markup('<span class="none">\u2014</span>')
    return html(
        '<time datetime="{iso}" title="{abs}">{rel}<small>{abs}</small></time>',
        iso=when.isoformat(),
        abs=absolute(when),
        rel=relative(when, now),
    )
