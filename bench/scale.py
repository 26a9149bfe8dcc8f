"""Scale: the cost of polling with 1k vs 100k stored schedules at the same ~100 due per second.

Each size gets interval tasks spread evenly so that ``due_per_second`` fall due each second;
a scheduler process runs them for a while (start delay, in-run store timings). Then this
process measures an empty poll (nothing due: the index probe alone) on both sizes' databases,
taking turns probe by probe so both see the same machine, and shows the plans of the due
queries (EXPLAIN on PostgreSQL, EXPLAIN QUERY PLAN on SQLite).

The peers (APScheduler 3.11 and 4.0.0a6, PostgreSQL only) store the same number of interval
schedules on the same grids, in bulk (the rows their own add_job/add_schedule write); each
times its own empty poll before the first tick (APS3: the job store's ``get_due_jobs`` +
``get_next_run_time``; APS4: the data store's ``acquire_schedules`` +
``get_next_schedule_run_time``), explains those statements, then runs the schedules and
reports the lateness of the calls in a window like schedctl's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench.common import (
    Databases,
    catch_up_after_start,
    interval_tasks,
    read_runs,
    run_peer_script,
    summarize_ms,
    sync,
)
from bench.peers.envs import PeerUnavailableError, peer_python
from bench.processes import RunnerProcess
from bench.sizes import Sizes
from scheduler_core.db import create_db_engine
from scheduler_core.store import Store

INDEX = "ix_scheduler_schedules_due_at"

PEERS = {
    # name: (environment, script, driver for PostgreSQL, the index on the due column)
    "apscheduler-3.11": ("aps3", "aps3_scale.py", "psycopg", "ix_apscheduler_jobs_next_run_time"),
    "apscheduler-4.0.0a6": ("aps4", "aps4_scale.py", "asyncpg", "ix_schedules_next_fire_time"),
}


def measure(dbs: Databases, backend: str, stored: int, sizes: Sizes) -> tuple[dict[str, Any], str]:
    """Run ``stored`` schedules at ``sizes.scale_due_per_second`` on ``backend``. Returns
    the figures and the database, kept for the empty-poll probes (the caller drops it)."""
    url = dbs.new(backend)
    runner: RunnerProcess | None = None
    every = stored / sizes.scale_due_per_second
    try:
        definitions = interval_tasks(stored, every, prefix="scale")
        sync_s = sync(url, definitions)
        analyze(url)
        runner = RunnerProcess(
            url, f"bench-scale-{stored}", args=["--max-running", str(sizes.workers)]
        )
        runner.start()
        time.sleep(sizes.scale_warmup)
        # Ticks that fell due while a large sync ran are a backlog: let the scheduler catch
        # up before the window opens, so the window measures the steady ~100/s only.
        catch_up = catch_up_after_start(url)
        window_start = datetime.now(UTC)
        time.sleep(sizes.scale_seconds)
        window_end = datetime.now(UTC)
        report = runner.stop()
        runner = None
        table = read_runs(
            url,
            prefix="scale",
            scheduled_from=window_start,
            scheduled_until=window_end - timedelta(seconds=1),
        )
    except BaseException:
        if runner is not None:
            runner.kill()
        dbs.drop(url)
        raise
    store = report.get("store", {})
    result = {
        "stored": stored,
        "every_s": every,
        "sync_s": round(sync_s, 2),
        "caught_up_before_window": catch_up["caught_up"],
        "overdue_at_start": catch_up["overdue_at_start"],
        "catch_up_s": catch_up["catch_up_s"],
        "runs_in_window": table.rows,
        "start_delay_row": summarize_ms(table.start_delays),
        # Claim + dispatch of each batch the running scheduler took (its in-run poll cost;
        # at the large size nearly every claimed task is one this process has not seen yet,
        # so it includes reading and parsing that task's definition once).
        "in_run_claim": store.get("claim_and_dispatch"),
        "in_run_next_due_at": store.get("next_due_at"),
        "runner_error": report.get("error"),
    }
    return result, url


def analyze(url: str) -> None:
    """ANALYZE the database (fresh planner statistics after a bulk insert)."""
    engine = create_db_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()


def probe_empty_polls(urls: Sequence[str], probes: int) -> list[dict[str, Any]]:
    """Time empty polls (claim + next-due) on each database, taking turns probe by probe so
    that every size sees the same machine (its speed drifts over minutes), and capture and
    explain their SQL."""
    engines = [create_db_engine(url) for url in urls]
    captured: list[dict[str, tuple[str, Any]]] = [{} for _ in urls]

    def capturer(into: dict[str, tuple[str, Any]]) -> Callable[..., None]:
        def capture(
            _conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: Any
        ) -> None:
            text = " ".join(statement.split())
            if text.startswith("UPDATE scheduler_schedules SET claimed_by") or (
                text.startswith("SELECT scheduler_schedules.name") and "SKIP LOCKED" in text
            ):
                into.setdefault("claim", (statement, params))
            elif "min(scheduler_schedules.due_at)" in text:
                into.setdefault("next_due", (statement, params))

        return capture

    listeners = [capturer(c) for c in captured]
    for engine, listener in zip(engines, listeners, strict=True):
        sa.event.listen(engine, "before_cursor_execute", listener)
    stores = [Store(engine, instance_id="bench-probe") for engine in engines]
    past = datetime.now(UTC) - timedelta(days=1)  # nothing is due then: the pure probe cost
    claim_s: list[list[float]] = [[] for _ in urls]
    next_s: list[list[float]] = [[] for _ in urls]
    try:
        for _ in range(probes):
            for i, store in enumerate(stores):
                started = time.perf_counter()
                # The engine's path: one transaction on PostgreSQL, claim then dispatch on
                # SQLite.
                claimed, _runs = store.claim_and_dispatch(
                    now=past, limit=500, lease=timedelta(seconds=30)
                )
                claim_s[i].append(time.perf_counter() - started)
                assert not claimed
                started = time.perf_counter()
                store.next_due_at()
                next_s[i].append(time.perf_counter() - started)
        plans = [
            {name: explain_plan(engine, *c[name]) for name in c}
            for engine, c in zip(engines, captured, strict=True)
        ]
    finally:
        for engine, listener in zip(engines, listeners, strict=True):
            sa.event.remove(engine, "before_cursor_execute", listener)
            engine.dispose()
    return [
        {
            "empty_poll_claim": summarize_ms(claim_s[i]),
            "empty_poll_next_due_at": summarize_ms(next_s[i]),
            "plans": plans[i],
            "plans_use_due_at_index": all(INDEX in "\n".join(p) for p in plans[i].values()),
        }
        for i in range(len(urls))
    ]


def explain_plan(engine: sa.Engine, statement: str, params: Any) -> list[str]:
    prefix = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(prefix + statement, params).all()
        conn.rollback()
    if engine.dialect.name == "postgresql":
        return [str(r[0]) for r in rows]
    return [str(r[-1]) for r in rows]


def peer_measure(dbs: Databases, peer: str, stored: int, sizes: Sizes) -> dict[str, Any]:
    """Run a peer's scale script on a fresh PostgreSQL database: ``stored`` interval
    schedules, ``sizes.scale_due_per_second`` due each second, first tick after a lead."""
    env_name, script, driver, index = PEERS[peer]
    try:
        python = peer_python(env_name)
    except PeerUnavailableError as exc:
        return {"skipped": str(exc)}
    every = stored / sizes.scale_due_per_second
    # Building, pickling and inserting the rows, ANALYZE and the probes all happen before
    # the first tick (the probes must find nothing due).
    lead = 8.0 + stored * 0.0006 + sizes.scale_probes * 0.02
    url = dbs.new("postgresql", migrated=False)
    try:
        raw = run_peer_script(
            python,
            script,
            url,
            driver=driver,
            args=[
                *("--tasks", str(stored), "--every", str(every), "--lead", str(lead)),
                *("--warmup", str(sizes.scale_warmup), "--seconds", str(sizes.scale_seconds)),
                *("--workers", str(sizes.workers), "--probes", str(sizes.scale_probes)),
            ],
            timeout=lead + sizes.scale_warmup + sizes.scale_seconds + 300,
        )
    finally:
        dbs.drop(url)
    if "error" in raw:
        return raw
    window = raw["window_s"]
    plans = raw["plans"]
    return {
        "stored": stored,
        "every_s": every,
        "setup_s": round(raw["setup_s"], 2),
        "setup_overran_first_tick": raw["setup_overran_first_tick"],
        "window_s": round(window, 1),
        "runs_in_window": len(raw["delays"]),
        "expected_runs_in_window": round(stored / every * window),
        "start_delay_call": summarize_ms(raw["delays"]),
        "empty_poll": summarize_ms(raw["empty_poll_s"]),
        "empty_poll_next_due": summarize_ms(raw["empty_next_due_s"]),
        "empty_polls_that_found_due_work": raw["empty_polls_not_empty"],
        "plans": plans,
        "plans_use_due_index": {name: index in "\n".join(p) for name, p in plans.items()},
    }


def peers_run(dbs: Databases, sizes: Sizes) -> dict[str, Any]:
    """Each peer at both sizes (PostgreSQL), with its large/small empty-poll ratio."""
    out: dict[str, Any] = {}
    for peer in PEERS:
        small = peer_measure(dbs, peer, sizes.scale_small, sizes)
        if "skipped" in small:
            out[peer] = small
            continue
        large = peer_measure(dbs, peer, sizes.scale_large, sizes)
        out[peer] = {
            "small": small,
            "large": large,
            "empty_poll_cost_ratio_large_vs_small": poll_ratio(
                (large.get("empty_poll") or {}).get("p50_ms"),
                (small.get("empty_poll") or {}).get("p50_ms"),
            ),
        }
    return out


def run(dbs: Databases, sizes: Sizes, *, peers: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"due_per_second": sizes.scale_due_per_second}
    for backend in ("postgresql", "sqlite"):
        small, small_url = measure(dbs, backend, sizes.scale_small, sizes)
        try:
            large, large_url = measure(dbs, backend, sizes.scale_large, sizes)
            try:
                small_probe, large_probe = probe_empty_polls(
                    [small_url, large_url], sizes.scale_probes
                )
            finally:
                dbs.drop(large_url)
        finally:
            dbs.drop(small_url)
        small.update(small_probe)
        large.update(large_probe)
        ratio = poll_ratio(large["empty_poll_claim"]["p50_ms"], small["empty_poll_claim"]["p50_ms"])
        in_run = poll_ratio(
            (large.get("in_run_claim") or {}).get("p50_ms"),
            (small.get("in_run_claim") or {}).get("p50_ms"),
        )
        out[backend] = {
            "small": small,
            "large": large,
            "empty_poll_cost_ratio_large_vs_small": ratio,
            "in_run_claim_p50_ratio_large_vs_small": in_run,
            "targets": [
                {
                    "target": "poll cost flat (within 20 %) from small to large",
                    "measured": f"empty poll x{ratio}, in-run claim x{in_run}",
                    "met": ratio is not None and ratio <= 1.2,
                },
                {
                    "target": f"due query plans use {INDEX}",
                    "measured": large["plans_use_due_at_index"],
                    "met": bool(large["plans_use_due_at_index"]),
                },
            ],
        }
    if peers:
        out["peers"] = peers_run(dbs, sizes)
    return out


def poll_ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 2)
