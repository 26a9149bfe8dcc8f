"""APScheduler 4.0.0a6 scale: N interval schedules (N / every due each second) in
SQLAlchemyDataStore; the store's own empty poll timed before the first tick, then the
lateness of every call in a window while the scheduler runs them.

Runs inside the peer's own environment (bench/.venv-aps4). The database URL comes from
``BENCH_DB_URL`` (asyncpg); prints one JSON line. The schedules are stored in bulk: built
as ``AsyncScheduler.add_schedule`` builds them and marshalled by the data store's own code
(what its ``add_schedule`` inserts), one executemany instead of 100,000 transactions. The
empty poll is what the scheduler's loop asks the store each wake-up:
``acquire_schedules(identity, lease_duration, 100)`` and ``get_next_schedule_run_time()``.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import anyio
import empty_poll
import sqlalchemy as sa
import steady_window
from aps4_steady import job
from apscheduler import AsyncScheduler, CoalescePolicy, Schedule, Task
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

CHUNK = 5_000


def schedule_rows(
    store: SQLAlchemyDataStore, task: Task, firsts: list[float], every: float
) -> list[dict[str, Any]]:
    """The rows the data store's ``add_schedule`` would insert for ``aps4_steady``'s
    schedules (``misfire_grace_time=None``, the rest as ``add_schedule`` defaults them)."""
    rows = []
    for i, first in enumerate(firsts):
        trigger = IntervalTrigger(seconds=every, start_time=datetime.fromtimestamp(first, UTC))
        schedule = Schedule(
            id=f"scale-{i:06d}",
            task_id=task.id,
            trigger=trigger,
            coalesce=CoalescePolicy.latest,
            misfire_grace_time=None,
            metadata=task.metadata.copy(),
            job_executor=task.job_executor,
        )
        schedule.next_fire_time = trigger.next()
        rows.append(store._convert_outgoing_fire_times(schedule.marshal(store.serializer)))
    return rows


async def probe(
    engine: AsyncEngine, store: SQLAlchemyDataStore, scheduler: AsyncScheduler, probes: int
) -> dict[str, Any]:
    """Time ``probes`` empty polls and EXPLAIN the two statements they run."""
    captured: dict[str, tuple[str, Any]] = {}

    def capture(
        _conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: Any
    ) -> None:
        name = "acquire" if statement.lstrip().startswith("WITH") else "next_due"
        captured.setdefault(name, (statement, params))

    polls = empty_poll.EmptyPolls()
    sa.event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        for _ in range(probes):
            polls.start()
            acquired = await store.acquire_schedules("bench-probe", scheduler.lease_duration, 100)
            polls.polled(len(acquired))
            await store.get_next_schedule_run_time()
            polls.next_due()
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", capture)
    plans: dict[str, list[str]] = {}
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        for name, (statement, params) in captured.items():
            rows = await raw.driver_connection.fetch("EXPLAIN " + statement, *params)
            plans[name] = [str(r[0]) for r in rows]
    return polls.as_dict(plans=plans)


async def main_async() -> None:
    args = steady_window.arguments()
    engine = create_async_engine(os.environ["BENCH_DB_URL"])
    store = SQLAlchemyDataStore(engine)
    started = time.time()
    origin = started + args.lead
    # Initialised (tables created), not started: nothing is processed until the probes end.
    async with AsyncScheduler(store, max_concurrent_jobs=args.workers) as scheduler:
        task = await scheduler.configure_task(
            "steady", func=job, max_running_jobs=None, misfire_grace_time=None
        )
        firsts = empty_poll.first_ticks(origin, args.tasks, args.every)
        rows = schedule_rows(store, task, firsts, args.every)
        async with engine.begin() as conn:
            for start in range(0, len(rows), CHUNK):
                await conn.execute(store._t_schedules.insert(), rows[start : start + CHUNK])
        async with engine.connect() as conn:
            await conn.exec_driver_sql("ANALYZE")
            await conn.commit()
        setup_s = time.time() - started
        probed = await probe(engine, store, scheduler, args.probes)
        overran = time.time() > origin
        await scheduler.start_in_background()
        window = await anyio.to_thread.run_sync(steady_window.measure, args, origin)
        await scheduler.stop()
    await engine.dispose()
    steady_window.report(
        "apscheduler-4.0.0a6", setup_s=setup_s, overran=overran, window=window, extra=probed
    )


def main() -> int:
    anyio.run(main_async)
    return 0


if __name__ == "__main__":
    sys.exit(main())
