"""Where the time goes when many one-time tasks fall due (bench/once.py, part 1): the engine
in this process (no runner subprocess), N one-time tasks due evenly over a window on a
throwaway PostgreSQL; from the first due time until the last run is recorded, the SQL it
runs timed statement by statement (the costliest explained), its CPU per thread role, and
optionally a cProfile of the loop thread.

    python -m bench.profile_once                          # 100,000 tasks over 60 s
    python -m bench.profile_once --tasks 20000 --window 12 --profile tottime
    python -m bench.profile_once --profile cumulative --clock cpu   # the loop's CPU only
    python -m bench.profile_once --sql "CREATE INDEX ix_what_if ON scheduler_schedules
        (definition_hash)"                               # what a schema change would do

The loop mostly waits on the database, so the profile's clock is the wall clock unless
``--clock cpu``. Prints JSON (the figures) and, with ``--profile``, the profile table on
stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import (
    Databases,
    FinishedCounter,
    children_cpu_seconds,
    read_runs,
    summarize_ms,
    thread_cpu_seconds,
    wait_until,
)
from bench.once import (
    DRAIN_TIMEOUT,
    LEAD_BASE_S,
    LEAD_PER_TASK_S,
    StatementTimer,
    create_once_tasks,
    sleep_until,
)
from bench.scale import analyze
from bench.steady import cpu_by_thread
from scheduler_core.db import create_db_engine
from scheduler_core.gc_pause import freeze_long_lived
from scheduler_core.runtime import EngineSettings, Scheduler
from scheduler_core.runtime.runners import name_os_thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_once")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds they fall due over")
    parser.add_argument("--workers", type=int, default=64, help="max_running")
    parser.add_argument(
        "--lead", type=float, help="seconds from now to the first due (default: as bench.once)"
    )
    parser.add_argument("--statements", type=int, default=8, help="costliest statements shown")
    parser.add_argument("--profile", metavar="SORT", help="cProfile the loop thread, sorted so")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument(
        "--sql",
        action="append",
        default=[],
        help="run this statement on the throwaway database before the scheduler starts (a "
        "what-if, e.g. an index a migration would add); repeatable",
    )
    args = parser.parse_args(argv)

    dbs = Databases().start()
    try:
        url = dbs.new("postgresql")
        result, profiler = _measure(dbs, url, args)
    finally:
        dbs.stop()
    print(json.dumps(result, indent=2, default=str))
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(args.profile).print_stats(40)
        print(out.getvalue(), file=sys.stderr)
    return 0


def _measure(
    dbs: Databases, url: str, args: argparse.Namespace
) -> tuple[dict[str, Any], cProfile.Profile | None]:
    n, window = args.tasks, args.window
    step = window / n
    lead = args.lead if args.lead is not None else LEAD_BASE_S + n * LEAD_PER_TASK_S
    first = datetime.now(UTC) + timedelta(seconds=lead)
    last = first + timedelta(seconds=(n - 1) * step)
    create_s = create_once_tasks(
        url, n, lambda i: first + i * timedelta(seconds=step), prefix="once"
    )
    engine = create_db_engine(url, pool_size=5, pre_ping=False)  # as `schedctl run`
    with engine.begin() as conn:
        for statement in args.sql:
            conn.exec_driver_sql(statement)
    analyze(url)
    scheduler = Scheduler(
        engine=engine,
        settings=EngineSettings(
            instance_id="profile-once", health_listen=None, max_running=args.workers
        ),
    )
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    profiler = cProfile.Profile(clock) if args.profile else None
    profile_from = first.timestamp()
    step_fn = scheduler.step
    profiling = False

    def profiled_step() -> int:
        nonlocal profiling
        if profiler is not None and not profiling and time.time() >= profile_from:
            profiler.enable()  # in the loop thread: cProfile follows the enabling thread
            profiling = True
        return step_fn()

    scheduler.step = profiled_step  # type: ignore[method-assign]

    def run_loop() -> None:
        name_os_thread()  # so the per-thread split shows it as "loop"
        scheduler.run()

    loop = threading.Thread(target=run_loop, name="loop")
    counter = FinishedCounter(url, "once")
    timer: StatementTimer | None = None
    scheduler.start()
    freeze_long_lived()  # as `schedctl run`
    overran = datetime.now(UTC) > first
    loop.start()
    try:
        sleep_until(first)
        timer = StatementTimer(engine)
        pid, postmaster = os.getpid(), dbs.postmaster_pid
        wall0, threads0 = time.monotonic(), thread_cpu_seconds(pid, main_role="main (waits)")
        pg0 = children_cpu_seconds(postmaster) if postmaster else 0.0
        sleep_until(last)
        complete = wait_until(lambda: counter() >= n, timeout=DRAIN_TIMEOUT, interval=0.2)
        wall = time.monotonic() - wall0
        threads1 = thread_cpu_seconds(pid, main_role="main (waits)")
        pg_cpu = (children_cpu_seconds(postmaster) - pg0) if postmaster else None
        timer.close()
    finally:
        scheduler.request_stop()
        loop.join(60)
        if profiler is not None:
            profiler.disable()
        counter.close()
    statements = timer.top(args.statements, explain=True)
    engine.dispose()
    table = read_runs(url, prefix="once", expected_tasks=n)
    return {
        "tasks": n,
        "window_s": window,
        "what_if_sql": args.sql,
        "create_s": round(create_s, 2),
        "setup_overran_first_due": overran,
        "complete": complete,
        "runs": table.as_dict(),
        "start_delay_row": summarize_ms(table.start_delays),
        "measured_s": round(wall, 1),
        "scheduler_cpu_percent_by_thread": cpu_by_thread(threads0, threads1, wall),
        "postgres_cpu_percent_of_one_core": None
        if pg_cpu is None
        else round(pg_cpu / wall * 100, 1),
        # Wall time of each statement, summed over every thread of the scheduler.
        "top_statements": statements,
        "statements_total_ms": round(sum(sum(c) for c in timer.calls.values()) * 1000, 1),
    }, profiler


if __name__ == "__main__":
    sys.exit(main())
