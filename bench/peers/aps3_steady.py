"""APScheduler 3.11 steady: N interval jobs, grids offset evenly, SQLAlchemyJobStore + thread
pool; after a warm-up, the lateness of every call, process CPU and peak RSS over a window.

Runs inside the peer's own environment (bench/.venv-aps3). The database URL comes from
``BENCH_DB_URL``; prints one JSON line. APScheduler 3 does not tell a job its scheduled
time: a call's lateness is measured against the latest tick of its job's grid, so a call
more than one interval late would read short (the count of calls in the window shows it).
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import steady_window
from aps3_scheduler import background_scheduler

sys.modules.setdefault("aps3_steady", sys.modules[__name__])


def job(first: float, every: float) -> None:
    called = time.time()
    steady_window.record(called, (called - first) % every)


def main() -> int:
    args = steady_window.arguments()
    scheduler = background_scheduler(args.workers)
    started = time.time()
    origin = started + args.lead
    spacing = args.every / args.tasks
    scheduler.start(paused=True)
    for i in range(args.tasks):
        first = origin + i * spacing
        scheduler.add_job(
            "aps3_steady:job",
            "interval",
            seconds=args.every,
            start_date=datetime.fromtimestamp(first, UTC),
            args=[first, args.every],
            id=f"steady-{i:06d}",
        )
    setup_s, overran = time.time() - started, time.time() > origin
    scheduler.resume()
    window = steady_window.measure(args, origin)
    scheduler.shutdown(wait=False)
    steady_window.report("apscheduler-3.11", setup_s=setup_s, overran=overran, window=window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
