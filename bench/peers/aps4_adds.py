"""APScheduler 4.0.0a6 adds: N interval schedules added at runtime, one ``add_schedule`` call
each, through its public API on SQLAlchemyDataStore.

Runs inside the peer's own environment (bench/.venv-aps4). The database URL comes from
``BENCH_DB_URL`` (asyncpg, as the other APScheduler 4 scripts); prints one JSON line: the
seconds all N calls took, each call's latency, and the schedule rows stored afterwards.

The scheduler is initialised (its tables created, the task configured once) before the
clock starts, and never started: the calls are timed alone, not beside its processing.
``--api sync`` calls ``Scheduler.add_schedule`` (what the other APScheduler 4 scripts use:
each call crosses to the scheduler's event-loop thread), ``--api async`` awaits
``AsyncScheduler.add_schedule`` directly (an asyncio application's way, no thread hop).
Either way each call is ``configure_task`` (a task lookup) plus one INSERT transaction, as
APScheduler 4 does for every ``add_schedule``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from typing import Any

import anyio
import sqlalchemy as sa
from apscheduler import AsyncScheduler, Scheduler
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.ext.asyncio import create_async_engine

TASK = "adds"


def job() -> None:
    """The scheduled callable (never called here: the scheduler is not started)."""


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--every", type=float, default=60.0)
    parser.add_argument("--api", choices=("sync", "async"), default="sync")
    return parser.parse_args()


def trigger(i: int, every: float) -> IntervalTrigger:
    """Schedule ``i``'s trigger: every ``every`` seconds (whole seconds vary a little, as
    schedctl's mappings do)."""
    return IntervalTrigger(seconds=every + i % 7)


def run_sync(args: argparse.Namespace) -> tuple[float, list[float]]:
    engine = create_async_engine(os.environ["BENCH_DB_URL"])
    latencies: list[float] = []
    with Scheduler(SQLAlchemyDataStore(engine)) as scheduler:
        scheduler.configure_task(TASK, func=job, misfire_grace_time=None)
        started = time.perf_counter()
        for i in range(args.n):
            before = time.perf_counter()
            scheduler.add_schedule(TASK, trigger(i, args.every), id=f"adds-{i:06d}")
            latencies.append(time.perf_counter() - before)
        total = time.perf_counter() - started
    return total, latencies


async def run_async(args: argparse.Namespace) -> tuple[float, list[float]]:
    engine = create_async_engine(os.environ["BENCH_DB_URL"])
    latencies: list[float] = []
    async with AsyncScheduler(SQLAlchemyDataStore(engine)) as scheduler:
        await scheduler.configure_task(TASK, func=job, misfire_grace_time=None)
        started = time.perf_counter()
        for i in range(args.n):
            before = time.perf_counter()
            await scheduler.add_schedule(TASK, trigger(i, args.every), id=f"adds-{i:06d}")
            latencies.append(time.perf_counter() - before)
        total = time.perf_counter() - started
    await engine.dispose()
    return total, latencies


async def count_rows() -> int:
    engine = create_async_engine(os.environ["BENCH_DB_URL"])
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                sa.text("SELECT count(*) FROM schedules WHERE id LIKE 'adds-%'")
            )
            return int(result.scalar_one())
    finally:
        await engine.dispose()


def main() -> int:
    args = arguments()
    if args.api == "sync":
        total, latencies = run_sync(args)
    else:
        total, latencies = anyio.run(run_async, args)
    result: dict[str, Any] = {
        "peer": "apscheduler-4.0.0a6",
        "api": f"{'Scheduler' if args.api == 'sync' else 'AsyncScheduler'}.add_schedule",
        "n": args.n,
        "seconds": total,
        "latencies_s": latencies,
        "rows": anyio.run(count_rows),
        "every": str(timedelta(seconds=args.every)),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
