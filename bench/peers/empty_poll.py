"""What the scale peer scripts share: timing the peer's own empty poll before the first
tick, and the grid of first fire times. Standard library only: it runs in the peers' own
environments, imported from the script's directory."""

from __future__ import annotations

import time
from typing import Any


def first_ticks(origin: float, tasks: int, every: float) -> list[float]:
    """Each task's first fire time (epoch seconds): grids offset evenly from ``origin``, so
    ``tasks / every`` fall due each second, as schedctl's ``interval_tasks`` spreads them."""
    spacing = every / tasks
    return [origin + i * spacing for i in range(tasks)]


class EmptyPolls:
    """Durations of the poll (due query) and of the next-due query, and how many polls
    found something due (should be none: the probe runs before the first tick)."""

    def __init__(self) -> None:
        self.poll_s: list[float] = []
        self.next_due_s: list[float] = []
        self.not_empty = 0
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()

    def polled(self, found: int) -> None:
        now = time.perf_counter()
        self.poll_s.append(now - self._started)
        self.not_empty += found > 0
        self._started = now

    def next_due(self) -> None:
        self.next_due_s.append(time.perf_counter() - self._started)

    def as_dict(self, **extra: Any) -> dict[str, Any]:
        return {
            "empty_poll_s": self.poll_s,
            "empty_next_due_s": self.next_due_s,
            "empty_polls_not_empty": self.not_empty,
            **extra,
        }
