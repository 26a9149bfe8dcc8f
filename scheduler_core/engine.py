"""The scheduler engine: claim due schedules, run them, record how they ended.

Why over 800 lines: the loop, pacing and lease self-fencing still share this module with
launching, executing, completing and cancelling runs; separating them is the restructure
issue's (#17) work.

One loop thread does all SQL (claim, dispatch, finalize, heartbeat, reap) in batches; a
thread pool runs sync callables and commands; one event loop runs async callables. Workers
report outcomes through a queue, so a burst of finishing runs becomes one finalize
transaction instead of one commit per run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from opentelemetry import trace

from scheduler_core import __version__
from scheduler_core.clock import Clock, DatabaseClock
from scheduler_core.errors import error_reason
from scheduler_core.executors import (
    ActionResult,
    AsyncLoopThread,
    RunHandle,
    WorkerPool,
    run_async_callable,
    run_callable,
    run_command,
)
from scheduler_core.health import HealthServer
from scheduler_core.otel import tracing_installed
from scheduler_core.store import DispatchedRun, RunOutcome, Store
from scheduler_core.tasks import CallableAction, CommandAction
from scheduler_core.telemetry import RateLimitedLogger, TelemetryWriter, tracer

__all__ = ["EngineSettings", "Scheduler", "default_instance_id"]

log = logging.getLogger(__name__)


def default_instance_id() -> str:
    """``hostname:pid``, or ``SCHEDCTL_INSTANCE_ID`` (the pod name in Kubernetes)."""
    return os.environ.get("SCHEDCTL_INSTANCE_ID") or f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """Tuning of one scheduler instance; every field has a production default."""

    instance_id: str
    poll_interval: float = 1.0
    #: Most runs claimed in one pass, written in one finalize batch, and waiting for their
    #: time (look-ahead): at 1,000 runs a second a 0.5 s look-ahead holds 500 of them.
    batch_size: int = 1000
    max_running: int = 64
    claim_lease: float = 30.0
    instance_lease: float = 30.0
    heartbeat_interval: float = 5.0
    drain_grace: float = 30.0
    kill_grace: float = 5.0
    failure_alarm_threshold: int = 3
    health_listen: str | None = "127.0.0.1:8090"
    #: Shortest pause between loop passes; batches completions and bounds idle CPU.
    min_step_interval: float = 0.02
    #: Claim up to ``max_running * claim_ahead`` runs: at most ``max_running`` execute at once,
    #: the rest wait in this instance's queue (their rows read ``running``; the real start
    #: time replaces the claim time when they finish). Fewer, larger claim batches.
    claim_ahead: int = 4
    #: Seconds ahead of their time that ticks are claimed and dispatched; each run then
    #: starts at its own time (a worker waits for it), so the claim's database round
    #: trips are not part of its start delay. At most ``batch_size`` runs wait like this.
    #: 0 claims only what is already due.
    look_ahead: float = 0.5
    #: After a caught-up pass (it claimed everything due within the look-ahead) the next one
    #: starts this long after it began: ticks are claimed ahead of their time anyway, so
    #: passes can be further apart, and each pass's fixed cost (its claim, finalize, health
    #: and next-due transactions) is shared by more runs. Capped at half the look-ahead, so
    #: a tick is still claimed at least that long before it is due. After a pass that
    #: stopped at a limit (a burst, a backlog) the next follows ``min_step_interval`` later.
    caught_up_interval: float = 0.25
    #: A due tick that overlap would skip only because of another instance's runs waits up
    #: to this long for their outcomes (an instance writes a finished run's outcome within
    #: ``FINALIZE_DEFER_S`` plus one pass): a run that already finished never skips a tick.
    overlap_settle: float = 1.0


#: A run's start is written to its health row this long after, unless it finished first.
STARTS_WRITTEN_AFTER_S = 1.0
#: Longest an outcome waits to be written while runs are queued for a worker.
FINALIZE_DEFER_S = 0.5


class Scheduler:
    """One scheduler instance. ``run()`` blocks until ``request_stop()``; tests call ``step()``."""

    def __init__(
        self,
        *,
        engine: sa.Engine,
        settings: EngineSettings,
        clock: Clock | None = None,
        telemetry: TelemetryWriter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._monotonic = monotonic
        self.engine = engine
        self.clock: Clock = clock or DatabaseClock(engine)
        self.store = Store(engine, instance_id=settings.instance_id)
        self.telemetry = telemetry or TelemetryWriter(
            engine,
            instance_id=settings.instance_id,
            failure_threshold=settings.failure_alarm_threshold,
        )
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
        #: ``expected_interval`` per schedule object (a cron expression computes it).
        self._intervals: dict[int, float | None] = {}
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._next_heartbeat = 0.0
        # Monotonic time at which the ``now`` of the last *successful* heartbeat was taken:
        # other instances treat this one as alive until that ``now`` plus the lease.
        self._lease_renewed_at: float | None = None
        self.lease_lost = False
        #: Why the instance stopped by itself (None when it was asked to stop).
        self.stop_reason: str | None = None
        self._next_due: datetime | None = None
        #: The last pass claimed everything due within the look-ahead (see ``_pause``).
        self._caught_up = False
        self._db_errors = RateLimitedLogger(log, 30.0)
        self._backoff = 0.0
        self.health: HealthServer | None = None
        self.draining = False
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Register the instance (reaping its own leftovers) and start the health endpoint."""
        if self._started:
            return
        began = self._monotonic()
        now = self.clock.now()
        reaped = self.store.register_instance(
            now=now,
            lease=timedelta(seconds=self.settings.instance_lease),
            hostname=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
        )
        if reaped:
            log.warning(
                "instance %s restarted: %d run(s) it left running were marked abandoned",
                self.settings.instance_id,
                len(reaped),
            )
        self._lease_renewed_at = began
        # Every worker thread now: a first burst does not pay for creating them.
        self._pool.start()
        if self.settings.health_listen:
            self.health = HealthServer(
                self.settings.health_listen, is_draining=lambda: self.draining
            )
            self.health.start()
        self._started = True
        log.info("scheduler instance %s started", self.settings.instance_id)

    def request_stop(self) -> None:
        """Begin draining (safe to call from a signal handler)."""
        self.draining = True
        self._stop.set()
        self._hurry.set()
        self._wake.set()

    def run(self) -> None:
        """Schedule until stopped, then drain and record what is left."""
        self.start()
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    self.step()
                    self._backoff = 0.0
                except sa.exc.SQLAlchemyError as exc:
                    # Database trouble: back off instead of spinning or crashing. The cap is a
                    # tenth of the lease, so a database back within the lease is noticed in time
                    # for the next heartbeat to keep this instance's runs its own.
                    cap = min(30.0, max(0.5, self.settings.instance_lease / 10))
                    self._backoff = min(cap, max(0.5, self._backoff * 2))
                    self._db_errors.error(
                        "loop",
                        f"database error, retrying in {self._backoff:.1f}s: "
                        f"{type(exc).__name__}: {error_reason(exc)}",
                    )
                    # Wake up in time to notice a lost lease, however long the backoff.
                    self._wake.wait(min(self._backoff, self._lease_remaining() + 0.05))
                    self._wake.clear()
                    continue
                # Let finishing runs accumulate: at hundreds of runs a second one finalize per
                # completion would cost a transaction per run.
                self._hurry.wait(self._pause(began, time.monotonic()))
                self._wake.wait(self._sleep_seconds())
                self._wake.clear()
        finally:
            self.drain()

    def _pause(self, began: float, now: float) -> float:
        """Seconds to wait at ``now`` after the pass that began at ``began`` (both
        ``time.monotonic()``).

        ``min_step_interval``; after a caught-up pass, until ``caught_up_interval`` (at most
        half the look-ahead) after it began: caught-up passes start at that cadence, so the
        time a pass takes does not push the next claim later and eat into the look-ahead.
        """
        settings = self.settings
        if not self._caught_up:
            return settings.min_step_interval
        cadence = min(settings.caught_up_interval, settings.look_ahead / 2)
        return max(settings.min_step_interval, began + cadence - now)

    def _sleep_seconds(self) -> float:
        wait = self.settings.poll_interval
        if self._next_due is not None:
            # Wake when the earliest schedule enters the look-ahead window.
            until_due = (self._next_due - self.clock.now()).total_seconds()
            until_due -= self.settings.look_ahead
            wait = min(wait, max(0.0, until_due))
        until_heartbeat = self._next_heartbeat - self._monotonic()
        return max(0.0, min(wait, until_heartbeat, self._lease_remaining() + 0.05))

    def _lease_remaining(self) -> float:
        """Seconds until this instance's own heartbeat lease runs out (inf before start)."""
        if self._lease_renewed_at is None:
            return float("inf")
        return self._lease_renewed_at + self.settings.instance_lease - self._monotonic()

    def _give_up_lease(self) -> None:
        """Self-fencing: the heartbeat was not renewed within the lease, so other instances may
        already have marked this instance's runs abandoned (and may run their next ticks).
        Stop claiming, cancel every local run and shut down; the late writes are rejected."""
        assert self._lease_renewed_at is not None
        age = self._monotonic() - self._lease_renewed_at
        self.lease_lost = True
        self.stop_reason = (
            f"no successful heartbeat for {age:.1f}s, past the {self.settings.instance_lease:g}s "
            "lease (process paused, or database unreachable)"
        )
        log.error(
            "instance %s lost its lease: %s; other instances may already have marked its runs "
            "abandoned, so it stops claiming, cancels its %d local run(s) and shuts down",
            self.settings.instance_id,
            self.stop_reason,
            len(self._running),
        )
        self.request_stop()
        self._cancel_all(f"instance {self.settings.instance_id} lost its lease: {self.stop_reason}")

    def drain(self) -> None:
        """Stop claiming, wait up to ``drain_grace`` for runs, then cancel and record the rest."""
        if self._stopped.is_set():
            return
        self.draining = True
        log.info(
            "draining: waiting up to %.1fs for %d running run(s)",
            self.settings.drain_grace,
            len(self._running),
        )
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self.store.set_instance_state("draining", now=self.clock.now())
        deadline = time.monotonic() + self.settings.drain_grace
        while self._running and time.monotonic() < deadline:
            # With the database down, poll less often: the outcomes stay queued meanwhile.
            pause = 0.1 if self._finalize_quietly() else 1.0
            self._enforce_deadlines()
            self._wake.wait(min(pause, max(0.0, deadline - time.monotonic())))
            self._wake.clear()
        self._finalize_quietly()
        leftovers = self._cancel_all(
            "scheduler shut down before the run finished (drain grace expired)"
        )
        self._pool.discard_waiting()
        if leftovers:
            log.warning("drain grace expired: %d run(s) recorded as cancelled", leftovers)
        # Commands get kill_grace to exit; their workers then report cancelled (ignored if first).
        if not self._finalize_quietly() and self._pending_finalize:
            log.error(
                "%d run outcome(s) could not be recorded (database unreachable); those runs "
                "stay 'running' until another instance, or this one restarted with the same "
                "id, marks them abandoned",
                len(self._pending_finalize),
            )
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self.store.set_instance_state("stopped", now=self.clock.now())
        self._pool.shutdown()
        if self._async is not None:
            self._async.stop()
        if self.health is not None:
            self.health.stop()
        self._stopped.set()
        log.info("scheduler instance %s stopped", self.settings.instance_id)

    # ------------------------------------------------------------------ one iteration
    def step(self) -> int:
        """One pass: heartbeat when due, finalize finished runs, claim and start due ones.

        Returns how many runs it started. An instance that could not renew its heartbeat
        within its lease stops itself here instead (see ``_give_up_lease``).
        """
        self._caught_up = False
        if self.lease_lost:
            return 0
        if self._lease_remaining() < 0:
            self._give_up_lease()
            return 0
        if self._monotonic() >= self._next_heartbeat:
            self.heartbeat()
        hurry = self._hurry.is_set()
        if hurry:
            self._hurry.clear()
        if hurry or not self._defer_finalize():
            self._finalize_completions()
        self._enforce_deadlines()
        if self.draining:
            return 0
        launched: list[DispatchedRun] = []
        claimed_total = 0
        now = self.clock.now()
        try:
            while True:
                # Runs that finished since this pass began free their slot at once (their
                # outcomes are written at the next pass), so a burst's next batch does not
                # wait for the previous batch's finalize.
                self._collect_completions()
                waiting = len(self._pool)  # claimed ahead, not yet due
                in_flight = len(self._running) - len(self._pending_finalize) - waiting
                capacity = min(
                    self.settings.max_running * self.settings.claim_ahead - in_flight,
                    self.settings.batch_size - waiting,
                )
                # One pass takes at most a batch and ends by the next heartbeat: under a
                # backlog, slots freed by finished runs would otherwise keep it claiming
                # forever, with outcomes unwritten and the lease unrenewed.
                capacity = min(capacity, self.settings.batch_size - claimed_total)
                if capacity <= 0 or self._monotonic() >= self._next_heartbeat:
                    break
                now = self.clock.now()
                limit = capacity
                claimed, dispatched = self.store.claim_and_dispatch(
                    now=now,
                    limit=limit,
                    lease=timedelta(seconds=self.settings.claim_lease),
                    thread_name=threading.current_thread().name,
                    finished_unrecorded=self._finished_unrecorded,
                    look_ahead=timedelta(seconds=self.settings.look_ahead),
                    settle=timedelta(seconds=self.settings.overlap_settle),
                )
                claimed_total += claimed
                self._launch(dispatched)
                launched.extend(dispatched)
                if claimed < limit:
                    self._caught_up = True
                    break
        finally:
            # Health rows of every batch in one write, after the runs are on their way: a
            # burst's second batch does not wait behind the first one's telemetry. A run
            # that finishes within STARTS_WRITTEN_AFTER_S has its start written with its
            # finish; a longer one shows as running that much later.
            self.telemetry.runs_started(launched, now=now)
            self.telemetry.write_starts(older_than=STARTS_WRITTEN_AFTER_S)
        self._next_due = self.store.next_due_at()
        return len(launched)

    def heartbeat(self) -> None:
        """Renew the instance row, act on cancel requests, reap dead instances, check stuck."""
        began = self._monotonic()
        now = self.clock.now()
        # Timed by the same clock as the lease it renews (``_lease_remaining``).
        self._next_heartbeat = began + self.settings.heartbeat_interval
        state = "draining" if self.draining else "running"
        try:
            cancel_ids = self.store.heartbeat(now=now, running_runs=len(self._running), state=state)
        except LookupError:
            # The row was removed (an admin on another host): this process is alive and its
            # runs are its own, so it rejoins without reaping them (unlike a restart).
            log.warning(
                "instance %s found its row removed; registering it again",
                self.settings.instance_id,
            )
            self.store.register_instance(
                now=now,
                lease=timedelta(seconds=self.settings.instance_lease),
                hostname=socket.gethostname(),
                pid=os.getpid(),
                version=__version__,
                running_runs=len(self._running),
            )
            cancel_ids = []
        self._lease_renewed_at = began
        for run_id, reason in cancel_ids:
            self.cancel_local(run_id, reason)
        reaped = self.store.reap_abandoned(now=now)
        if reaped:
            log.warning("marked %d run(s) of dead instances abandoned", len(reaped))
        self.telemetry.check_alarms(now=now)

    # ------------------------------------------------------------------ execution
    def _launch(self, runs: list[DispatchedRun]) -> None:
        """Register the runs and start each now, or at its ``not_before`` if that is later."""
        if not runs:
            return
        # The timeout clock starts when a worker picks a run up (see _mark_started).
        handles = [
            RunHandle(
                run_id=run.run_id,
                task_name=run.task_name,
                definition=run.definition,
                deadline=None,
                scheduled_for=run.scheduled_for,
                attempt=run.attempt,
                started_at=run.started_at,
            )
            for run in runs
        ]
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

    def _execute_in_thread(self, run: DispatchedRun, handle: RunHandle) -> None:
        current = threading.current_thread()
        current._schedctl_busy = True  # type: ignore[attr-defined]
        try:
            self._execute_in_thread_inner(run, handle)
        finally:
            current._schedctl_busy = False  # type: ignore[attr-defined]

    def _mark_started(self, handle: RunHandle) -> None:
        """A worker starts the run now: its real start time and its timeout begin here."""
        handle.started_at = self.clock.now()
        timeout = handle.definition.policies.timeout
        if timeout:
            handle.deadline = time.monotonic() + timeout

    def _execute_in_thread_inner(self, run: DispatchedRun, handle: RunHandle) -> None:
        if not self._begin(handle):
            return
        span = self._span(run)
        with _current(span):
            action = run.definition.action
            try:
                if isinstance(action, CommandAction):
                    result = run_command(
                        action,
                        handle,
                        timeout=run.definition.policies.timeout,
                        grace=run.definition.policies.timeout_grace,
                    )
                else:
                    assert isinstance(action, CallableAction)
                    result = run_callable(action, handle)
            except Exception as exc:  # the executor itself must never lose a run
                result = ActionResult(
                    status="failure", error_message=f"schedctl executor error: {exc!r}"
                )
        self._complete(run, handle, result, span)

    async def _execute_async(self, run: DispatchedRun, handle: RunHandle) -> None:
        if not self._begin(handle):
            return
        span = self._span(run)
        assert isinstance(run.definition.action, CallableAction)
        with _current(span):
            result = await run_async_callable(
                run.definition.action, handle, run.definition.policies.timeout
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
            RunOutcome(
                run_id=run.run_id,
                task_name=run.task_name,
                status=result.status,
                scheduled_for=run.scheduled_for,
                attempt=run.attempt,
                started_at=handle.started_at,
                finished_at=finished_at,
                error_message=result.error_message,
                error_traceback=result.error_traceback,
                exit_code=result.exit_code,
                pid=result.pid or handle.pid,
                thread_name=threading.current_thread().name,
                trace_id=trace_id,
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
        # By id: the store keeps every parsed definition (and its schedule) for the
        # process's life, so an id is never reused for another schedule.
        try:
            interval = self._intervals[id(schedule)]
        except KeyError:
            interval = self._intervals[id(schedule)] = schedule.expected_interval
        if interval is None:
            return False
        settings = self.settings
        margin = settings.look_ahead + settings.caught_up_interval
        return (finished_at - run.scheduled_for).total_seconds() + margin >= interval

    def _record_without_worker(self, handle: RunHandle, status: str, message: str) -> None:
        """Finish a run from the loop thread (timeout of a sync callable, cancel, drain)."""
        if not handle.claim_finish():
            return
        self._completions.put(
            RunOutcome(
                run_id=handle.run_id,
                task_name=handle.task_name,
                status=status,
                scheduled_for=handle.scheduled_for,
                attempt=handle.attempt,
                started_at=handle.started_at,
                finished_at=self.clock.now(),
                error_message=message,
                pid=handle.pid,
            )
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

    def _enforce_deadlines(self) -> None:
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

    def _cancel_all(self, reason: str) -> int:
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
    def _finalize_quietly(self) -> bool:
        """Finalize while draining; on a database error keep the outcomes queued, say so."""
        try:
            self._finalize_completions()
        except sa.exc.SQLAlchemyError as exc:
            self._db_errors.error(
                "drain",
                f"cannot record run outcomes while draining: {type(exc).__name__}: "
                f"{error_reason(exc)}",
            )
            return False
        return True

    def _defer_finalize(self) -> bool:
        """While runs wait for a worker, writing outcomes would compete with starting them
        (the interpreter lock): outcomes wait up to ``FINALIZE_DEFER_S``, or until a full
        batch has gathered."""
        self._collect_completions()
        if not self._pending_finalize:
            return True
        if self._oldest_unrecorded is None:
            self._oldest_unrecorded = time.monotonic()
        return (
            self._queued > 0
            and len(self._pending_finalize) < self.settings.batch_size
            and time.monotonic() - self._oldest_unrecorded < FINALIZE_DEFER_S
        )

    def _collect_completions(self) -> None:
        """Move outcomes the workers reported into the batch waiting to be written."""
        while True:
            try:
                outcome = self._completions.get_nowait()
            except queue.Empty:
                return
            self._pending_finalize.append(outcome)
            self._finished_unrecorded[outcome.task_name] += 1

    def _finalize_completions(self) -> None:
        self._collect_completions()
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

    # ------------------------------------------------------------------ test helpers
    @staticmethod
    def busy_worker_threads() -> int:
        """Worker threads still inside a sync callable (they cannot be stopped)."""
        return sum(
            1
            for t in threading.enumerate()
            if t.name.startswith("schedctl-run")
            and t.is_alive()
            and getattr(t, "_schedctl_busy", False)
        )

    @property
    def running_count(self) -> int:
        return len(self._running)

    def wait_for_completions(self, count: int, timeout: float = 10.0) -> None:
        """Block until ``count`` outcomes are queued (tests; bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self._completions.qsize() < count and time.monotonic() < deadline:
            time.sleep(0.005)


def _current(span: Any) -> contextlib.AbstractContextManager[Any]:
    """``span`` as the current span while the action runs (nothing to enter without one)."""
    if span is None:
        return contextlib.nullcontext()
    return trace.use_span(span, end_on_exit=False)


def _is_async(action: CallableAction) -> bool:
    try:
        return action.is_async()
    except ValueError:
        return False  # unresolvable: the thread path reports the error as a failure


def install_signal_handlers(
    scheduler: Scheduler, register: Callable[..., Any] | None = None
) -> None:
    """SIGTERM and SIGINT start a drain."""
    import signal

    reg = register or signal.signal

    def handler(signum: int, _frame: Any) -> None:
        log.info("received signal %d: draining", signum)
        scheduler.request_stop()

    reg(signal.SIGTERM, handler)
    reg(signal.SIGINT, handler)
