"""Action runners: how one task action runs and ends (sync callables in the calling worker
thread, async callables on the event loop, commands as subprocesses in their own process
group, so timeout and cancel kill children), and ``RunHandle``, a run in flight."""

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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
