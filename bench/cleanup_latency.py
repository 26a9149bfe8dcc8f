"""Claim latency while `schedctl cleanup` deletes 100,000 history rows (issue 8).

Prints JSON: p50/p99/max claim latency (claim + dispatch round trips) measured while the
cleanup runs in another thread, beside the same figures with no cleanup running.

    python -m bench.cleanup_latency [--rows 100000] [--backend sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from scheduler_core.config import parse_task_document
from scheduler_core.db import create_db_engine, upgrade_schema
from scheduler_core.models import task_runs
from scheduler_core.retention import RetentionPolicy, run_cleanup
from scheduler_core.store import Store
from scheduler_core.testing import FakeClock

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _seed(engine: sa.Engine, rows: int) -> Store:
    store = Store(engine, instance_id="bench")
    doc = {
        "tasks": [
            {
                "name": f"t{i}",
                "callable": "os:getpid",
                "every": "1s",
                "overlap": "allow",
                "max_concurrency": 10_000,
            }
            for i in range(20)
        ]
    }
    store.sync_tasks(parse_task_document(doc, source="bench"), now=T0)
    old = T0 - timedelta(days=60)
    chunk: list[dict[str, object]] = []
    with engine.begin() as conn:
        for i in range(rows):
            chunk.append(
                {
                    "task_name": f"t{i % 20}",
                    "scheduled_for": old + timedelta(seconds=i),
                    "attempt": 1,
                    "trigger": "schedule",
                    "status": "success",
                    "started_at": old,
                    "finished_at": old,
                    "duration_seconds": 0.1,
                    "cancel_requested": False,
                    "instance_id": "old",
                }
            )
            if len(chunk) == 10_000:
                conn.execute(task_runs.insert(), chunk)
                chunk = []
        if chunk:
            conn.execute(task_runs.insert(), chunk)
    return store


def _claim_loop(
    store: Store, clock: FakeClock, stop: threading.Event, limit_s: float
) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + limit_s
    while not stop.is_set() and time.monotonic() < deadline:
        clock.advance(1)
        start = time.perf_counter()
        claimed = store.claim_due_schedules(now=clock.now(), limit=50, lease=timedelta(seconds=30))
        store.dispatch_claimed(claimed, now=clock.now())
        latencies.append((time.perf_counter() - start) * 1000)
        time.sleep(0.01)  # a scheduler under a burst polls back-to-back, not in a spin loop
    return latencies


def measure(url: str, rows: int) -> dict[str, object]:
    engine = create_db_engine(url)
    upgrade_schema(engine)
    store = _seed(engine, rows)
    clock = FakeClock(T0)
    idle = _claim_loop(store, clock, threading.Event(), limit_s=3)
    stop = threading.Event()
    result: dict[str, object] = {}

    def cleanup() -> None:
        started = time.perf_counter()
        r = run_cleanup(engine, policy=RetentionPolicy(days=30), now=T0)
        result.update(
            deleted=r.runs_deleted,
            batches=r.batches,
            seconds=round(time.perf_counter() - started, 2),
        )
        stop.set()

    worker = threading.Thread(target=cleanup)
    worker.start()
    during = _claim_loop(store, clock, stop, limit_s=600)
    worker.join()
    engine.dispose()

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "claims": len(values),
            "p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(_percentile(values, 0.99), 2),
            "max_ms": round(max(values), 2),
        }

    return {
        "rows": rows,
        "cleanup": result,
        "claim_latency_idle": summary(idle),
        "claim_latency_during_cleanup": summary(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    out: dict[str, object] = {
        "benchmark": "cleanup_latency",
        "target": "claim latency during cleanup < 100 ms",
    }
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            out["sqlite"] = measure(f"sqlite:///{Path(tmp) / 'bench.db'}", args.rows)
    if args.backend in ("postgresql", "both"):
        from tests.support.pgserver import PostgresServer

        server = PostgresServer().start()
        try:
            out["postgresql"] = measure(server.url(server.create_database()), args.rows)
        finally:
            server.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
