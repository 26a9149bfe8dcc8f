"""Running one task action: sync callables in threads, async callables on an event loop,
commands as subprocesses in their own process group (so timeout and cancel kill children)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scheduler_core.tasks import CallableAction, CommandAction, TaskDefinition

__all__ = [
    "ActionResult",
    "AsyncLoopThread",
    "RunHandle",
    "WorkerPool",
    "name_os_thread",
    "run_callable",
    "run_command",
]

log = logging.getLogger(__name__)

OUTPUT_TAIL_BYTES = 4000
#: Environment a command gets besides its configured ``env``: enough to find programs.
BASE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")


@dataclass
class ActionResult:
    status: str  # success | failure | timeout | cancelled
    error_message: str | None = None
    error_traceback: str | None = None
    exit_code: int | None = None
    pid: int | None = None


@dataclass
class RunHandle:
    """What the engine holds for a run in flight: how to cancel it and when it times out."""

    run_id: int
    task_name: str
    definition: TaskDefinition
    deadline: float | None  # time.monotonic() after which the run is timed out
    scheduled_for: datetime
    attempt: int
    started_at: datetime
    #: Set (with ``cancel_reason``) to cancel; polled, never waited on: a plain flag costs
    #: nothing per run, where an ``Event`` was a lock and a condition for each.
    cancel_requested: bool = False
    cancel_reason: str = ""
    pid: int | None = None
    async_future: Any = None
    #: A worker has begun it (until then a cancel simply means it never starts).
    started: bool = False
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim_finish(self) -> bool:
        """True for the first caller only: the worker and the watchdog race to finish a run."""
        with self.lock:
            if self.finished:
                return False
            self.finished = True
            return True


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_callable(action: CallableAction, handle: RunHandle) -> ActionResult:
    """Call a sync callable in the current (worker) thread."""
    try:
        func = action.resolve()
    except ValueError as exc:
        return ActionResult(status="failure", error_message=f"cannot load callable: {exc}")
    try:
        func(*action.args, **dict(action.kwargs))
    except Exception as exc:
        return ActionResult(
            status="failure", error_message=_error_text(exc), error_traceback=traceback.format_exc()
        )
    return ActionResult(status="success")


async def run_async_callable(
    action: CallableAction, handle: RunHandle, timeout: float | None
) -> ActionResult:
    """Await an async callable with the task's timeout; cancellation maps to ``cancelled``."""
    try:
        func = action.resolve()
    except ValueError as exc:
        return ActionResult(status="failure", error_message=f"cannot load callable: {exc}")
    try:
        await asyncio.wait_for(func(*action.args, **dict(action.kwargs)), timeout)
    except TimeoutError:
        return ActionResult(
            status="timeout", error_message=f"timed out after {timeout:g}s (task cancelled)"
        )
    except asyncio.CancelledError:
        return ActionResult(status="cancelled", error_message=handle.cancel_reason or "cancelled")
    except Exception as exc:
        return ActionResult(
            status="failure", error_message=_error_text(exc), error_traceback=traceback.format_exc()
        )
    return ActionResult(status="success")


def command_environment(action: CommandAction) -> dict[str, str]:
    """Only the configured environment (plus PATH and locale), unless ``inherit_env``."""
    if action.inherit_env:
        env = dict(os.environ)
    else:
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
    env.update(action.env)
    return env


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the command's process group, then SIGKILL it after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # Children may ignore SIGTERM even after the leader exited: the group gets SIGKILL too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def run_command(
    action: CommandAction,
    handle: RunHandle,
    *,
    timeout: float | None,
    grace: float,
    poll: float = 0.05,
) -> ActionResult:
    """Run a command; stop it (SIGTERM, then SIGKILL after ``grace``) on timeout or cancel."""
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(
                list(action.argv),
                env=command_environment(action),
                cwd=action.cwd or None,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return ActionResult(
                status="failure", error_message=f"cannot start {action.argv[0]!r}: {exc}"
            )
        handle.pid = proc.pid
        started = time.monotonic()
        status: str | None = None
        message: str | None = None
        while True:
            try:
                proc.wait(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                pass
            if handle.cancel_requested:
                _kill_group(proc, grace)
                status, message = "cancelled", handle.cancel_reason or "cancelled"
                break
            if timeout is not None and time.monotonic() - started > timeout:
                _kill_group(proc, grace)
                status, message = "timeout", f"timed out after {timeout:g}s (process group killed)"
                break
        # A finished leader may leave children in its group; they must not outlive the run.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        output.seek(0, os.SEEK_END)
        size = output.tell()
        output.seek(max(0, size - OUTPUT_TAIL_BYTES))
        tail = output.read().decode("utf-8", errors="replace").strip()
        code = proc.returncode
        if status is not None:
            return ActionResult(status=status, error_message=message, exit_code=code, pid=proc.pid)
        if code == 0:
            return ActionResult(status="success", exit_code=0, pid=proc.pid)
        what = f"signal {-code}" if code < 0 else f"exit code {code}"
        text = f"command failed with {what}" + (f": {tail}" if tail else "")
        return ActionResult(status="failure", error_message=text, exit_code=code, pid=proc.pid)


def name_os_thread() -> None:
    """Give the calling thread its Python name at the OS level too (Linux, first 15
    characters), so ``top -H``, ``ps -L`` and per-thread CPU figures tell the workers, the
    async loop and the scheduler loop apart. Best effort: elsewhere, or without /proc,
    nothing happens."""
    thread = threading.current_thread()
    with (
        contextlib.suppress(OSError, TypeError),
        open(f"/proc/self/task/{thread.native_id}/comm", "w") as comm,
    ):
        comm.write(thread.name[:15])


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

    __slots__ = ("entry", "idle", "promoted", "wake")

    def __init__(self) -> None:
        self.entry: _Entry | None = None
        #: On the pool's idle stack.
        self.idle = False
        #: Woken from idle to wait for a timed job (counted in ``WorkerPool._promoted``).
        self.promoted = False
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
            try:
                fn(*args)
            except Exception:  # the job records its own outcome; never lose the worker
                log.exception("a worker job raised")
