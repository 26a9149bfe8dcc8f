"""Background refreshes read at a paced share of the GIL; the first read and a waiting
caller's are not held back."""

from __future__ import annotations

import asyncio
import threading
import time

import sqlalchemy as sa

from exporter.database import create_reader_engine
from exporter.pacing import Pacer
from exporter.refresh import Refresher, RefreshState
from exporter.settings import ExporterSettings
from scheduler_core import models
from scheduler_core.client import Client
from tests.exporter.factories import FakeClock

#: How long the blocking pacer below would hold a read that nobody hurried.
_STALL_SECONDS = 20.0


class _RecordingPacer(Pacer):
    """Counts the units of work it is called between; ``stall`` blocks the first call until
    hurried (at most ``_STALL_SECONDS``)."""

    def __init__(self, *, stall: bool = False) -> None:
        super().__init__(share=1.0, slice_seconds=0.0, budget=0.0)
        self.calls = 0
        self.entered = threading.Event()
        self.hurried = threading.Event()
        self._stall = stall

    def hurry(self) -> None:
        self.hurried.set()
        super().hurry()

    def __call__(self) -> None:
        self.calls += 1
        if self._stall and self.calls == 1:
            self.entered.set()
            self.hurried.wait(_STALL_SECONDS)


def _task_count(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(models.schedules)) or 0)
    finally:
        engine.dispose()


def test_background_reads_are_paced_after_the_first(seeded_sqlite, clock: FakeClock):
    """run_forever's first read (the one /ready waits for) runs flat out; the next ones call
    the pacer between rows: at least once a task."""
    engine = create_reader_engine(seeded_sqlite)
    made: list[tuple[int, _RecordingPacer]] = []
    settings = ExporterSettings(port=0, refresh_interval=0.01)
    refresher: Refresher

    def pacer() -> Pacer:
        made.append((refresher.state.generation, _RecordingPacer()))
        return made[-1][1]

    refresher = Refresher(engine=engine, settings=settings, clock=clock, pacer=pacer)

    async def scenario() -> None:
        loop = asyncio.create_task(refresher.run_forever())
        deadline = time.monotonic() + 10
        while refresher.state.generation < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        loop.cancel()
        await refresher.aclose()

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()
    assert refresher.state.generation >= 3 and refresher.state.up
    assert made, "no background read was paced"
    assert all(generation >= 1 for generation, _ in made)
    assert min(p.calls for _, p in made) >= _task_count(seeded_sqlite) > 0


class _Stalled:
    """A refresher over ``url`` whose background reads stall in their pacer until hurried."""

    def __init__(self, url: str, clock: FakeClock) -> None:
        self.engine = create_reader_engine(url)
        self.pacers: list[_RecordingPacer] = []
        settings = ExporterSettings(port=0, refresh_interval=60)
        self.refresher = Refresher(
            engine=self.engine, settings=settings, clock=clock, pacer=self._pacer
        )
        self._loop: asyncio.Task[None] | None = None

    def _pacer(self) -> Pacer:
        self.pacers.append(_RecordingPacer(stall=True))
        return self.pacers[-1]

    async def start_a_stalled_read(self) -> None:
        """The first read (never paced), then a background read held in its pacer."""
        await self.refresher.refresh_once()
        assert not self.pacers
        self._loop = asyncio.create_task(self.refresher.run_forever())
        while not (self.pacers and self.pacers[0].entered.is_set()):
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        assert self._loop is not None
        self._loop.cancel()
        await self.refresher.aclose()


def test_a_caller_waiting_for_a_paced_read_hurries_it(seeded_sqlite, clock: FakeClock):
    """refresh_once() during a paced background read ends its pacing, waits for it and reads
    once more (the paced read began before the call): it returns long before the stalled
    pacer would have let the read go on."""
    stalled = _Stalled(seeded_sqlite, clock)

    async def scenario() -> float:
        await stalled.start_a_stalled_read()
        started = time.monotonic()
        state = await stalled.refresher.refresh_once()
        waited = time.monotonic() - started
        assert state.generation == 3 and state.up
        await stalled.close()
        return waited

    try:
        waited = asyncio.run(scenario())
    finally:
        stalled.engine.dispose()
    assert stalled.pacers[0].hurried.is_set()
    assert waited < _STALL_SECONDS / 2


def test_a_write_before_refresh_once_is_in_its_snapshot(seeded_sqlite, clock: FakeClock):
    """A task paused while a background read is under way (that read's transaction began
    before the pause) is paused in the state refresh_once() returns: the status page's
    redirect after Pause shows it paused, not the snapshot read before."""
    stalled = _Stalled(seeded_sqlite, clock)

    def badge(state: RefreshState) -> str:
        assert state.snapshot is not None
        return state.snapshot.tasks_by_name["ok-task"].badge

    async def scenario() -> tuple[str, str]:
        await stalled.start_a_stalled_read()
        before = badge(stalled.refresher.state)
        with Client(seeded_sqlite, actor="test") as client:
            client.pause("ok-task", "a write during the paced read")
        after = badge(await stalled.refresher.refresh_once())
        await stalled.close()
        return before, after

    try:
        before, after = asyncio.run(scenario())
    finally:
        stalled.engine.dispose()
    assert (before, after) == ("ok", "paused")
