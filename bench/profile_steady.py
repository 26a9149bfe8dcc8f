"""Where the steady benchmark's scheduler CPU goes: the engine in this process (no runner
subprocess), N interval tasks on a throwaway PostgreSQL, CPU per thread role over a window
after warm-up, and optionally a cProfile of the loop thread (thread CPU clock).

    python -m bench.profile_steady                      # 10,000 tasks every 10 s, 30 s window
    python -m bench.profile_steady --profile tottime    # plus the loop thread's top functions
    python -m bench.profile_steady --set look_ahead=0.25 --set caught_up_interval=0.125
                                                        # other EngineSettings than the defaults

Prints JSON (the figures) and, with ``--profile``, the profile table on stderr. This is the
tool behind the "Steady CPU" steps in bench/RESULTS.md; the benchmark itself is
``python -m bench run --only steady`` (a separate process, as an operator runs it).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import yaml

from bench.common import (
    Databases,
    catch_up_after_start,
    children_cpu_seconds,
    interval_tasks,
    read_runs,
    summarize_ms,
    sync,
    thread_cpu_seconds,
)
from bench.steady import TAIL_MARGIN
from scheduler_core.db import create_db_engine
from scheduler_core.runtime import EngineSettings, Scheduler
from scheduler_core.runtime.runners import name_os_thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_steady")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between ticks")
    parser.add_argument(
        "--warmup", type=float, default=12.0, help="seconds from catch-up to the window"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--profile", metavar="SORT", help="cProfile the loop thread, sorted so")
    parser.add_argument(
        "--dump", metavar="FILE", help="with --profile: also save the profile (pstats format)"
    )
    parser.add_argument(
        "--set",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="override a number EngineSettings field, e.g. --set caught_up_interval=0.2",
    )
    parser.add_argument(
        "--callable", default="bench.jobs:noop", help="what every task calls (module:function)"
    )
    parser.add_argument(
        "--task-field",
        metavar="KEY=YAML",
        action="append",
        default=[],
        help="a task-file field of every task, e.g. --task-field keep_output=always",
    )
    args = parser.parse_args(argv)
    overrides = _overrides(parser, args.set)
    fields = {k: yaml.safe_load(v) for k, _, v in (f.partition("=") for f in args.task_field)}

    dbs = Databases().start()
    try:
        url = dbs.new("postgresql")
        sync(
            url,
            interval_tasks(
                args.tasks, args.every, prefix="steady", callable_ref=args.callable, fields=fields
            ),
        )
        engine = create_db_engine(url, pool_size=5, pre_ping=False)  # as `schedctl run`
        scheduler = Scheduler(
            engine=engine,
            settings=EngineSettings(instance_id="profile", health_listen=None, **overrides),
        )
        profiler = cProfile.Profile(time.thread_time)
        result = _measure(scheduler, dbs, url, args, profiler)
        engine.dispose()
        # Start delays of the ticks in the window (the last ones may still be waiting).
        until = result.pop("window_end") - TAIL_MARGIN
        table = read_runs(
            url, prefix="steady", scheduled_from=result.pop("window_start"), scheduled_until=until
        )
        result["start_delay_row"] = summarize_ms(table.start_delays)
    finally:
        dbs.stop()
    print(json.dumps(result, indent=2))
    if args.profile:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(args.profile).print_stats(40)
        if args.dump:
            profiler.dump_stats(args.dump)
        print(out.getvalue(), file=sys.stderr)
    return 0


def _overrides(parser: argparse.ArgumentParser | None, items: list[str]) -> dict[str, float]:
    """``NAME=VALUE`` pairs as EngineSettings overrides; a bad one is a usage error."""
    kinds = {"float": float, "int": int}
    fields = {
        f.name: kinds[str(f.type)] for f in dataclasses.fields(EngineSettings) if f.type in kinds
    }
    overrides: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            if name not in fields:
                raise ValueError(f"not a number setting (one of {', '.join(sorted(fields))})")
            overrides[name] = fields[name](value)
        except ValueError as exc:
            if parser is None:
                raise
            parser.error(f"--set {item!r}: {exc}")
    return overrides


def _measure(
    scheduler: Scheduler,
    dbs: Databases,
    url: str,
    args: argparse.Namespace,
    profiler: cProfile.Profile,
) -> dict[str, Any]:
    """Run the scheduler loop in a thread named like the runner's main thread, let it
    work off the start-up backlog, warm up, then measure the window."""
    profile_from = float("inf")  # the window's start, once the backlog is worked off
    step = scheduler.step
    profiling = False

    def profiled_step() -> int:
        nonlocal profiling
        if args.profile and not profiling and time.monotonic() >= profile_from:
            profiler.enable()  # in the loop thread: cProfile follows the enabling thread
            profiling = True
        return step()

    scheduler.step = profiled_step  # type: ignore[method-assign]

    def run_loop() -> None:
        name_os_thread()  # so the per-thread split shows it as "loop"
        scheduler.run()

    loop = threading.Thread(target=run_loop, name="loop")
    scheduler.start()
    loop.start()
    pid = os.getpid()
    postmaster = dbs.postmaster_pid
    assert postmaster is not None  # started above
    catch_up = catch_up_after_start(url)
    profile_from = time.monotonic() + args.warmup
    time.sleep(args.warmup)
    window_start = datetime.now(UTC)
    wall0, cpu0 = time.monotonic(), time.process_time()
    threads0 = thread_cpu_seconds(pid, main_role="main (waits)")
    pg0 = children_cpu_seconds(postmaster)
    time.sleep(args.seconds)
    window_end = datetime.now(UTC)
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    threads1 = thread_cpu_seconds(pid, main_role="main (waits)")
    pg1 = children_cpu_seconds(postmaster)
    scheduler.request_stop()
    loop.join(60)
    profiler.disable()
    by_thread = {
        role: round((seconds - threads0.get(role, 0.0)) / wall * 100, 1)
        for role, seconds in threads1.items()
    }
    return {
        "settings": dict(_overrides(None, args.set)),
        "tasks": args.tasks,
        "runs_per_second": round(args.tasks / args.every, 1),
        "window_s": round(wall, 1),
        **catch_up,
        "scheduler_cpu_percent_of_one_core": round(cpu / wall * 100, 1),
        "scheduler_cpu_percent_by_thread": dict(sorted(by_thread.items(), key=lambda kv: -kv[1])),
        "postgres_cpu_percent_of_one_core": round((pg1 - pg0) / wall * 100, 1),
        "window_start": window_start,
        "window_end": window_end,
    }


if __name__ == "__main__":
    sys.exit(main())
