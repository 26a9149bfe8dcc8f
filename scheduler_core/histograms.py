"""Persisted histograms: fixed bucket bounds and the counts read from each schedule row.

Each histogram is stored as one integer column per bucket plus a sum (see
``scheduler_core.models``): bucket ``i`` counts observations in ``(bounds[i-1], bounds[i]]``
(not cumulative) and the last one is the ``+Inf`` bucket; the count is the buckets' total.
The finalize path adds to those columns in SQL; the exporter turns them into cumulative
Prometheus buckets.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DURATION_BUCKETS",
    "START_DELAY_BUCKETS",
    "HistogramCounts",
    "bucket_index",
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


def bucket_index(bounds: Sequence[float], value: float) -> int:
    """The bucket ``value`` falls in: the first bound >= it (``len(bounds)`` is +Inf).
    Negative values count as 0, so a value exactly on a bound lands in that bound's bucket."""
    return bisect.bisect_left(bounds, max(0.0, value))


@dataclass(frozen=True, kw_only=True, slots=True)
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
    def from_columns(
        cls, buckets: Sequence[int], total: float, bounds: tuple[float, ...]
    ) -> HistogramCounts:
        """The histogram stored as per-bucket ``buckets`` (one more than ``bounds``) and
        their ``total``; the count is the buckets' sum."""
        if len(buckets) != len(bounds) + 1:
            raise ValueError(f"{len(buckets)} bucket counts for {len(bounds)} bounds + Inf")
        counts = buckets if isinstance(buckets, tuple) else tuple(buckets)
        return cls(bounds=bounds, buckets=counts, sum=float(total), count=sum(counts))

    def observe(self, values: Iterable[float]) -> HistogramCounts:
        """Return a new histogram with ``values`` added."""
        buckets = list(self.buckets)
        total, count = self.sum, self.count
        for value in values:
            value = max(0.0, float(value))
            buckets[bucket_index(self.bounds, value)] += 1
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
