"""Burst: N one-shot no-op tasks due at one instant, one instance, a run row per run.

schedctl runs in this process (its own threads); each peer runs in its own environment
through a script in ``bench/peers``. Every contender gets a fresh database on the same
server (or a fresh SQLite file in the same directory) and the same N and pool size.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from bench import jobs
from bench.common import (
    REPO,
    Databases,
    FinishedCounter,
    NullTelemetry,
    instrument_store,
    one_shot_tasks,
    peer_url,
    read_runs,
    run_json,
    summarize_ms,
    summarize_timings,
    sync,
    wait_until,
)
from bench.peers.envs import PeerUnavailableError, peer_python
from bench.sizes import Sizes
from scheduler_core.db import create_db_engine
from scheduler_core.runtime import EngineSettings, Scheduler

PEERS = {
    # name: (environment, script, driver for PostgreSQL, driver for SQLite)
    "apscheduler-3.11": ("aps3", "aps3_burst.py", "psycopg", "pysqlite"),
    "apscheduler-4.0.0a6": ("aps4", "aps4_burst.py", "asyncpg", "aiosqlite"),
}


def _scheduler(engine: Engine, *, workers: int, telemetry: bool, prefix: str) -> Scheduler:
    """The scheduler of one burst, with (by default) or without its telemetry."""
    settings = EngineSettings(
        instance_id=f"bench-{prefix}", health_listen=None, max_running=workers, drain_grace=10.0
    )
    return Scheduler(
        engine=engine,
        settings=settings,
        telemetry=NullTelemetry(engine, instance_id=settings.instance_id)
        if not telemetry
        else None,
    )


def schedctl_burst(
    url: str,
    n: int,
    *,
    workers: int,
    telemetry: bool = True,
    prefix: str = "burst",
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Run one burst of ``n`` one-shots in this process and read back what was recorded."""
    jobs.reset()
    lead = 1.5 + n * 0.002
    due = datetime.now(UTC) + timedelta(seconds=lead)
    sync_s = sync(url, one_shot_tasks(n, due, prefix=prefix))
    engine = create_db_engine(url, pool_size=5, pre_ping=False)  # as `schedctl run`
    scheduler = _scheduler(engine, workers=workers, telemetry=telemetry, prefix=prefix)
    timings = instrument_store(scheduler.store)
    counter = FinishedCounter(url, prefix)
    scheduler.start()
    overran = datetime.now(UTC) > due - timedelta(seconds=0.2)
    thread = threading.Thread(target=scheduler.run, name="bench-scheduler", daemon=True)
    thread.start()
    try:
        # Sleep through the lead time, then watch the run table until every run is recorded.
        time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() - 0.05))
        cpu_before = time.process_time()
        poll_cpu = 0.0

        def all_recorded() -> bool:
            nonlocal poll_cpu
            started = time.thread_time()
            done = counter() >= n
            poll_cpu += time.thread_time() - started
            return done

        complete = wait_until(all_recorded, timeout=timeout)
        recorded_at = datetime.now(UTC)
        cpu_s = time.process_time() - cpu_before - poll_cpu
    finally:
        scheduler.request_stop()
        thread.join(timeout=60)
        counter.close()
        engine.dispose()
    table = read_runs(url, prefix=prefix, expected_tasks=n)
    calls = [c[0] for c in jobs.CALLS]
    return {
        "n": n,
        "telemetry": telemetry,
        "complete": complete,
        "setup_overran_due_time": overran,
        "sync_s": round(sync_s, 3),
        "all_finished_s": _round(seconds_after(table.last_finished, due)),
        "all_recorded_s": _round((recorded_at - due).total_seconds()),
        "start_delay_row": summarize_ms(table.start_delays),
        "start_delay_call": summarize_ms(calls),
        "cpu_s": round(cpu_s, 3),
        "cpu_ms_per_run": round(cpu_s * 1000 / n, 3),
        "runs": table.as_dict(),
        "store": summarize_timings(timings),
    }


def peer_burst(
    peer: str, url: str, n: int, *, workers: int, timeout: float = 600.0
) -> dict[str, Any]:
    """Run a peer's burst script in its own environment on database ``url``."""
    env_name, script, pg_driver, sqlite_driver = PEERS[peer]
    try:
        python = peer_python(env_name)
    except PeerUnavailableError as exc:
        return {"skipped": str(exc)}
    driver = pg_driver if url.startswith("postgresql") else sqlite_driver
    lead = 3.0 + n * 0.02
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BENCH_DB_URL": peer_url(url, driver=driver),
    }
    raw = run_json(
        [
            str(python),
            str(REPO / "bench" / "peers" / script),
            "--n",
            str(n),
            "--lead",
            str(lead),
            "--workers",
            str(workers),
        ],
        env=env,
        timeout=timeout + lead + 60,
    )
    if "error" in raw:
        return raw
    delays = raw.pop("delays")
    return {
        **raw,
        "n": n,
        "complete": raw["done"] == n,
        "all_finished_s": _round(raw["all_finished_s"]),
        "start_delay_call": summarize_ms(delays),
    }


def run(dbs: Databases, sizes: Sizes, *, peers: bool = True) -> dict[str, Any]:
    """The burst on PostgreSQL and on SQLite: each contender ``burst_repeats`` times, the
    contenders interleaved so drift on a shared machine hits all alike; the median run
    (by time until all finished) is reported with every sample beside it."""
    out: dict[str, Any] = {
        "n": sizes.burst_n,
        "workers": sizes.workers,
        "repeats": sizes.burst_repeats,
    }
    for backend in ("postgresql", "sqlite"):
        samples: dict[str, list[dict[str, Any]]] = {"schedctl": [], **{p: [] for p in PEERS}}
        for _ in range(sizes.burst_repeats):
            url = dbs.new(backend)
            try:
                samples["schedctl"].append(
                    schedctl_burst(url, sizes.burst_n, workers=sizes.workers)
                )
            finally:
                dbs.drop(url)
            for peer in PEERS if peers else ():
                url = dbs.new(backend, migrated=False)
                try:
                    samples[peer].append(
                        peer_burst(peer, url, sizes.burst_n, workers=sizes.workers)
                    )
                finally:
                    dbs.drop(url)
        section: dict[str, Any] = {}
        for who, runs in samples.items():
            if not runs:
                section[who] = {"skipped": "peers not requested"}
                continue
            section[who] = _median_run(runs)
        section["targets"] = _targets(backend, section)
        out[backend] = section
    return out


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    timed = [r for r in runs if r.get("all_finished_s") is not None]
    if not timed:
        return runs[0]
    timed.sort(key=lambda r: r["all_finished_s"])
    median = dict(timed[(len(timed) - 1) // 2])
    median["all_finished_s_samples"] = [r.get("all_finished_s") for r in runs]
    median["all_complete"] = all(r.get("complete") for r in runs)
    return median


def _targets(backend: str, section: dict[str, Any]) -> list[dict[str, Any]]:
    ours = section["schedctl"].get("all_finished_s")
    aps3 = section.get("apscheduler-3.11", {}).get("all_finished_s")
    aps4 = section.get("apscheduler-4.0.0a6", {}).get("all_finished_s")
    targets: list[dict[str, Any]] = []

    def ratio(peer: float | None) -> float | None:
        if peer is None or ours is None or ours <= 0:
            return None
        return round(peer / float(ours), 2)

    if backend == "postgresql":
        r3, r4 = ratio(aps3), ratio(aps4)
        targets.append(_target("all done >= 3x faster than APScheduler 3.11", r3, r3, 3.0))
        targets.append(_target("all done >= 30x faster than APScheduler 4", r4, r4, 30.0))
        p99 = section["schedctl"]["start_delay_row"]["p99_ms"]
        targets.append(
            {
                "target": "p99 start delay <= 100 ms",
                "measured": p99,
                "met": p99 is not None and p99 <= 100,
            }
        )
    else:
        r3, r4 = ratio(aps3), ratio(aps4)
        targets.append(_target("faster than APScheduler 3.11 (SQLite)", r3, r3, 1.0, strict=True))
        targets.append(_target("faster than APScheduler 4 (SQLite)", r4, r4, 1.0, strict=True))
    return targets


def _target(
    name: str, measured: float | None, value: float | None, bound: float, *, strict: bool = False
) -> dict[str, Any]:
    if value is None:
        return {"target": name, "measured": None, "met": None}
    met = value > bound if strict else value >= bound
    return {"target": name, "measured": f"{measured}x", "met": met}


def seconds_after(moment: datetime | None, due: datetime) -> float | None:
    """Seconds from ``due`` to ``moment`` (say, the last run's end), None without a moment."""
    return None if moment is None else (moment - due).total_seconds()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
