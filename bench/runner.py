"""One schedctl scheduler instance as its own process, for benchmarks that measure a process.

Reads the database URL from ``BENCH_DB_URL`` (never argv: it may hold a password), prints
``READY`` once registered, schedules until SIGTERM, drains, then prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench import jobs
from bench.common import (
    NullTelemetry,
    cpu_seconds,
    instrument_store,
    rss_mib,
    summarize_ms,
    summarize_timings,
)
from scheduler_core.db import create_db_engine
from scheduler_core.gc_pause import freeze_long_lived
from scheduler_core.runtime import EngineSettings, Scheduler, install_signal_handlers

RAW_CALLS_LIMIT = 5000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runner")
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--no-telemetry", action="store_true")
    parser.add_argument("--max-running", type=int, default=EngineSettings.max_running)
    parser.add_argument("--batch-size", type=int, default=EngineSettings.batch_size)
    args = parser.parse_args(argv)

    # As `schedctl run` makes it: no pre-ping (its loop retries after a dropped connection).
    engine = create_db_engine(os.environ["BENCH_DB_URL"], pool_size=5, pre_ping=False)
    settings = EngineSettings(
        instance_id=args.instance_id,
        health_listen=None,
        max_running=args.max_running,
        batch_size=args.batch_size,
        drain_grace=10.0,
    )
    telemetry = NullTelemetry(engine, instance_id=args.instance_id) if args.no_telemetry else None
    scheduler = Scheduler(engine=engine, settings=settings, telemetry=telemetry)
    timings = instrument_store(scheduler.store)
    install_signal_handlers(scheduler)
    scheduler.start()
    freeze_long_lived()  # as `schedctl run`
    print("READY", time.time(), flush=True)
    scheduler.run()
    pid = os.getpid()
    calls = list(jobs.CALLS)
    delays = [c[0] for c in calls]
    out = {
        "instance_id": args.instance_id,
        "cpu_s": cpu_seconds(pid),
        **rss_mib(pid),
        "calls": summarize_ms(delays),
        "last_call_end": max((c[1] for c in calls), default=None),
        "raw_call_delays": delays if len(delays) <= RAW_CALLS_LIMIT else None,
        "store": summarize_timings(timings),
    }
    engine.dispose()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
