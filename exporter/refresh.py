"""The background refresh: reads a snapshot from SQL in a worker thread, never on the event loop.

A failed or slow refresh keeps the last good snapshot and marks the exporter down
(``scheduler_exporter_up 0``); scrapes keep answering from memory meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import sqlalchemy as sa

from exporter.database import describe_db_error, display_url
from exporter.pacing import Pacer
from exporter.settings import ExporterSettings
from scheduler_core.db import check_schema
from scheduler_core.errors import SchemaVersionError
from scheduler_core.store.snapshot import Snapshot, SnapshotReader

__all__ = ["Clock", "RefreshState", "Refresher", "utc_now"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: Failures that mean "the database could not be read" (anything else is logged in full).
_DATABASE_ERRORS = (sa.exc.SQLAlchemyError, OSError, SchemaVersionError, TimeoutError)

#: While the database stays down, repeat the warning at most this often (seconds).
_REPEAT_WARNING_EVERY = 60.0


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class RefreshState:
    """What the exporter knows right now; replaced as a whole after every refresh attempt."""

    #: The last snapshot read successfully (kept while the database is unreachable).
    snapshot: Snapshot | None = None
    #: Whether the last refresh attempt succeeded.
    up: bool = False
    last_success_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_duration_seconds: float | None = None
    #: Why the last attempt failed (one line, password scrubbed); None after a success.
    last_error: str | None = None
    #: Bumped on every replacement; caches of rendered output key on it.
    generation: int = 0

    def snapshot_age(self, now: datetime) -> float | None:
        if self.last_success_at is None:
            return None
        return max(0.0, (now - self.last_success_at).total_seconds())


class Refresher:
    """Owns the current :class:`RefreshState` and the loop that renews it."""

    def __init__(
        self,
        *,
        engine: sa.Engine,
        settings: ExporterSettings,
        clock: Clock = utc_now,
        before_publish: Callable[[RefreshState], Awaitable[None]] | None = None,
        pacer: Callable[[], Pacer] | None = None,
    ) -> None:
        """``before_publish`` runs with each new state before scrapes can see it (the app
        renders ``/metrics`` bodies there, so no scrape waits for a render). ``pacer`` paces
        the background refreshes' reads (see :meth:`run_forever`)."""
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._before_publish = before_publish
        self._pacer = pacer
        self._pacing: Pacer | None = None
        self._state = RefreshState()
        # One worker: refreshes never overlap, and a hung connect cannot pile up threads.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="schedctl-exporter-refresh"
        )
        self._inflight: concurrent.futures.Future[Snapshot] | None = None
        self._running: asyncio.Future[tuple[int, RefreshState]] | None = None
        # Refresh attempts begun so far (see refresh_once).
        self._attempts_begun = 0
        self._reader = SnapshotReader(late_grace=settings.late_grace)
        self._schema_checked = not settings.check_schema
        self._last_warning = -_REPEAT_WARNING_EVERY

    @property
    def state(self) -> RefreshState:
        return self._state

    @property
    def clock(self) -> Clock:
        return self._clock

    async def refresh_once(self) -> RefreshState:
        """Read a new snapshot that begins after this call; on failure keep the old one and
        mark the exporter down.

        So whatever was committed before the call is in the state returned: the status page
        shows a task paused as soon as its pause answers. A call while another refresh is under
        way shares it if that read began after the call, else hurries it (if it was paced),
        waits for it and then shares the next read.
        """
        wanted = self._attempts_begun + 1
        while True:
            attempt, state = await self._refresh_shared(paced=False)
            if attempt >= wanted:
                return state

    async def _refresh_shared(self, *, paced: bool) -> tuple[int, RefreshState]:
        """The refresh under way, or a new one: the number of its attempt and its state."""
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._refresh(paced))
        elif not paced and self._pacing is not None:
            self._pacing.hurry()
        return await asyncio.shield(self._running)

    async def _refresh(self, paced: bool) -> tuple[int, RefreshState]:
        # Numbered before anything else: a caller that came before this line sees this read
        # (or this failure) as beginning after its call.
        self._attempts_begun += 1
        attempt = self._attempts_begun
        return attempt, await self._attempt(paced)

    async def _attempt(self, paced: bool) -> RefreshState:
        if self._inflight is not None and not self._inflight.done():
            # A read that timed out is still stuck in the database; don't queue another behind it.
            reason = "previous refresh still running (database slow or unreachable)"
            return await self._fail(self._clock(), self._settings.refresh_timeout, reason)
        now = self._clock()
        started = time.perf_counter()
        self._inflight = self._pool.submit(self._read, now, paced)
        try:
            snapshot = await asyncio.wait_for(
                asyncio.wrap_future(self._inflight), timeout=self._settings.refresh_timeout
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, _DATABASE_ERRORS):
                # Not an outage but a bug or bad data; the traceback is what fixes it.
                log.error("refresh failed unexpectedly", exc_info=exc)
            reason = describe_db_error(exc, self._engine.url)
            if isinstance(exc, TimeoutError):
                reason = f"refresh took longer than {self._settings.refresh_timeout:g}s"
            return await self._fail(now, time.perf_counter() - started, reason)
        duration = time.perf_counter() - started
        if not self._state.up and self._state.last_attempt_at is not None:
            log.info("database %s is readable again", display_url(self._engine.url))
        await self._publish(self._attempted(now, duration, snapshot=snapshot))
        return self._state

    def _attempted(
        self,
        now: datetime,
        duration: float,
        *,
        snapshot: Snapshot | None = None,
        error: str | None = None,
    ) -> RefreshState:
        """The state after an attempt at ``now`` that took ``duration``: it read ``snapshot``,
        or failed with ``error`` and keeps serving the last good snapshot."""
        state = self._state
        if error is None:
            state = replace(state, snapshot=snapshot, last_success_at=now)
        return replace(
            state, up=error is None, last_error=error, last_attempt_at=now,
            last_duration_seconds=duration, generation=state.generation + 1,
        )  # fmt: skip

    def _read(self, now: datetime, paced: bool) -> Snapshot:
        if not self._schema_checked:
            check_schema(self._engine)
            self._schema_checked = True
        # The first read is never paced: /ready waits for it.
        pacing = None
        if paced and self._pacer is not None and self._state.snapshot is not None:
            pacing = self._pacing = self._pacer()
        try:
            return self._reader.read(self._engine, now, pacing)
        finally:
            self._pacing = None

    async def _fail(self, now: datetime, duration: float, reason: str) -> RefreshState:
        first = self._state.up or self._state.last_attempt_at is None
        mono = time.monotonic()
        if first or mono - self._last_warning >= _REPEAT_WARNING_EVERY:
            self._last_warning = mono
            kept = "serving the last good snapshot" if self._state.snapshot else "no data yet"
            url = display_url(self._engine.url)
            log.warning("cannot read database %s: %s (%s)", url, reason, kept)
        await self._publish(self._attempted(now, duration, error=reason))
        return self._state

    async def _publish(self, state: RefreshState) -> None:
        if self._before_publish is not None:
            try:
                await self._before_publish(state)
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed pre-render must never stop the refresh loop
                log.exception("preparing the new snapshot for scrapes failed")
        self._state = state

    async def run_forever(self) -> None:
        """Refresh every ``refresh_interval`` seconds until cancelled.

        These reads are paced (when a pacer was given): nobody waits for them, and turning
        10,000 rows into a snapshot at full speed takes the GIL and a core from the request
        handlers for 0.3-0.5 s, the admin API's creates' tail (bench/RESULTS.md, issue 18).
        """
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self._refresh_shared(paced=True)
            await asyncio.sleep(max(0.0, self._settings.refresh_interval - (loop.time() - started)))

    async def aclose(self) -> None:
        """Cancel a refresh under way and stop the worker thread (a read stuck in the database
        is abandoned, not awaited)."""
        if self._running is not None and not self._running.done():
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running
        self._pool.shutdown(wait=False, cancel_futures=True)
