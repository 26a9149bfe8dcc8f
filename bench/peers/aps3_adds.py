"""APScheduler 3.11 adds: N interval jobs added at runtime, one ``add_job`` call each, through
its public API on SQLAlchemyJobStore.

Runs inside the peer's own environment (bench/.venv-aps3). The database URL comes from
``BENCH_DB_URL``; prints one JSON line: the seconds all N calls took, each call's latency,
and the job rows stored afterwards.

The scheduler (``aps3_scheduler.background_scheduler``, as every APScheduler 3 script) is
started paused before the clock starts, so each ``add_job`` goes straight to the job store
(one INSERT transaction, the job pickled) and nothing runs beside the calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import sqlalchemy as sa
from aps3_scheduler import background_scheduler


def job() -> None:
    """The scheduled callable (never called here: the scheduler stays paused)."""


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--every", type=float, default=60.0)
    return parser.parse_args()


def main() -> int:
    args = arguments()
    scheduler = background_scheduler(4)
    store = scheduler._jobstores["default"]
    scheduler.start(paused=True)  # creates the table; paused, it processes nothing
    latencies: list[float] = []
    started = time.perf_counter()
    for i in range(args.n):
        before = time.perf_counter()
        # Referenced by name, as a persistent job store keeps it.
        scheduler.add_job(
            "aps3_adds:job", "interval", seconds=args.every + i % 7, id=f"adds-{i:06d}"
        )
        latencies.append(time.perf_counter() - before)
    total = time.perf_counter() - started
    with store.engine.connect() as conn:
        rows = int(
            conn.execute(
                sa.text("SELECT count(*) FROM apscheduler_jobs WHERE id LIKE 'adds-%'")
            ).scalar_one()
        )
    scheduler.shutdown(wait=False)
    result: dict[str, Any] = {
        "peer": "apscheduler-3.11",
        "api": "BackgroundScheduler.add_job",
        "n": args.n,
        "seconds": total,
        "latencies_s": latencies,
        "rows": rows,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
