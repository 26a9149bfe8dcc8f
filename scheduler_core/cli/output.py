"""How ``schedctl`` prints: aligned tables, times with "in 5m" / "3h ago", and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from scheduler_core.durations import format_duration

__all__ = ["fmt_time", "print_json", "table"]


def fmt_time(value: datetime | None, *, now: datetime | None = None) -> str:
    if value is None:
        return "-"
    text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if now is not None:
        delta = (value - now).total_seconds()
        rel = format_duration(abs(delta))
        text += f" ({'in ' + rel if delta >= 0 else rel + ' ago'})"
    return text


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    clean = [[str(c).replace("\n", " ") for c in row] for row in rows]
    for row in clean:
        for i, cell in enumerate(row):
            widths[i] = min(max(widths[i], len(cell)), 60)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c[:60].ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in clean)
    return "\n".join(out)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


def print_json(data: object) -> None:
    print(json.dumps(data, default=_json_default, indent=2, ensure_ascii=False))
