"""The run lifecycle of a scheduler instance: launching claimed runs on the workers (now or
at their time), executing them, completing, timing out and cancelling them, and writing
their outcomes in finalize batches.

Workers report outcomes through a queue, so a burst of finishing runs becomes one finalize
transaction instead of one commit per run. The loop (``runtime.loop``) drives it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from opentelemetry import trace

from scheduler_core.clock import Clock
from scheduler_core.errors import error_reason
from scheduler_core.output_policy import OutputPolicy
from scheduler_core.runtime.kept import kept_of
from scheduler_core.runtime.run_context import (
    RunContext,
    enter_run,
    leave_run,
    run_environment,
    running_as,
)
from scheduler_core.runtime.runners import (
    ActionResult,
    RunHandle,
    run_async_callable,
    run_callable,
    run_command,
)
from scheduler_core.runtime.settings import FINALIZE_DEFER_S, EngineSettings
from scheduler_core.runtime.workers import AsyncLoopThread, WorkerPool
from scheduler_core.store import DispatchedRun, RunOutcome, Store
from scheduler_core.tasks import CallableAction, CommandAction
from scheduler_core.telemetry import RateLimitedLogger, TelemetryWriter, tracer
from scheduler_core.telemetry.otel import tracing_installed

__all__ = ["RunLifecycle"]

log = logging.getLogger(__name__)


#: Entries of the per-object memos below before they start again.
_MEMO_LIMIT = 10_000


class RunLifecycle:
    """The runs of one instance, from launch to their written outcome (the ``Scheduler``
    base: its loop thread launches, finalizes and cancels; workers execute and complete)."""

    def __init__(
        self,
        *,
        settings: EngineSettings,
        clock: Clock,
        store: Store,
        telemetry: TelemetryWriter,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        self.telemetry = telemetry
        #: Runs each start on a worker, now or at its time (the workers keep the times).
        self._pool = WorkerPool(settings.max_running, "schedctl-run")
        #: Runs handed to a worker (or the event loop) that have not begun yet.
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._oldest_unrecorded: float | None = None
        self._async: AsyncLoopThread | None = None
        self._completions: queue.SimpleQueue[RunOutcome] = queue.SimpleQueue()
        self._pending_finalize: list[RunOutcome] = []
        #: Per task, how many of ``_pending_finalize`` there are (finished, row not yet written).
        self._finished_unrecorded: Counter[str] = Counter()
        self._running: dict[int, RunHandle] = {}
        self._running_lock = threading.Lock()
        self._wake = threading.Event()
        #: Set when an outcome should be written now (``_next_tick_is_near``): it ends the
        #: pause between passes and skips the finalize's deferral.
        self._hurry = threading.Event()
        #: ``expected_interval`` per schedule object (a cron expression computes it), and the
        #: capture arguments per output policy object; each keyed by id with the object kept
        #: (the store may drop and the collector free a definition: its id can be reused).
        self._intervals: dict[int, tuple[object, float]] = {}
        self._captures: dict[int, tuple[object, dict[str, Any]]] = {}
        self._db_errors = RateLimitedLogger(log, 30.0)
        #: Redacted from every run's output and result, with the tasks' own patterns.
        password = store.engine.url.password
        self._secrets: tuple[str, ...] = (str(password),) if password else ()

    @property
    def running_count(self) -> int:
        """Runs of this instance whose outcome is not written yet (waiting, running, finished)."""
        return len(self._running)

    @property
    def outcomes_waiting(self) -> int:
        """Outcomes the workers reported that the loop has not collected yet."""
        return self._completions.qsize()

    # ------------------------------------------------------------------ launching
    def launch(self, runs: list[DispatchedRun]) -> None:
        """Register the runs and start each now, or at its ``not_before`` if that is later."""
        if not runs:
            return
        # The timeout clock starts when a worker picks a run up (see _mark_started).
        handles = [RunHandle.for_run(run) for run in runs]
        with self._running_lock:
            for handle in handles:
                self._running[handle.run_id] = handle
        now, mono = self.clock.now(), time.monotonic()
        later: list[tuple[float, Callable[..., None], DispatchedRun, RunHandle]] = []
        for run, handle in zip(runs, handles, strict=True):
            delay = (run.not_before - now).total_seconds() if run.not_before is not None else 0.0
            if delay > 0.001:
                later.append((mono + delay, self._start_due, run, handle))
            else:
                self._start_run(run, handle)
        self._pool.submit_at(later)

    def _start_run(self, run: DispatchedRun, handle: RunHandle) -> None:
        """Hand a run that is due now to a worker (or the event loop)."""
        with self._queued_lock:
            self._queued += 1
        if self._is_async_run(run):
            self._start_async(run, handle)
        else:
            self._pool.submit(self._execute_in_thread, run, handle)

    def _start_due(self, run: DispatchedRun, handle: RunHandle) -> None:
        """On the worker that waited for the run's time: run it here (a sync action), or
        hand it to the event loop."""
        with self._queued_lock:
            self._queued += 1
        if self._is_async_run(run):
            self._start_async(run, handle)
        else:
            self._execute_in_thread(run, handle)

    @staticmethod
    def _is_async_run(run: DispatchedRun) -> bool:
        action = run.definition.action
        return isinstance(action, CallableAction) and _is_async(action)

    def _start_async(self, run: DispatchedRun, handle: RunHandle) -> None:
        if self._async is None:
            self._async = AsyncLoopThread()
        handle.async_future = self._async.submit(self._execute_async(run, handle))

    def _begin(self, handle: RunHandle) -> bool:
        """A worker is about to run ``handle``: False if it was cancelled (or timed out)
        while it waited for its time or for a free worker; its outcome is recorded then."""
        with self._queued_lock:
            self._queued -= 1
        if handle.finished:
            return False
        if handle.cancel_requested:
            self._record_without_worker(handle, "cancelled", handle.cancel_reason)
            return False
        handle.started = True
        self._mark_started(handle)
        return True

    def _span(self, run: DispatchedRun) -> Any:
        """The run's span, or None when no tracer provider is installed (spans would be
        no-ops: building their attributes and entering their context is skipped)."""
        if not tracing_installed():
            return None
        span = tracer().start_span(f"schedctl.run {run.task_name}")
        if span is trace.INVALID_SPAN:
            return None
        if span.is_recording():
            span.set_attributes(
                {
                    "schedctl.task": run.task_name,
                    "schedctl.run_id": run.run_id,
                    "schedctl.attempt": run.attempt,
                    "schedctl.trigger": run.trigger,
                    "schedctl.instance_id": self.settings.instance_id,
                    "schedctl.scheduled_for": run.scheduled_for.isoformat(),
                }
            )
        return span

    def _mark_started(self, handle: RunHandle) -> None:
        """A worker starts the run now: its real start time and its timeout begin here."""
        handle.started_at = self.clock.now()
        timeout = handle.definition.policies.timeout
        if timeout:
            handle.deadline = time.monotonic() + timeout

    def _execute_in_thread(self, run: DispatchedRun, handle: RunHandle) -> None:
        if not self._begin(handle):
            return
        span = self._span(run)
        context = _run_context(run)
        policies = run.definition.policies
        token = enter_run(context)
        with _current(span):
            action = run.definition.action
            try:
                if isinstance(action, CommandAction):
                    result = run_command(
                        action,
                        handle,
                        timeout=policies.timeout,
                        grace=policies.timeout_grace,
                        output_limit=policies.output.output_limit,
                        extra_env=run_environment(context),
                    )
                else:
                    assert isinstance(action, CallableAction)
                    result = run_callable(action, handle, **self._capture(policies.output))
            except Exception as exc:  # the executor itself must never lose a run
                result = ActionResult(
                    status="failure", error_message=f"schedctl executor error: {exc!r}"
                )
            finally:
                leave_run(token)
        self._complete(run, handle, result, span)

    async def _execute_async(self, run: DispatchedRun, handle: RunHandle) -> None:
        if not self._begin(handle):
            return
        span = self._span(run)
        assert isinstance(run.definition.action, CallableAction)
        with _current(span), running_as(_run_context(run)):
            result = await run_async_callable(
                run.definition.action,
                handle,
                run.definition.policies.timeout,
                **self._capture(run.definition.policies.output),
            )
        self._complete(run, handle, result, span)

    def _complete(
        self, run: DispatchedRun, handle: RunHandle, result: ActionResult, span: Any
    ) -> None:
        if not handle.claim_finish():
            if span is not None:
                span.end()
            return  # the watchdog or a cancel already recorded this run
        trace_id = None
        if span is not None:
            ctx = span.get_span_context()
            trace_id = format(ctx.trace_id, "032x") if ctx.trace_id else None
            if result.status != "success":
                span.set_status(
                    trace.Status(trace.StatusCode.ERROR, result.error_message or result.status)
                )
            span.set_attribute("schedctl.outcome", result.status)
            span.end()
        finished_at = self.clock.now()
        self._completions.put(
            RunOutcome.of(
                handle,
                result.status,
                finished_at,
                error_message=result.error_message,
                error_traceback=result.error_traceback,
                exit_code=result.exit_code,
                pid=result.pid or handle.pid,
                thread_name=threading.current_thread().name,
                trace_id=trace_id,
                kept=kept_of(run.definition, result, secrets=self._secrets),
            )
        )
        if self._next_tick_is_near(run, finished_at):
            self._hurry.set()
        if not self._wake.is_set():  # the loop collects at its next pass anyway
            self._wake.set()

    def _next_tick_is_near(self, run: DispatchedRun, finished_at: datetime) -> bool:
        """The run's task is due again within the look-ahead and one pass: another instance
        may already hold that tick, and decides its overlap from this run's row, so the
        outcome is written at once instead of with the next batch."""
        schedule = run.definition.schedule
        # By id, checked against the object kept: hashing a schedule costs more.
        entry = self._intervals.get(id(schedule))
        if entry is None or entry[0] is not schedule:
            interval = schedule.expected_interval
            if interval is None:
                # One-time: no next tick. Not kept either: each is a new schedule, and
                # every object kept lengthens the garbage collector's full collections.
                return False
            if len(self._intervals) > _MEMO_LIMIT:
                self._intervals.clear()
            entry = self._intervals[id(schedule)] = (schedule, interval)
        interval = entry[1]
        settings = self.settings
        margin = settings.look_ahead + settings.caught_up_interval
        return (finished_at - run.scheduled_for).total_seconds() + margin >= interval

    def _capture(self, output: OutputPolicy) -> dict[str, Any]:
        """How a callable's run captures what it says (nothing when its task keeps nothing
        and declares no result keys); once per policy object (tasks share a handful)."""
        entry = self._captures.get(id(output))
        if entry is None or entry[0] is not output:
            arguments = {
                "capture": output.keep_output != "never" or bool(output.result_metrics),
                "log_level": logging.getLevelName(output.log_level),
                "output_limit": output.output_limit,
            }
            if len(self._captures) > _MEMO_LIMIT:
                self._captures.clear()
            entry = self._captures[id(output)] = (output, arguments)
        return entry[1]

    def _record_without_worker(self, handle: RunHandle, status: str, message: str) -> None:
        """Finish a run from the loop thread (timeout of a sync callable, cancel, drain)."""
        if not handle.claim_finish():
            return
        self._completions.put(
            RunOutcome.of(handle, status, self.clock.now(), error_message=message, pid=handle.pid)
        )

    def cancel_local(self, run_id: int, reason: str) -> bool:
        """Cancel a run of this instance: kill a command, cancel a coroutine, give up a thread."""
        with self._running_lock:
            handle = self._running.get(run_id)
        if handle is None:
            return False
        handle.cancel_reason = reason
        handle.cancel_requested = True
        if not handle.started:
            # Waiting for its time or for a worker: it will not start (see _begin).
            self._record_without_worker(handle, "cancelled", reason)
            return True
        action = handle.definition.action
        if isinstance(action, CommandAction):
            return True  # the worker kills the process group and reports `cancelled`
        if handle.async_future is not None and self._async is not None:
            self._async.loop.call_soon_threadsafe(handle.async_future.cancel)
            # The coroutine wrapper reports cancelled; if it already finished, nothing happens.
            self._record_without_worker(handle, "cancelled", reason)
            return True
        # A sync callable's thread cannot be stopped: the run is recorded cancelled now and
        # whatever the thread returns later is ignored.
        self._record_without_worker(
            handle, "cancelled", f"{reason} (the callable's thread keeps running until it returns)"
        )
        return True

    def enforce_deadlines(self) -> None:
        now = time.monotonic()
        with self._running_lock:
            handles = list(self._running.values())
        for handle in handles:
            if handle.deadline is None or now <= handle.deadline or handle.finished:
                continue
            action = handle.definition.action
            if isinstance(action, CallableAction) and handle.async_future is None:
                timeout = handle.definition.policies.timeout
                self._record_without_worker(
                    handle,
                    "timeout",
                    f"timed out after {timeout:g}s; a sync callable cannot be killed, "
                    "its thread was left to finish",
                )

    def cancel_all(self, reason: str) -> int:
        with self._running_lock:
            handles = [h for h in self._running.values() if not h.finished]
        for handle in handles:
            handle.cancel_reason = reason
            handle.cancel_requested = True
            if not handle.started:  # never begun: nothing to kill or wait for
                self._record_without_worker(handle, "cancelled", reason)
        # Commands: the worker kills them (SIGTERM, SIGKILL after kill_grace) — wait for that.
        deadline = time.monotonic() + self.settings.kill_grace + 1
        while time.monotonic() < deadline and any(
            isinstance(h.definition.action, CommandAction) and not h.finished for h in handles
        ):
            time.sleep(0.05)
        for handle in handles:
            if handle.async_future is not None and self._async is not None:
                self._async.loop.call_soon_threadsafe(handle.async_future.cancel)
            self._record_without_worker(handle, "cancelled", reason)
        return len(handles)

    # ------------------------------------------------------------------ finishing
    def finalize_quietly(self) -> bool:
        """Finalize while draining; on a database error keep the outcomes queued, say so."""
        try:
            self.finalize_completions()
        except sa.exc.SQLAlchemyError as exc:
            self._db_errors.error(
                "drain",
                f"cannot record run outcomes while draining: {type(exc).__name__}: "
                f"{error_reason(exc)}",
            )
            return False
        return True

    def defer_finalize(self) -> bool:
        """While runs wait for a worker, writing outcomes would compete with starting them
        (the interpreter lock): outcomes wait up to ``FINALIZE_DEFER_S``, or until a full
        batch has gathered."""
        self.collect_completions()
        if not self._pending_finalize:
            return True
        if self._oldest_unrecorded is None:
            self._oldest_unrecorded = time.monotonic()
        return (
            self._queued > 0
            and len(self._pending_finalize) < self.settings.batch_size
            and time.monotonic() - self._oldest_unrecorded < FINALIZE_DEFER_S
        )

    def collect_completions(self) -> None:
        """Move outcomes the workers reported into the batch waiting to be written."""
        while True:
            try:
                outcome = self._completions.get_nowait()
            except queue.Empty:
                return
            self._pending_finalize.append(outcome)
            self._finished_unrecorded[outcome.task_name] += 1

    def finalize_completions(self) -> None:
        self.collect_completions()
        if not self._pending_finalize:
            return
        batch = self._pending_finalize
        now = self.clock.now()
        # On a database error this raises with the batch still pending: the loop backs off
        # and the next pass retries it, so an outcome is never dropped while the process lives.
        result = self.store.finalize_runs(batch, now=now)
        self._pending_finalize = []
        self._finished_unrecorded.clear()
        self._oldest_unrecorded = None
        definitions: dict[str, Any] = {}
        with self._running_lock:
            for o in batch:
                handle = self._running.pop(o.run_id, None)
                if handle is not None:
                    definitions[o.task_name] = handle.definition
        if result.rejected:
            log.warning(
                "%d late completion(s) rejected: another instance already marked them abandoned",
                len(result.rejected),
            )
        self.telemetry.runs_finished(result, definitions, now=now)


def _current(span: Any) -> contextlib.AbstractContextManager[Any]:
    """``span`` as the current span while the action runs (nothing to enter without one)."""
    if span is None:
        return contextlib.nullcontext()
    return trace.use_span(span, end_on_exit=False)


def _run_context(run: DispatchedRun) -> RunContext:
    """Who the run is, for ``current_run()`` and a command's environment."""
    return RunContext(
        run_id=run.run_id,
        task=run.task_name,
        scheduled_for=run.scheduled_for,
        attempt=run.attempt,
        trigger=run.trigger,
    )


def _is_async(action: CallableAction) -> bool:
    try:
        return action.is_async()
    except ValueError:
        return False  # unresolvable: the thread path reports the error as a failure
