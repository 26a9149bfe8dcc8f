"""Background refreshes read at a paced share of the GIL; the first read and a waiting
caller's are not held back."""

from __future__ import annotations

import asyncio
import threading
import time

import sqlalchemy as sa

from exporter.database import create_reader_engine
from exporter.pacing import Pacer
from exporter.refresh import Refresher
from exporter.settings import ExporterSettings
from scheduler_core import models
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


def test_a_caller_waiting_for_a_paced_read_hurries_it(seeded_sqlite, clock: FakeClock):
    """refresh_once() during a paced background read shares that read and ends its pacing:
    it returns long before the stalled pacer would have let the read go on."""
    engine = create_reader_engine(seeded_sqlite)
    pacers: list[_RecordingPacer] = []

    def pacer() -> Pacer:
        pacers.append(_RecordingPacer(stall=True))
        return pacers[-1]

    settings = ExporterSettings(port=0, refresh_interval=60)
    refresher = Refresher(engine=engine, settings=settings, clock=clock, pacer=pacer)

    async def scenario() -> float:
        await refresher.refresh_once()  # the first read: never paced
        assert not pacers
        loop = asyncio.create_task(refresher.run_forever())
        while not (pacers and pacers[0].entered.is_set()):
            await asyncio.sleep(0.005)
        started = time.monotonic()
        state = await refresher.refresh_once()
        waited = time.monotonic() - started
        assert state.generation == 2 and state.up
        loop.cancel()
        await refresher.aclose()
        return waited

    try:
        waited = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert pacers[0].hurried.is_set()
    assert waited < _STALL_SECONDS / 2
