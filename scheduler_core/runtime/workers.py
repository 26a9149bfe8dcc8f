"""Where runs execute: ``WorkerPool`` (leader/followers threads that keep the start times
themselves) and ``AsyncLoopThread`` (one event loop for every async callable)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from scheduler_core.runtime.runners import name_os_thread

__all__ = ["AsyncLoopThread", "WorkerPool"]

log = logging.getLogger(__name__)


class AsyncLoopThread:
    """One asyncio event loop in a daemon thread for all async callables of an instance."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="schedctl-async", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        name_os_thread()
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class _Worker:
    """One pool thread. ``wake`` is held while it waits; ``entry`` is the timed job it
    waits for, if it is one of the pool's sleepers."""

    __slots__ = ("busy", "entry", "idle", "promoted", "wake")

    def __init__(self) -> None:
        self.entry: _Entry | None = None
        #: On the pool's idle stack.
        self.idle = False
        #: Woken from idle to wait for a timed job (counted in ``WorkerPool._promoted``).
        self.promoted = False
        #: Inside a job (a run's action): see ``WorkerPool.busy_workers``.
        self.busy = False
        self.wake = threading.Lock()
        self.wake.acquire()


#: A job and the monotonic time it may start: (at, order, fn, args).
_Entry = tuple[float, int, Callable[..., None], tuple[Any, ...]]


class WorkerPool:
    """``size`` worker threads that run jobs now (``submit``) or at a given time
    (``submit_at``), each job on one of them.

    **The workers keep the start times themselves** (leader/followers): up to ``sleepers``
    idle workers each wait, with a timeout, for the earliest timed job nobody waits for
    yet, and run it when it is due. A worker that finishes a short job takes the next timed
    one before it is due, so a steady stream of short timed jobs costs one timed wake per
    job: no timer thread waking a worker for each start. The second sleeper is the slack
    that makes this safe: a job that runs long (past the next start) leaves the next start
    to the other sleeper, and the last sleeper to take a job wakes an idle worker to take
    its place, so starts never wait for a job to return while a worker is free.

    A worker that takes a job while other jobs are already due wakes one more idle worker
    (who does the same): a burst of starts at one instant fans out over the pool.
    Idle workers wait on a stack, not a queue: at 1,000 short runs a second the same one or
    two threads take every job and keep their stacks in the CPU caches.

    The threads are daemons: a sync callable that never returns cannot hold the process
    open once the engine has drained and recorded it.
    """

    def __init__(self, size: int, name_prefix: str, *, sleepers: int = 2) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, got size={size!r}")
        self._workers = [_Worker() for _ in range(size)]
        self._threads = [
            threading.Thread(target=self._work, args=(w,), name=f"{name_prefix}_{i}", daemon=True)
            for i, w in enumerate(self._workers)
        ]
        self._max_sleepers = max(1, min(sleepers, size))
        self._lock = threading.Lock()
        self._order = itertools.count()
        #: Timed jobs no sleeper waits for, the earliest first.
        self._timed: list[_Entry] = []
        #: Jobs to run as soon as a worker is free (``at``: when they were submitted).
        self._ready: collections.deque[_Entry] = collections.deque()
        #: Workers waiting for their ``entry``'s time.
        self._sleeping: list[_Worker] = []
        #: Idle workers woken to become sleepers, not yet running.
        self._promoted = 0
        #: Idle workers without a timed job, the most recently idle last.
        self._idle: list[_Worker] = []
        self._started = False
        self._closed = False

    def start(self) -> None:
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            for worker in reversed(self._workers):  # the first worker on top of the stack
                worker.idle = True
                self._idle.append(worker)
            for thread in self._threads:
                thread.start()

    def __len__(self) -> int:
        """Timed jobs not started yet."""
        return len(self._timed) + len(self._sleeping)

    def busy_workers(self) -> int:
        """Workers inside a job now, e.g. a sync callable, which cannot be stopped (read
        without the lock: a snapshot)."""
        return sum(1 for worker in self._workers if worker.busy)

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the last worker to go idle, or as soon as a worker is free
        (dropped after ``shutdown``)."""
        if not self._started:
            self.start()
        with self._lock:
            if self._closed:
                return
            self._ready.append((time.monotonic(), next(self._order), fn, args))
            if self._idle:
                self._signal(self._pop_idle())
            elif self._sleeping:
                # Every worker is busy or waits for a later start: the sleeper with the
                # latest one gives it back and runs this job now.
                self._wake_latest_sleeper()

    def submit_at(self, entries: Sequence[tuple[Any, ...]]) -> None:
        """For each ``(at, fn, *args)``: run ``fn(*args)`` on a worker at monotonic time
        ``at`` (at once if that has passed), never before it, in time order."""
        if not entries:
            return
        if not self._started:
            self.start()
        with self._lock:
            if self._closed:
                return
            timed, order = self._timed, self._order
            earliest = min(entry[0] for entry in entries)
            for at, fn, *args in entries:
                heapq.heappush(timed, (at, next(order), fn, tuple(args)))
            missing = self._max_sleepers - len(self._sleeping) - self._promoted
            if missing > 0 and self._idle:
                self._promote(min(missing, len(entries)))
            elif self._sleeping and earliest < max(w.entry[0] for w in self._sleeping if w.entry):
                self._wake_latest_sleeper()  # it swaps its start for the earlier one

    def discard_waiting(self) -> None:
        """Drop every timed job not started yet (their runs were recorded by the caller)."""
        with self._lock:
            self._timed.clear()
            for worker in self._sleeping:
                worker.entry = None
                self._signal(worker)
            self._sleeping.clear()

    def shutdown(self) -> None:
        """Drop waiting jobs and let each idle worker exit; busy ones exit when they return."""
        with self._lock:
            self._closed = True
            self._timed.clear()
            self._ready.clear()
            waiting = self._idle + self._sleeping
            for worker in self._idle:
                worker.idle = False
            self._idle, self._sleeping = [], []
        for worker in waiting:
            self._signal(worker)

    # ---------------------------------------------------------------- under self._lock
    @staticmethod
    def _signal(worker: _Worker) -> None:
        """Wake ``worker``. A signal it does not wait for (a sleeper that timed out in the
        meantime) stays until its next wait, which then returns at once: it looks again."""
        with contextlib.suppress(RuntimeError):  # already released: it will look again
            worker.wake.release()

    def _pop_idle(self) -> _Worker:
        worker = self._idle.pop()
        worker.idle = False
        return worker

    def _promote(self, count: int) -> None:
        """Wake up to ``count`` idle workers to wait for timed jobs."""
        for _ in range(min(count, len(self._idle))):
            worker = self._pop_idle()
            worker.promoted = True
            self._promoted += 1
            self._signal(worker)

    def _wake_latest_sleeper(self) -> None:
        latest = max(self._sleeping, key=lambda w: w.entry[0] if w.entry else 0.0)
        self._signal(latest)

    def _take(self, now: float) -> _Entry | None:
        """The job a worker with no timed job of its own runs now, if any is due."""
        ready, timed = self._ready, self._timed
        if timed and timed[0][0] <= now and (not ready or timed[0][0] <= ready[0][0]):
            return heapq.heappop(timed)
        if ready:
            return ready.popleft()
        return None

    def _before_running(self, now: float) -> None:
        """A worker is about to run a job: keep the rest of the pool covering the others."""
        if self._ready and not self._idle and self._sleeping:
            # More jobs for now and no worker idle: a sleeper gives its later start back.
            self._wake_latest_sleeper()
            return
        timed = self._timed
        if not timed:
            return
        first = timed[0][0]
        if first <= now and self._idle:
            # More starts are due: fan out (``submit`` wakes a worker per job it is given).
            self._signal(self._pop_idle())
            return
        if not self._sleeping:
            if first > now and not self._promoted:
                self._promote(1)  # no one waits for the next start any more
            return
        if first < max(w.entry[0] for w in self._sleeping if w.entry):
            # A sleeper waits for a later start than one nobody waits for (starts added
            # while the sleepers had later ones, or due now with no worker idle): it swaps.
            self._wake_latest_sleeper()

    def _next(self, worker: _Worker) -> _Entry | float | None:
        """What ``worker`` does next: a job to run, a time to wait until, or None to wait
        until woken."""
        if worker.idle:  # woken by a stale signal, still on the stack
            self._idle.remove(worker)
            worker.idle = False
        now = time.monotonic()
        own = worker.entry
        if own is not None:
            if own[0] <= now:
                worker.entry = None
                self._sleeping.remove(worker)
                self._before_running(now)
                return own
            timed = self._timed
            if self._ready or (timed and timed[0][0] < own[0]):
                # Woken for a job due now, or for an earlier start: give this one back.
                heapq.heappush(timed, own)
                worker.entry = None
                self._sleeping.remove(worker)
            else:
                return own[0]
        job = self._take(now)
        if job is not None:
            self._before_running(now)
            return job
        timed = self._timed
        if timed and len(self._sleeping) < self._max_sleepers:
            worker.entry = heapq.heappop(timed)
            self._sleeping.append(worker)
            return worker.entry[0]
        worker.idle = True
        self._idle.append(worker)
        return None

    # ---------------------------------------------------------------- worker thread
    def _work(self, worker: _Worker) -> None:
        name_os_thread()
        lock = self._lock
        worker.wake.acquire()  # each starts on the idle stack (see ``start``)
        while True:
            with lock:
                if worker.promoted:
                    worker.promoted = False
                    self._promoted -= 1
                if self._closed:
                    return
                step = self._next(worker)
            if step is None:
                worker.wake.acquire()
                continue
            if not isinstance(step, tuple):  # the time its timed job is due
                worker.wake.acquire(timeout=max(0.0, min(step - time.monotonic(), 3600.0)))
                continue
            _at, _order, fn, args = step
            worker.busy = True
            try:
                fn(*args)
            except Exception:  # the job records its own outcome; never lose the worker
                log.exception("a worker job raised")
            finally:
                worker.busy = False
