"""APScheduler 4.0.0a6 burst: N one-shot schedules due at one instant, SQLAlchemyDataStore.

Runs inside the peer's own environment (bench/.venv-aps4). The database URL comes from
``BENCH_DB_URL`` (an async driver: asyncpg or aiosqlite); prints one JSON line.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime

import burst_calls
from apscheduler import Scheduler
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from apscheduler.triggers.date import DateTrigger
from sqlalchemy.ext.asyncio import create_async_engine


def main() -> int:
    args = burst_calls.arguments()
    engine = create_async_engine(os.environ["BENCH_DB_URL"])
    store = SQLAlchemyDataStore(engine)
    started = time.time()
    due = started + args.lead
    run_date = datetime.fromtimestamp(due, UTC)
    with Scheduler(store, max_concurrent_jobs=args.workers) as scheduler:
        # One task for all N schedules: let its jobs run side by side, as N tasks would.
        scheduler.configure_task(
            "burst", func=burst_calls.job, max_running_jobs=None, misfire_grace_time=None
        )
        for i in range(args.n):
            scheduler.add_schedule(
                "burst",
                DateTrigger(run_date),
                id=f"burst-{i:06d}",
                args=[due],
                # Never drop a late run: the benchmark measures lateness, it does not hide it.
                misfire_grace_time=None,
            )
        setup_s = time.time() - started
        overran = burst_calls.setup_overran(due)
        scheduler.start_in_background()
        burst_calls.wait_for_calls(args)
        scheduler.stop()
    burst_calls.print_result("apscheduler-4.0.0a6", setup_s, overran, due)
    return 0


if __name__ == "__main__":
    sys.exit(main())
