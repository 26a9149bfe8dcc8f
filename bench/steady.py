"""Steady: many interval tasks for a while; start delay, and the scheduler's CPU and memory.

The tasks' grids are offset evenly (``anchor`` per task), so 10,000 tasks every 10 s are a
steady 1,000 runs per second rather than one 10,000-run burst every 10 s. The scheduler runs
as its own process so its CPU and RSS are its own; PostgreSQL's CPU is reported beside it.

The schedules are stored before the scheduler starts, so ticks fall due while it starts up:
the time it takes to work that backlog off (a restart's cost) is reported on its own, and
the measured window opens ``steady_warmup`` seconds after it, in the steady state. The
peers store theirs with a lead time instead and have no such backlog.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import (
    REPO,
    Databases,
    catch_up_after_start,
    children_cpu_seconds,
    interval_tasks,
    peer_url,
    read_runs,
    run_json,
    summarize_ms,
    sync,
    thread_cpu_seconds,
)
from bench.peers.envs import PeerUnavailableError, peer_python
from bench.processes import RunnerProcess
from bench.sizes import Sizes

#: Ticks this close to the end of the window may still be waiting when the drain begins.
TAIL_MARGIN = timedelta(seconds=2)

PEERS = {
    # name: (environment, script, driver for PostgreSQL)
    "apscheduler-3.11": ("aps3", "aps3_steady.py", "psycopg"),
    "apscheduler-4.0.0a6": ("aps4", "aps4_steady.py", "asyncpg"),
}


def run(dbs: Databases, sizes: Sizes, *, peers: bool = True) -> dict[str, Any]:
    """schedctl, then each peer on a fresh database of the same server, same N and window."""
    result = _schedctl(dbs, sizes)
    if peers:
        result["peers"] = {name: peer_steady(dbs, name, sizes) for name in PEERS}
    return result


def peer_steady(dbs: Databases, peer: str, sizes: Sizes) -> dict[str, Any]:
    """Run a peer's steady script in its own environment: the same tasks, grids, warm-up
    and window as schedctl's; CPU and RSS are the peer process's own."""
    env_name, script, driver = PEERS[peer]
    try:
        python = peer_python(env_name)
    except PeerUnavailableError as exc:
        return {"skipped": str(exc)}
    n, every = sizes.steady_tasks, sizes.steady_every
    lead = 10.0 + n * 0.008  # the peers add their jobs one at a time (a transaction each)
    url = dbs.new("postgresql")
    try:
        raw = run_json(
            [
                str(python),
                str(REPO / "bench" / "peers" / script),
                *("--tasks", str(n), "--every", str(every), "--lead", str(lead)),
                *("--warmup", str(sizes.steady_warmup), "--seconds", str(sizes.steady_seconds)),
                *("--workers", str(sizes.workers)),
            ],
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "BENCH_DB_URL": peer_url(url, driver=driver),
            },
            timeout=lead + sizes.steady_warmup + sizes.steady_seconds + 300,
        )
    finally:
        dbs.drop(url)
    if "error" in raw:
        return raw
    delays = raw.pop("delays")
    window = raw.pop("window_s")
    return {
        "setup_s": round(raw["setup_s"], 2),
        "setup_overran_first_tick": raw["setup_overran_first_tick"],
        "window_s": round(window, 1),
        "runs_in_window": len(delays),
        "expected_runs_in_window": round(n / every * window),
        "start_delay_call": summarize_ms(delays),
        "cpu_percent_of_one_core": round(raw["cpu_s"] / window * 100, 1),
        "peak_rss_mib": round(raw["peak_rss_kib"] / 1024, 1),
    }


def _schedctl(dbs: Databases, sizes: Sizes) -> dict[str, Any]:
    n, every = sizes.steady_tasks, sizes.steady_every
    url = dbs.new("postgresql")
    runner: RunnerProcess | None = None
    try:
        definitions = interval_tasks(n, every, prefix="steady")
        sync_s = sync(url, definitions)
        runner = RunnerProcess(url, "bench-steady", args=["--max-running", str(sizes.workers)])
        runner.start()
        catch_up = catch_up_after_start(url)
        time.sleep(sizes.steady_warmup)
        postmaster = dbs.postmaster_pid
        window_start = datetime.now(UTC)
        wall0, cpu0 = time.monotonic(), runner.cpu_seconds()
        threads0 = thread_cpu_seconds(runner.pid)
        pg0 = children_cpu_seconds(postmaster) if postmaster else 0.0
        peak_rss = 0.0
        deadline = time.monotonic() + sizes.steady_seconds
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            peak_rss = max(peak_rss, runner.rss()["rss_mib"])
        wall = time.monotonic() - wall0
        cpu = runner.cpu_seconds() - cpu0
        threads1 = thread_cpu_seconds(runner.pid)
        pg_cpu = (children_cpu_seconds(postmaster) - pg0) if postmaster else None
        window_end = datetime.now(UTC)
        rss = runner.rss()
        report = runner.stop()
        runner = None
        until = window_end - TAIL_MARGIN
        expected = sum(
            d.schedule.count_between(
                window_start - timedelta(microseconds=1),
                until - timedelta(microseconds=1),
                cap=10**9,
            )
            for d in definitions
        )
        table = read_runs(url, prefix="steady", scheduled_from=window_start, scheduled_until=until)
    finally:
        if runner is not None:
            runner.kill()
        dbs.drop(url)
    delay = summarize_ms(table.start_delays)
    cpu_pct = round(cpu / wall * 100, 1)
    return {
        "tasks": n,
        "every_s": every,
        "runs_per_second": round(n / every, 1),
        "window_s": round(wall, 1),
        "sync_s": round(sync_s, 2),
        # The schedules that fell due between the sync and the instance's start, and how
        # long working them off took: the window opens ``steady_warmup`` after that.
        **catch_up,
        "expected_runs_in_window": expected,
        "runs": table.as_dict(),
        "missing_runs": expected - table.rows,
        "start_delay_row": delay,
        "scheduler_cpu_percent_of_one_core": cpu_pct,
        "scheduler_rss_mib": rss["rss_mib"],
        "scheduler_peak_rss_mib": max(peak_rss, rss["peak_rss_mib"]),
        # Where the scheduler's CPU goes, by thread role (a worker that exited in the
        # window is not counted; the pool's threads live as long as the scheduler).
        "scheduler_cpu_percent_by_thread": cpu_by_thread(threads0, threads1, wall),
        "postgres_cpu_percent_of_one_core": None
        if pg_cpu is None
        else round(pg_cpu / wall * 100, 1),
        "runner": {k: v for k, v in report.items() if k != "raw_call_delays"},
        "targets": [
            {
                "target": "p99 start delay <= 50 ms",
                "measured": delay["p99_ms"],
                "met": delay["p99_ms"] is not None and delay["p99_ms"] <= 50,
            },
            {
                "target": "scheduler CPU <= 25 % of one core",
                "measured": cpu_pct,
                "met": cpu_pct <= 25,
            },
        ],
    }


def cpu_by_thread(
    before: dict[str, float], after: dict[str, float], wall: float
) -> dict[str, float]:
    """Per thread role, percent of one core over the window, largest first."""
    used = {role: seconds - before.get(role, 0.0) for role, seconds in after.items()}
    return {
        role: round(seconds / wall * 100, 1)
        for role, seconds in sorted(used.items(), key=lambda kv: -kv[1])
        if seconds > 0
    }
