"""The scheduler loop of one instance: pacing its passes, claiming due schedules in
batches, the heartbeat and lease self-fencing, and the drain at shutdown.

One loop thread does all SQL (claim, dispatch, finalize, heartbeat, reap) in batches; what
happens to a run once it is claimed (workers, completion, cancel, finalize batches) is
``runtime.lifecycle``'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa

from scheduler_core.clock import Clock, DatabaseClock
from scheduler_core.errors import error_reason
from scheduler_core.liveness import HealthServer
from scheduler_core.runtime.lifecycle import RunLifecycle
from scheduler_core.runtime.settings import STARTS_WRITTEN_AFTER_S, EngineSettings
from scheduler_core.store import DispatchedRun, Store
from scheduler_core.telemetry import TelemetryWriter
from scheduler_core.telemetry.otel import otel_instruments
from scheduler_core.version import __version__

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)


class Scheduler(RunLifecycle):
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
        self._monotonic = monotonic
        self.engine = engine
        resolved_clock: Clock = clock or DatabaseClock(engine)
        super().__init__(
            settings=settings,
            clock=resolved_clock,
            store=Store(engine, instance_id=settings.instance_id),
            telemetry=telemetry
            or TelemetryWriter(
                engine,
                instance_id=settings.instance_id,
                failure_threshold=settings.failure_alarm_threshold,
            ),
        )
        # The OpenTelemetry next-run gauge follows every advance this instance writes.
        self.store.on_next_runs = otel_instruments().next_run.update
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
        self.cancel_all(f"instance {self.settings.instance_id} lost its lease: {self.stop_reason}")

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
            pause = 0.1 if self.finalize_quietly() else 1.0
            self.enforce_deadlines()
            self._wake.wait(min(pause, max(0.0, deadline - time.monotonic())))
            self._wake.clear()
        self.finalize_quietly()
        leftovers = self.cancel_all(
            "scheduler shut down before the run finished (drain grace expired)"
        )
        self._pool.discard_waiting()
        if leftovers:
            log.warning("drain grace expired: %d run(s) recorded as cancelled", leftovers)
        # Commands get kill_grace to exit; their workers then report cancelled (ignored if first).
        if not self.finalize_quietly() and self._pending_finalize:
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
        """One pass: heartbeat when due, claim and start due runs, then finalize finished ones.

        The claim comes first: the runs it takes start at their own time on the workers
        while this thread writes the finished runs' outcomes, so a long finalize does not eat
        into the look-ahead (it did: a tick due within the finalize waited for it). Runs
        finished and not yet written do not count as running for the claim's overlap and
        capacity (``finished_unrecorded``).

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
        self.enforce_deadlines()
        if self.draining:
            self._finalize(hurry=hurry)
            return 0
        started = self._claim_and_launch()
        self._finalize(hurry=hurry)
        self._next_due = self.store.next_due_at()
        return started

    def _finalize(self, *, hurry: bool) -> None:
        """Write the finished runs' outcomes, unless they may wait (``defer_finalize``)."""
        if hurry or not self.defer_finalize():
            self.finalize_completions()

    def _claim_and_launch(self) -> int:
        """Claim due runs in batches up to this pass's capacity and launch them; returns how
        many were launched."""
        launched: list[DispatchedRun] = []
        claimed_total = 0
        now = self.clock.now()
        try:
            while True:
                # Runs that finished since this pass began free their slot at once (their
                # outcomes are written after the claim): a burst's next batch does not wait.
                self.collect_completions()
                capacity = self._capacity(claimed_total)
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
                self.launch(dispatched)
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
        return len(launched)

    def _capacity(self, claimed_total: int) -> int:
        """How many runs this pass may still claim, having claimed ``claimed_total``."""
        waiting = len(self._pool)  # claimed ahead, not yet due
        in_flight = len(self._running) - len(self._pending_finalize) - waiting
        capacity = min(
            self.settings.max_running * self.settings.claim_ahead - in_flight,
            self.settings.batch_size - waiting,
        )
        # One pass takes at most a batch and ends by the next heartbeat: under a backlog,
        # slots freed by finished runs would otherwise keep it claiming forever, with
        # outcomes unwritten and the lease unrenewed.
        return min(capacity, self.settings.batch_size - claimed_total)

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

    def busy_callable_threads(self) -> int:
        """Worker threads still inside a sync callable: they cannot be stopped, so a
        process that must exit leaves without waiting for them."""
        return self._pool.busy_workers()
