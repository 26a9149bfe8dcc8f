"""Persisted histograms: fixed bucket bounds and the JSON form stored on each schedule row.

Stored form: ``{"buckets": [n0, n1, ..., n_inf], "sum": seconds, "count": n}`` where ``n_i``
counts observations in ``(bounds[i-1], bounds[i]]`` (not cumulative) and the last entry is
the ``+Inf`` bucket. The exporter turns it into cumulative Prometheus buckets.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DURATION_BUCKETS",
    "START_DELAY_BUCKETS",
    "HistogramCounts",
    "observe_json",
]

#: Upper bounds (seconds) for run durations: from sub-second callables to multi-hour backups.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800,
    3600, 7200, 21600,
)  # fmt: skip
#: Upper bounds (seconds) for start delay (actual start minus scheduled time).
START_DELAY_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class HistogramCounts:
    """Non-cumulative bucket counts (last one is +Inf), their sum and count."""

    bounds: tuple[float, ...]
    buckets: tuple[int, ...]
    sum: float
    count: int

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> HistogramCounts:
        return cls(bounds=tuple(bounds), buckets=(0,) * (len(bounds) + 1), sum=0.0, count=0)

    @classmethod
    def from_json(cls, text: str | None, bounds: Sequence[float]) -> HistogramCounts:
        """Parse the stored form; an empty or foreign-shaped value reads as an empty histogram."""
        if not text:
            return cls.empty(bounds)
        data = json.loads(text)
        buckets = data.get("buckets") or []
        if len(buckets) != len(bounds) + 1:
            return cls.empty(bounds)
        return cls(
            bounds=tuple(bounds),
            buckets=tuple(int(b) for b in buckets),
            sum=float(data.get("sum", 0.0)),
            count=int(data.get("count", 0)),
        )

    def to_json(self) -> str:
        return json.dumps(
            {"buckets": list(self.buckets), "sum": round(self.sum, 6), "count": self.count},
            separators=(",", ":"),
        )

    def observe(self, values: Iterable[float]) -> HistogramCounts:
        """Return a new histogram with ``values`` added."""
        buckets = list(self.buckets)
        total, count = self.sum, self.count
        for value in values:
            value = max(0.0, float(value))
            buckets[bisect.bisect_left(self.bounds, value)] += 1
            total += value
            count += 1
        return HistogramCounts(bounds=self.bounds, buckets=tuple(buckets), sum=total, count=count)

    def quantile(self, q: float) -> float | None:
        """The q-quantile, linearly interpolated inside its bucket (as histogram_quantile does).

        None when empty; observations in the +Inf bucket report the highest finite bound.
        """
        if self.count == 0:
            return None
        rank = q * self.count
        lower = 0.0
        seen = 0
        for bound, n in zip(self.bounds, self.buckets, strict=False):
            if seen + n >= rank and n > 0:
                return lower + (bound - lower) * ((rank - seen) / n)
            seen += n
            lower = bound
        return self.bounds[-1]

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with (+Inf, count)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            running += n
            out.append((bound, running))
        return out


def observe_json(text: str | None, bounds: Sequence[float], values: Iterable[float]) -> str:
    """The stored form ``text`` with ``values`` added: what
    ``HistogramCounts.from_json(text, bounds).observe(values).to_json()`` returns, in one
    parse and one dump (the finalize path does this twice per task per batch)."""
    size = len(bounds) + 1
    buckets: list[int] | None = None
    total, count = 0.0, 0
    if text:
        data = json.loads(text)
        stored = data.get("buckets") if isinstance(data, dict) else None
        if isinstance(stored, list) and len(stored) == size:
            buckets = [int(b) for b in stored]
            total, count = float(data.get("sum", 0.0)), int(data.get("count", 0))
    if buckets is None:
        buckets = [0] * size
    for value in values:
        value = max(0.0, float(value))
        buckets[bisect.bisect_left(bounds, value)] += 1
        total += value
        count += 1
    return json.dumps(
        {"buckets": buckets, "sum": round(total, 6), "count": count}, separators=(",", ":")
    )
