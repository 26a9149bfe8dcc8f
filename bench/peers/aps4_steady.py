"""APScheduler 4.0.0a6 steady: N interval schedules, grids offset evenly, SQLAlchemyDataStore;
after a warm-up, the lateness of every call, process CPU and peak RSS over a window.

Runs inside the peer's own environment (bench/.venv-aps4). The database URL comes from
``BENCH_DB_URL`` (an async driver); prints one JSON line. Each call's lateness is measured
against the fire time APScheduler gives the job (``current_job``).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime

import steady_window
from apscheduler import Scheduler, current_job
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.ext.asyncio import create_async_engine


def job() -> None:
    called = time.time()
    steady_window.record(called, called - current_job.get().scheduled_fire_time.timestamp())


def main() -> int:
    args = steady_window.arguments()
    engine = create_async_engine(os.environ["BENCH_DB_URL"])
    started = time.time()
    origin = started + args.lead
    spacing = args.every / args.tasks
    with Scheduler(SQLAlchemyDataStore(engine), max_concurrent_jobs=args.workers) as scheduler:
        scheduler.configure_task("steady", func=job, max_running_jobs=None, misfire_grace_time=None)
        for i in range(args.tasks):
            first = datetime.fromtimestamp(origin + i * spacing, UTC)
            scheduler.add_schedule(
                "steady",
                IntervalTrigger(seconds=args.every, start_time=first),
                id=f"steady-{i:06d}",
                misfire_grace_time=None,
            )
        setup_s, overran = time.time() - started, time.time() > origin
        scheduler.start_in_background()
        window = steady_window.measure(args, origin)
        scheduler.stop()
    steady_window.report("apscheduler-4.0.0a6", setup_s=setup_s, overran=overran, window=window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
