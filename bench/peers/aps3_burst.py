"""APScheduler 3.11 burst: N one-shot jobs due at one instant, SQLAlchemyJobStore + thread pool.

Runs inside the peer's own environment (bench/.venv-aps3). The database URL comes from
``BENCH_DB_URL``; prints one JSON line with the lateness of every call.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import UTC, datetime

from aps3_scheduler import background_scheduler

# The job is referenced as "aps3_burst:job"; make that name resolve to this very module so
# the calls land in these lists (not in a second copy of the module).
sys.modules.setdefault("aps3_burst", sys.modules[__name__])

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

    scheduler = background_scheduler(args.workers)
    started = time.time()
    due = started + args.lead
    run_date = datetime.fromtimestamp(due, UTC)
    scheduler.start(paused=True)
    for i in range(args.n):
        scheduler.add_job(
            "aps3_burst:job", "date", run_date=run_date, args=[due], id=f"burst-{i:06d}"
        )
    setup_s = time.time() - started
    overran = time.time() > due - 0.2
    scheduler.resume()
    deadline = time.monotonic() + args.lead + args.timeout
    while len(ENDS) < args.n and time.monotonic() < deadline:
        time.sleep(0.005)
    left_in_store = len(scheduler.get_jobs())
    scheduler.shutdown(wait=True)
    print(
        json.dumps(
            {
                "peer": "apscheduler-3.11",
                "setup_s": setup_s,
                "setup_overran_due_time": overran,
                "done": len(ENDS),
                "all_finished_s": (max(ENDS) - due) if ENDS else None,
                "delays": DELAYS,
                "jobs_left_in_store": left_in_store,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
