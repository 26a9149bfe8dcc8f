"""APScheduler 3.11 burst: N one-shot jobs due at one instant, SQLAlchemyJobStore + thread pool.

Runs inside the peer's own environment (bench/.venv-aps3). The database URL comes from
``BENCH_DB_URL``; prints one JSON line with the lateness of every call.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import burst_calls
from aps3_scheduler import background_scheduler


def main() -> int:
    args = burst_calls.arguments()
    scheduler = background_scheduler(args.workers)
    started = time.time()
    due = started + args.lead
    run_date = datetime.fromtimestamp(due, UTC)
    scheduler.start(paused=True)
    for i in range(args.n):
        # Referenced by name, as a job store keeps it: the module this script imported.
        scheduler.add_job(
            "burst_calls:job", "date", run_date=run_date, args=[due], id=f"burst-{i:06d}"
        )
    setup_s = time.time() - started
    overran = burst_calls.setup_overran(due)
    scheduler.resume()
    burst_calls.wait_for_calls(args)
    left_in_store = len(scheduler.get_jobs())
    scheduler.shutdown(wait=True)
    burst_calls.print_result(
        "apscheduler-3.11", setup_s, overran, due, jobs_left_in_store=left_in_store
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
