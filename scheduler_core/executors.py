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
    "DelayedStarts",
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
    on_start: Callable[[int], None] | None = None,
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
        if on_start is not None:
            on_start(proc.pid)
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
    characters), so ``top -H``, ``ps -L`` and per-thread CPU figures tell the workers and
    the start timer apart. Best effort: elsewhere, or without /proc, nothing happens."""
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


class DelayedStarts:
    """Runs claimed ahead of their time, each started by one timer thread when it is due.

    ``start(*args)`` is called (outside the lock) at the monotonic time given to ``add``;
    after ``close()`` nothing more is started (what is left was recorded by the engine).

    The timer sleeps on a plain lock used as a signal (``add`` releases it when a new entry
    becomes the earliest): a timed ``Lock.acquire`` is one C call, where
    ``Condition.wait`` allocates a lock and runs Python code for every start.
    """

    def __init__(self, start: Callable[..., None]) -> None:
        self._start = start
        self._heap: list[tuple[float, int, tuple[Any, ...]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        #: Held while there is nothing new to look at; released to wake the timer.
        self._signal = threading.Lock()
        self._signal.acquire()
        self._closed = False
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, at: float, *args: Any) -> None:
        self.add_many([(at, *args)])

    def add_many(self, entries: Sequence[tuple[Any, ...]]) -> None:
        """``add(*entry)`` for each entry, under one lock and with at most one wake."""
        if not entries:
            return
        with self._lock:
            if self._closed:
                return
            first = self._heap[0] if self._heap else None
            for at, *args in entries:
                heapq.heappush(self._heap, (at, next(self._order), tuple(args)))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="schedctl-starts", daemon=True
                )
                self._thread.start()
            earliest = self._heap[0] is not first
        if earliest:  # only an earlier first start changes the timer
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # already released: the timer will look
            self._signal.release()

    def _loop(self) -> None:
        name_os_thread()
        while True:
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                due = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                wait = self._heap[0][0] - now if self._heap else -1.0
            if not due:
                # A wake between the look above and this wait is not lost: the signal stays
                # released until taken, and the loop then looks again.
                self._signal.acquire(timeout=min(wait, 3600.0) if wait >= 0 else -1)
                continue
            for args in due:
                try:
                    self._start(*args)
                except Exception:  # a start that fails must not stop the others
                    log.exception("could not start a run")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._heap.clear()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Worker:
    """One pool thread: ``wake`` is held while it has nothing to do."""

    __slots__ = ("job", "wake")

    def __init__(self) -> None:
        self.job: tuple[Callable[..., None], tuple[Any, ...]] | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


class WorkerPool:
    """``size`` worker threads, started up front; a job goes to the worker that went idle
    last.

    What ``ThreadPoolExecutor`` does for the engine, without the ``Future``, ``Condition``
    and semaphore it makes per job. Idle workers wait on a stack, not a queue: at 1,000
    short runs a second the same one or two threads take every job, their stacks and
    interpreter state stay in the CPU caches, where a queue would rotate through all 64.
    The threads are daemons: a sync callable that never returns cannot hold the process
    open once the engine has drained and recorded it.
    """

    def __init__(self, size: int, name_prefix: str) -> None:
        self._workers = [_Worker() for _ in range(size)]
        self._threads = [
            threading.Thread(target=self._work, args=(w,), name=f"{name_prefix}_{i}", daemon=True)
            for i, w in enumerate(self._workers)
        ]
        self._lock = threading.Lock()
        #: Idle workers, the most recently idle last.
        self._idle: list[_Worker] = []
        #: Jobs submitted while every worker was busy.
        self._backlog: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._started = False
        self._closed = False

    def start(self) -> None:
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            for worker in reversed(self._workers):  # the first worker on top of the stack
                self._idle.append(worker)
            for thread in self._threads:
                thread.start()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the last worker to go idle, or queue it until one is free
        (dropped after ``shutdown``)."""
        if not self._started:
            self.start()
        with self._lock:
            if self._closed:
                return
            if not self._idle:
                self._backlog.append((fn, args))
                return
            worker = self._idle.pop()
            worker.job = (fn, args)
        worker.wake.release()

    def _work(self, worker: _Worker) -> None:
        name_os_thread()
        while True:
            worker.wake.acquire()
            job, worker.job = worker.job, None
            while job is not None:
                fn, args = job
                try:
                    fn(*args)
                except Exception:  # the job records its own outcome; never lose the worker
                    log.exception("a worker job raised")
                with self._lock:
                    if self._closed:
                        return
                    if self._backlog:
                        job = self._backlog.popleft()
                    else:
                        self._idle.append(worker)
                        job = None
            if self._closed:
                return

    def shutdown(self) -> None:
        """Drop queued jobs and let each idle worker exit; busy ones exit when they return."""
        with self._lock:
            self._closed = True
            self._backlog.clear()
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.wake.release()
