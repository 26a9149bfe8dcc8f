"""Action runners: how one task action runs and ends (sync callables in the calling worker
thread, async callables on the event loop, commands as subprocesses in their own process
group, so timeout and cancel kill children), what it leaves (a command's output, a
callable's prints, log lines and return value, see ``runtime.capture``), and ``RunHandle``, a run
in flight."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from scheduler_core.runtime.capture import (
    DEFAULT_OUTPUT_LIMIT,
    CapturedOutput,
    end_capture,
    output_from_file,
    start_capture,
)
from scheduler_core.store.records import DispatchedRun
from scheduler_core.tasks import CallableAction, CommandAction, TaskDefinition

__all__ = [
    "ActionResult",
    "RunHandle",
    "command_environment",
    "name_os_thread",
    "run_async_callable",
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
    #: What the run wrote (a command, always) or printed and logged (a callable run with
    #: ``capture``), within the output limit.
    output: CapturedOutput | None = None
    #: A callable's return value as it returned it (with ``capture`` only).
    result: object = None


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

    @classmethod
    def for_run(cls, run: DispatchedRun) -> RunHandle:
        """A handle for ``run``, its timeout clock not started (a worker starts it)."""
        return cls(
            run_id=run.run_id, task_name=run.task_name, definition=run.definition,
            deadline=None, scheduled_for=run.scheduled_for, attempt=run.attempt,
            started_at=run.started_at,
        )  # fmt: skip

    def claim_finish(self) -> bool:
        """True for the first caller only: the worker and the watchdog race to finish a run."""
        with self.lock:
            if self.finished:
                return False
            self.finished = True
            return True


def _storable(text: str) -> str:
    """``text`` with NUL, which PostgreSQL's text cannot hold, as U+FFFD."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _error_text(exc: BaseException) -> str:
    text = _storable(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _traceback() -> str:
    return _storable(traceback.format_exc())


def _call(func: Callable[..., Any], action: CallableAction, keep_result: bool) -> ActionResult:
    try:
        value = func(*action.args, **dict(action.kwargs))
    except Exception as exc:
        return ActionResult(
            status="failure", error_message=_error_text(exc), error_traceback=_traceback()
        )
    return ActionResult(status="success", result=value if keep_result else None)


def run_callable(
    action: CallableAction,
    handle: RunHandle,
    *,
    capture: bool = False,
    log_level: int = logging.INFO,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
) -> ActionResult:
    """Call a sync callable in the current (worker) thread. With ``capture``, what it
    prints (``sys.stdout``, ``sys.stderr``) and the log records of ``log_level`` and up it
    makes in this thread become the result's ``output`` (within ``output_limit`` bytes, in
    the order made) and its return value the result's ``result``."""
    try:
        func = action.resolve()
    except ValueError as exc:
        return ActionResult(status="failure", error_message=f"cannot load callable: {exc}")
    if not capture:
        return _call(func, action, keep_result=False)
    token = start_capture(log_level, output_limit)
    try:
        outcome = _call(func, action, keep_result=True)
    finally:
        captured = end_capture(token)
    outcome.output = captured
    return outcome


async def _await(
    func: Callable[..., Any],
    action: CallableAction,
    handle: RunHandle,
    timeout: float | None,
    keep_result: bool,
) -> ActionResult:
    try:
        value = await asyncio.wait_for(func(*action.args, **dict(action.kwargs)), timeout)
    except TimeoutError:
        return ActionResult(
            status="timeout", error_message=f"timed out after {timeout:g}s (task cancelled)"
        )
    except asyncio.CancelledError:
        return ActionResult(status="cancelled", error_message=handle.cancel_reason or "cancelled")
    except Exception as exc:
        return ActionResult(
            status="failure", error_message=_error_text(exc), error_traceback=_traceback()
        )
    return ActionResult(status="success", result=value if keep_result else None)


async def run_async_callable(
    action: CallableAction,
    handle: RunHandle,
    timeout: float | None,
    *,
    capture: bool = False,
    log_level: int = logging.INFO,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
) -> ActionResult:
    """Await an async callable with the task's timeout; cancellation maps to ``cancelled``.
    With ``capture``, as ``run_callable``: the capture is set inside this coroutine, so
    its asyncio task (and the tasks it starts) hold it, and other runs on the loop do not;
    a run that times out or is cancelled keeps what it printed and logged until then."""
    try:
        func = action.resolve()
    except ValueError as exc:
        return ActionResult(status="failure", error_message=f"cannot load callable: {exc}")
    if not capture:
        return await _await(func, action, handle, timeout, keep_result=False)
    token = start_capture(log_level, output_limit)
    try:
        outcome = await _await(func, action, handle, timeout, keep_result=True)
    finally:
        captured = end_capture(token)
    outcome.output = captured
    return outcome


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


def _wait(
    proc: subprocess.Popen[bytes],
    handle: RunHandle,
    timeout: float | None,
    grace: float,
    poll: float,
) -> tuple[str | None, str | None]:
    """Wait for the command to end: (None, None) when it exits by itself, else the status
    and message of how it was stopped (timeout or cancel)."""
    started = time.monotonic()
    while True:
        try:
            proc.wait(timeout=poll)
            return None, None
        except subprocess.TimeoutExpired:
            pass
        if handle.cancel_requested:
            _kill_group(proc, grace)
            return "cancelled", handle.cancel_reason or "cancelled"
        if timeout is not None and time.monotonic() - started > timeout:
            _kill_group(proc, grace)
            return "timeout", f"timed out after {timeout:g}s (process group killed)"


def _output_tail(output: IO[bytes]) -> str:
    """The last ``OUTPUT_TAIL_BYTES`` of the output, for a failure's message."""
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - OUTPUT_TAIL_BYTES))
    return _storable(output.read().decode("utf-8", errors="replace").strip())


def run_command(
    action: CommandAction,
    handle: RunHandle,
    *,
    timeout: float | None,
    grace: float,
    poll: float = 0.05,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    extra_env: Mapping[str, str] | None = None,
) -> ActionResult:
    """Run a command; stop it (SIGTERM, then SIGKILL after ``grace``) on timeout or cancel.

    Its stdout and stderr share one temporary file (stderr=STDOUT), which keeps the order
    in which they were written exactly. Marking each line with its stream would take two
    pipes read by a thread, and lose that order: what the two wrote between two reads
    could no longer be put back in sequence. Whatever the outcome, ``ActionResult.output``
    keeps the output's head and tail within ``output_limit`` bytes, read from the file once
    the command ended (nothing per line): a command stopped at its timeout or cancelled
    keeps what it wrote before (what a program buffered and never wrote is lost: e.g.
    ``PYTHONUNBUFFERED=1`` for Python). A failure's message ends with the output's last
    4,000 bytes, as before. ``extra_env`` (the run's ``SCHEDCTL_*`` and ``TRACEPARENT``)
    is added to the command's environment last."""
    env = command_environment(action)
    if extra_env:
        env.update(extra_env)
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(
                list(action.argv),
                env=env,
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
        status, message = _wait(proc, handle, timeout, grace, poll)
        # A finished leader may leave children in its group; they must not outlive the run.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        captured = output_from_file(output, output_limit)
        code = proc.returncode
        if status is not None:
            return ActionResult(
                status=status, error_message=message, exit_code=code, pid=proc.pid,
                output=captured,
            )  # fmt: skip
        if code == 0:
            return ActionResult(status="success", exit_code=0, pid=proc.pid, output=captured)
        tail = _output_tail(output)
        what = f"signal {-code}" if code < 0 else f"exit code {code}"
        text = f"command failed with {what}" + (f": {tail}" if tail else "")
        return ActionResult(
            status="failure", error_message=text, exit_code=code, pid=proc.pid, output=captured
        )


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
