"""APScheduler 4.0.0a6 multi-instance: scheduler processes sharing one SQLAlchemyDataStore.

Runs inside the peer's own environment (bench/.venv-aps4); the database URL (asyncpg) comes
from ``BENCH_DB_URL``. Two roles:

- ``--add N --due EPOCH``: create the tables and add N one-shot schedules (DateTrigger, all
  due at EPOCH, ``misfire_grace_time=None``, one task with ``max_running_jobs=None``); prints
  one JSON line with the seconds it took.
- ``--workers W``: one scheduler process; prints ``ready`` once it runs, then
  runs until its stdin closes (the harness closes it when the store holds no schedule and
  no job), then prints one JSON line with every call it made: [schedule id, lateness
  against the job's scheduled fire time, end time].

The schedulers share events through PostgreSQL (``AsyncpgEventBroker``), as APScheduler 4
requires of schedulers sharing a data store: with the default local broker a scheduler
never hears of jobs another one adds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from datetime import UTC, datetime

from apscheduler import Scheduler, current_job
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from apscheduler.eventbrokers.asyncpg import AsyncpgEventBroker
from apscheduler.triggers.date import DateTrigger
from sqlalchemy.ext.asyncio import create_async_engine

CALLS: list[tuple[str, float, float]] = []
_lock = threading.Lock()


def job() -> None:
    called = time.time()
    info = current_job.get()
    late = called - info.scheduled_fire_time.timestamp()
    with _lock:
        CALLS.append((str(info.schedule_id), late, time.time()))


def configure(scheduler: Scheduler) -> None:
    # One task for all N schedules: let its jobs run side by side, as N tasks would.
    scheduler.configure_task("multi", func=job, max_running_jobs=None, misfire_grace_time=None)


def add(n: int, due: float) -> None:
    engine = create_async_engine(os.environ["BENCH_DB_URL"])
    started = time.time()
    run_date = datetime.fromtimestamp(due, UTC)
    with Scheduler(SQLAlchemyDataStore(engine)) as scheduler:
        configure(scheduler)
        for i in range(n):
            scheduler.add_schedule(
                "multi", DateTrigger(run_date), id=f"multi-{i:06d}", misfire_grace_time=None
            )
    print(json.dumps({"setup_s": time.time() - started}))


def work(workers: int) -> None:
    engine = create_async_engine(os.environ["BENCH_DB_URL"])
    broker = AsyncpgEventBroker.from_async_sqla_engine(engine)
    with Scheduler(SQLAlchemyDataStore(engine), broker, max_concurrent_jobs=workers) as scheduler:
        configure(scheduler)
        scheduler.start_in_background()
        print("ready", flush=True)
        sys.stdin.read()
        scheduler.stop()
    with _lock:
        calls = list(CALLS)
    print(
        json.dumps(
            {
                "calls": calls,
                "cpu_s": time.process_time(),
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--add", type=int, default=0, help="add this many schedules, then exit")
    parser.add_argument("--due", type=float, help="with --add: when they fall due (epoch)")
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args()
    if args.add:
        add(args.add, args.due)
    else:
        work(args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
