"""Pacing of work done ahead of need, so it never takes the GIL from the request handlers.

The exporter renders ``/metrics`` sections in a worker thread after every refresh, before any
scrape asks for them. That work is pure Python: while it runs it holds the GIL for most of
the time the admin API's handlers would need, so at 200 creates a second the 1,000 tasks
created between two refreshes (0.1-0.3 ms each to render) queued every create behind a
0.1-0.4 s burst. Nobody waits for work done ahead, so it can be spread instead: a
:class:`Pacer` is called between small units of work and sleeps (the GIL released) long
enough that the work uses at most ``share`` of the wall-clock time, until someone turns out
to wait for the work after all (:meth:`Pacer.hurry`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Pace", "Pacer"]

#: Called between two units of work; may sleep.
Pace = Callable[[], None]


class Pacer:
    """Sleeps between slices of work so the work holds at most ``share`` of the time.

    Call it after every unit of work. Once a slice has run for ``slice_seconds`` it sleeps
    ``slice * (1 / share - 1)``; after ``budget`` seconds of sleeping in all it stops
    sleeping, so paced work never takes longer than its own duration plus ``budget``.
    :meth:`hurry` (from any thread) ends a sleep under way and every later one.
    """

    def __init__(self, *, share: float, slice_seconds: float, budget: float) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        self._ratio = 1.0 / share - 1.0
        self._slice = slice_seconds
        self._budget = budget
        #: Seconds of sleep asked for so far (a hurried sleep counts in full).
        self.slept = 0.0
        self._started = time.perf_counter()
        self._hurry = threading.Event()

    def hurry(self) -> None:
        """Someone waits for the work: no more sleeping."""
        self._hurry.set()

    def __call__(self) -> None:
        now = time.perf_counter()
        worked = now - self._started
        if worked < self._slice or self._hurry.is_set():
            return
        pause = min(worked * self._ratio, self._budget - self.slept)
        if pause > 0.0:
            self._hurry.wait(pause)
            self.slept += pause
        self._started = time.perf_counter()
