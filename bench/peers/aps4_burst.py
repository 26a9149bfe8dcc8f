"""APScheduler 4.0.0a6 burst: N one-shot schedules due at one instant, SQLAlchemyDataStore.

Runs inside the peer's own environment (bench/.venv-aps4). The database URL comes from
``BENCH_DB_URL`` (an async driver: asyncpg or aiosqlite); prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime

from apscheduler import Scheduler
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from apscheduler.triggers.date import DateTrigger
from sqlalchemy.ext.asyncio import create_async_engine

sys.modules.setdefault("aps4_burst", sys.modules[__name__])

DELAYS: list[float] = []
ENDS: list[float] = []
_lock = threading.Lock()


def job(due: float) -> None:
    called = time.time()
    with _lock:
        DELAYS.append(called - due)
        ENDS.append(time.time())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--lead", type=float, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    engine = create_async_engine(os.environ["BENCH_DB_URL"])
    store = SQLAlchemyDataStore(engine)
    started = time.time()
    due = started + args.lead
    run_date = datetime.fromtimestamp(due, UTC)
    with Scheduler(store, max_concurrent_jobs=args.workers) as scheduler:
        # One task for all N schedules: let its jobs run side by side, as N tasks would.
        scheduler.configure_task("burst", func=job, max_running_jobs=None, misfire_grace_time=None)
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
        overran = time.time() > due - 0.2
        scheduler.start_in_background()
        deadline = time.monotonic() + args.lead + args.timeout
        while len(ENDS) < args.n and time.monotonic() < deadline:
            time.sleep(0.005)
        scheduler.stop()
    print(
        json.dumps(
            {
                "peer": "apscheduler-4.0.0a6",
                "setup_s": setup_s,
                "setup_overran_due_time": overran,
                "done": len(ENDS),
                "all_finished_s": (max(ENDS) - due) if ENDS else None,
                "delays": DELAYS,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
