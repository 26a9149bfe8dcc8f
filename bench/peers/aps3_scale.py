"""APScheduler 3.11 scale: N interval jobs (N / every due each second) in SQLAlchemyJobStore;
the store's own empty poll timed before the first tick, then the lateness of every call in
a window while a BackgroundScheduler runs them.

Runs inside the peer's own environment (bench/.venv-aps3). The database URL comes from
``BENCH_DB_URL``; prints one JSON line. The jobs are stored in bulk: the very rows
``SQLAlchemyJobStore.add_job`` writes (id, next_run_time, pickled ``Job.__getstate__()``),
one executemany instead of 100,000 transactions. The empty poll is what
``BaseScheduler._process_jobs`` asks the store each wake-up: ``get_due_jobs(now)`` and
``get_next_run_time()``.
"""

from __future__ import annotations

import pickle
import sys
import time
from datetime import UTC, datetime
from typing import Any

import empty_poll
import sqlalchemy as sa
import steady_window
from aps3_scheduler import background_scheduler
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import datetime_to_utc_timestamp

CHUNK = 5_000


def job_rows(
    scheduler: BaseScheduler, store: SQLAlchemyJobStore, firsts: list[float], every: float
) -> list[dict[str, Any]]:
    """The rows ``add_job`` would insert for jobs like ``aps3_steady``'s (same callable,
    lateness measured against the job's grid), with the scheduler's job defaults."""
    now = datetime.now(UTC)
    rows = []
    for i, first in enumerate(firsts):
        trigger = IntervalTrigger(
            seconds=every, start_date=datetime.fromtimestamp(first, UTC), timezone=UTC
        )
        job = Job(
            scheduler,
            id=f"scale-{i:06d}",
            func="aps3_steady:job",
            trigger=trigger,
            executor="default",
            args=[first, every],
            kwargs={},
            name=None,
            misfire_grace_time=None,
            coalesce=False,
            max_instances=1,
            next_run_time=trigger.get_next_fire_time(None, now),
        )
        rows.append(
            {
                "id": job.id,
                "next_run_time": datetime_to_utc_timestamp(job.next_run_time),
                "job_state": pickle.dumps(job.__getstate__(), store.pickle_protocol),
            }
        )
    return rows


def probe(store: SQLAlchemyJobStore, probes: int) -> dict[str, Any]:
    """Time ``probes`` empty polls and EXPLAIN the two statements they run."""
    captured: dict[str, tuple[str, Any]] = {}

    def capture(
        _conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: Any
    ) -> None:
        captured.setdefault("next_due" if "LIMIT" in statement else "due", (statement, params))

    polls = empty_poll.EmptyPolls()
    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        for _ in range(probes):
            polls.start()
            polls.polled(len(store.get_due_jobs(datetime.now(UTC))))
            store.get_next_run_time()
            polls.next_due()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    plans: dict[str, list[str]] = {}
    with store.engine.connect() as conn:
        for name, (statement, params) in captured.items():
            rows = conn.exec_driver_sql("EXPLAIN " + statement, params).all()
            plans[name] = [str(r[0]) for r in rows]
    return polls.as_dict(plans=plans)


def main() -> int:
    args = steady_window.arguments()
    scheduler = background_scheduler(args.workers)
    store = scheduler._jobstores["default"]
    started = time.time()
    origin = started + args.lead
    scheduler.start(paused=True)  # creates the table; paused, it processes nothing yet
    rows = job_rows(
        scheduler, store, empty_poll.first_ticks(origin, args.tasks, args.every), args.every
    )
    with store.engine.begin() as conn:
        for start in range(0, len(rows), CHUNK):
            conn.execute(store.jobs_t.insert(), rows[start : start + CHUNK])
    with store.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    setup_s = time.time() - started
    probed = probe(store, args.probes)
    overran = time.time() > origin
    scheduler.resume()
    window = steady_window.measure(args, origin)
    scheduler.shutdown(wait=False)
    steady_window.report(
        "apscheduler-3.11", setup_s=setup_s, overran=overran, window=window, extra=probed
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
