"""Where the steady benchmark's scheduler CPU goes: the engine in this process (no runner
subprocess), N interval tasks on a throwaway PostgreSQL, CPU per thread role over a window
after warm-up, and optionally a cProfile of the loop thread (thread CPU clock).

    python -m bench.profile_steady                      # 10,000 tasks every 10 s, 30 s window
    python -m bench.profile_steady --profile tottime    # plus the loop's and workers' top functions
    python -m bench.profile_steady --set look_ahead=0.25 --set caught_up_interval=0.125
                                                        # other EngineSettings than the defaults

Prints JSON (the figures) and, with ``--profile``, the profile tables on stderr: the loop
thread's, and the worker threads' (``schedctl-run*``, added up: each worker's profiler runs
from its thread's start, and the table is what it counted during the window). This is the
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
from scheduler_core.gc_pause import freeze_long_lived
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
    parser.add_argument(
        "--profile", metavar="SORT", help="cProfile the loop and worker threads, sorted so"
    )
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
        workers = WorkerProfiles()
        if args.profile:
            threading.setprofile(workers.hook)  # threads started from now on: the workers
        try:
            result = _measure(scheduler, dbs, url, args, profiler, workers)
        finally:
            threading.setprofile(None)
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
        print("loop thread:", out.getvalue(), file=sys.stderr)
        print(workers.table(args.profile), file=sys.stderr)
    return 0


#: A function in ``getstats`` figures: its code object, or a built-in's description.
_Entry = tuple[int, float, float]  # calls, own time, total time (s of thread CPU)


class WorkerProfiles:
    """cProfile (thread CPU clock) of every worker thread, read over the window: each
    thread's profiler starts with the thread (``threading.setprofile(hook)``: a worker's
    profiler can only be enabled in the worker), and the window's figures are the
    difference of two snapshots of their counts (``getstats``, read under the GIL)."""

    def __init__(self) -> None:
        self._profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()
        self._start: dict[object, _Entry] = {}
        self._end: dict[object, _Entry] = {}

    def hook(self, frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)  # once per thread: at its first call
        if threading.current_thread().name.startswith("schedctl-run"):
            profile = cProfile.Profile(time.thread_time)
            with self._lock:
                self._profiles.append(profile)
            profile.enable()

    def _counts(self) -> dict[object, _Entry]:
        totals: dict[object, _Entry] = {}
        with self._lock:
            profiles = list(self._profiles)
        for profile in profiles:
            for entry in profile.getstats():  # type: ignore[attr-defined]
                calls, own, total = totals.get(entry.code, (0, 0.0, 0.0))
                totals[entry.code] = (
                    calls + entry.callcount,
                    own + entry.inlinetime,
                    total + entry.totaltime,
                )
        return totals

    def start(self) -> None:
        self._start = self._counts()

    def stop(self) -> None:
        self._end = self._counts()

    def table(self, sort: str, rows: int = 40) -> str:
        """The window's top functions by own time (``tottime``) or by total time."""
        diff = []
        for code, (calls, own, total) in self._end.items():
            calls0, own0, total0 = self._start.get(code, (0, 0.0, 0.0))
            diff.append((calls - calls0, own - own0, total - total0, _where(code)))
        column = 2 if sort.startswith("cum") else 1
        diff.sort(key=lambda row: -row[column])
        own_sum = sum(row[1] for row in diff)
        lines = [
            f"worker threads ({len(self._profiles)}), {own_sum:.3f} s of thread CPU "
            f"(profiled), sorted by {'cumtime' if column == 2 else 'tottime'}:",
            f"{'ncalls':>10} {'tottime':>9} {'cumtime':>9}  function",
        ]
        lines += [f"{c:>10} {o:>9.3f} {t:>9.3f}  {w}" for c, o, t, w in diff[:rows]]
        return "\n".join(lines)


def _where(code: object) -> str:
    if isinstance(code, str):  # a built-in
        return code
    return f"{code.co_filename}:{code.co_firstlineno}({code.co_name})"  # type: ignore[attr-defined]


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
    workers: WorkerProfiles,
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
    freeze_long_lived()  # as `schedctl scheduler`
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
    if args.profile:
        workers.start()
    time.sleep(args.seconds)
    if args.profile:
        workers.stop()
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
