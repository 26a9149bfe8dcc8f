"""Once: one-time (``at:``) tasks at volume, the two acceptance lines of issue 18.

1. "100,000 one-time tasks due over 60 s: each runs exactly once, p99 start delay at most
   50 ms" (PostgreSQL). ``once_n`` no-op tasks (``bench.jobs:noop``), due evenly over
   ``once_window`` seconds, are created through ``Client.add_tasks`` (``ONCE_CHUNK`` tasks
   a call, one transaction each; the creation is timed), the first due a lead time ahead
   that leaves room to create them all. A scheduler process (``bench.runner``, at most
   ``workers`` running) starts once they exist. From the first due time until the last run
   is recorded, its CPU (and PostgreSQL's) is sampled; then the run rows say whether every
   task ran exactly once and successfully, no (task, scheduled_for, attempt) twice, and give
   the start delay (``started_at - scheduled_for``) and the runs per second achieved.
2. "A million pending one-time tasks must not slow the due query" (PostgreSQL and SQLite).
   Two databases: ``pending_small`` and ``pending_large`` one-time tasks due over the week
   after tomorrow, each plus the same ``pending_due_polls`` groups of ``pending_due`` tasks
   that fall due before them (all through ``Client.add_tasks``, timed; then ANALYZE).
   Taking turns between the two databases, poll by poll: the scale benchmark's empty poll
   (``scale.probe_empty_polls``: claim + next_due_at at an instant nothing is due, and the
   EXPLAIN of both statements), then due polls: claim + dispatch at the instant one group
   falls due (each takes exactly that group: the due query finding real work), then
   next_due_at. Targets: the empty poll's cost flat within 20 % from small to large, with
   the plans on the due index (the issue's line, as the scale benchmark measures it); and
   the due poll's cost flat too (the point of the line: the poll that finds due one-time
   tasks, new to the scheduler, whose definitions it must read). The due polls' SQL is
   timed statement by statement, the costliest explained.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench.common import (
    CountQuery,
    Databases,
    FinishedCounter,
    children_cpu_seconds,
    load_average,
    read_runs,
    summarize_ms,
    thread_cpu_seconds,
    wait_until,
)
from bench.processes import RunnerProcess
from bench.scale import INDEX, analyze, explain_plan, poll_ratio, probe_empty_polls
from bench.sizes import Sizes
from bench.steady import cpu_by_thread
from scheduler_core import Client
from scheduler_core.db import create_db_engine
from scheduler_core.store import Store

#: Tasks per ``Client.add_tasks`` call (one transaction). A fresh client per call, so no
#: store's definition cache holds more than one chunk (a million definitions would).
ONCE_CHUNK = 10_000
#: Lead time before the first one-time task is due: room to create them all (0.25 ms a
#: task through the client on the idle 2-core VM, 0.55 ms with other loads on it: this
#: allows 1 ms) and to start the scheduler.
LEAD_BASE_S = 5.0
LEAD_PER_TASK_S = 0.001
#: Longest wait, after the last task was due, for every run to be recorded.
DRAIN_TIMEOUT = 120.0
#: Part 2: the due groups fall due from ``DUE_AFTER`` on, one group every ``DUE_STEP``;
#: the pending tasks from ``PENDING_AFTER`` on, spread over ``PENDING_SPREAD``.
DUE_AFTER = timedelta(hours=2)
DUE_STEP = timedelta(seconds=1)
PENDING_AFTER = timedelta(days=1)
PENDING_SPREAD = timedelta(days=7)
#: The lease of a due poll's claim (only SQLite writes it) and its batch limit, as the engine.
LEASE = timedelta(seconds=30)
CLAIM_LIMIT = 500


def run(dbs: Databases, sizes: Sizes) -> dict[str, Any]:
    """Part 1 on PostgreSQL, part 2 on PostgreSQL and SQLite (schedctl only: no peers)."""
    return {
        "one_time_burst_over_window": once_run(dbs, sizes),
        "pending": {
            backend: pending_run(dbs, sizes, backend) for backend in ("postgresql", "sqlite")
        },
    }


# ---------------------------------------------------------------------- creation
def once_mapping(prefix: str, index: int, at: datetime) -> dict[str, Any]:
    """A one-time no-op task due at ``at``, which records its own lateness when called."""
    return {
        "name": f"{prefix}-{index:07d}",
        "callable": "bench.jobs:noop",
        "kwargs": {"due": at.timestamp()},
        "at": at.isoformat(),
    }


def create_once_tasks(
    url: str, count: int, at_of: Callable[[int], datetime], *, prefix: str
) -> float:
    """Create ``count`` one-time tasks (task ``i`` due at ``at_of(i)``) through
    ``Client.add_tasks``, ``ONCE_CHUNK`` a call; returns the seconds it took."""
    engine = create_db_engine(url)
    try:
        started = time.perf_counter()
        for start in range(0, count, ONCE_CHUNK):
            client = Client(engine=engine, check=False)
            client.add_tasks(
                [
                    once_mapping(prefix, i, at_of(i))
                    for i in range(start, min(count, start + ONCE_CHUNK))
                ]
            )
        return time.perf_counter() - started
    finally:
        engine.dispose()


# ---------------------------------------------------------------------- part 1
def once_run(dbs: Databases, sizes: Sizes) -> dict[str, Any]:
    """``once_n`` one-time tasks due evenly over ``once_window`` seconds, one scheduler."""
    n, window = sizes.once_n, sizes.once_window
    step = window / n
    lead = LEAD_BASE_S + n * LEAD_PER_TASK_S
    url = dbs.new("postgresql")
    runner: RunnerProcess | None = None
    counter = FinishedCounter(url, "once")
    pending_left = CountQuery(
        url,
        "SELECT count(*) FROM scheduler_schedules WHERE name LIKE 'once-%' AND due_at IS NOT NULL",
    )
    load_before = load_average()
    try:
        first = datetime.now(UTC) + timedelta(seconds=lead)
        last = first + timedelta(seconds=(n - 1) * step)
        create_s = create_once_tasks(
            url, n, lambda i: first + timedelta(seconds=i * step), prefix="once"
        )
        analyze(url)
        runner = RunnerProcess(url, "bench-once", args=["--max-running", str(sizes.workers)])
        runner.start()
        ready = datetime.now(UTC)
        sleep_until(first)
        postmaster = dbs.postmaster_pid
        wall0, cpu0 = time.monotonic(), runner.cpu_seconds()
        threads0 = thread_cpu_seconds(runner.pid)
        pg0 = children_cpu_seconds(postmaster) if postmaster else 0.0
        peak_rss = 0.0

        def sample() -> None:
            nonlocal peak_rss
            peak_rss = max(peak_rss, runner.rss()["rss_mib"]) if runner else peak_rss

        sleep_until(last, every=sample)
        complete = wait_until(lambda: counter() >= n, timeout=DRAIN_TIMEOUT, interval=0.2)
        recorded_after_last_due = (datetime.now(UTC) - last).total_seconds()
        wall = time.monotonic() - wall0
        cpu = runner.cpu_seconds() - cpu0
        threads1 = thread_cpu_seconds(runner.pid)
        pg_cpu = (children_cpu_seconds(postmaster) - pg0) if postmaster else None
        rss = runner.rss()
        report = runner.stop()
        runner = None
        still_pending = pending_left()
        table = read_runs(url, prefix="once", expected_tasks=n)
    finally:
        counter.close()
        pending_left.close()
        if runner is not None:
            runner.kill()
        dbs.drop(url)
    delay = summarize_ms(table.start_delays)
    span = (
        (table.last_finished - table.first_scheduled).total_seconds()
        if table.last_finished and table.first_scheduled
        else None
    )
    cpu_pct = round(cpu / wall * 100, 1)
    exactly_once = (
        table.by_status == {"success": n}
        and table.duplicate_ticks == 0
        and table.tasks_not_exactly_once == 0
    )
    return {
        "backend": "postgresql",
        "tasks": n,
        "window_s": window,
        "scheduled_runs_per_second": round(n / window, 1),
        "created_through": f"Client.add_tasks, {ONCE_CHUNK} tasks a call",
        "create_s": round(create_s, 2),
        "create_tasks_per_second": round(n / create_s),
        "lead_s": round(lead, 1),
        # The scheduler was ready only after the first task was due: a backlog at start.
        "setup_overran_first_due": ready > first,
        "complete": complete,
        "all_recorded_s_after_last_due": round(recorded_after_last_due, 2),
        "runs": table.as_dict(),
        "one_time_schedules_still_due": still_pending,
        "start_delay_row": delay,
        # Runs recorded over the time from the first tick to the last finish.
        "achieved_runs_per_second": round(table.rows / span, 1) if span else None,
        "measured_s": round(wall, 1),
        "scheduler_cpu_percent_of_one_core": cpu_pct,
        "scheduler_cpu_percent_by_thread": cpu_by_thread(threads0, threads1, wall),
        "scheduler_rss_mib": rss["rss_mib"],
        "scheduler_peak_rss_mib": max(peak_rss, rss["peak_rss_mib"]),
        "postgres_cpu_percent_of_one_core": None
        if pg_cpu is None
        else round(pg_cpu / wall * 100, 1),
        "runner": {k: v for k, v in report.items() if k != "raw_call_delays"},
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "targets": [
            {
                "target": f"{n} one-time tasks over {window:g} s: each runs exactly once",
                "measured": f"{table.by_status}, {table.duplicate_ticks} duplicate ticks, "
                f"{table.tasks_not_exactly_once} tasks not run exactly once, "
                f"{still_pending} still due",
                "met": exactly_once and still_pending == 0,
            },
            {
                "target": "p99 start delay <= 50 ms",
                "measured": delay["p99_ms"],
                "met": delay["p99_ms"] is not None and delay["p99_ms"] <= 50,
            },
        ],
    }


def sleep_until(when: datetime, *, every: Callable[[], None] | None = None) -> None:
    """Sleep until wall-clock ``when``, calling ``every`` about once a second meanwhile."""
    deadline = time.monotonic() + max(0.0, (when - datetime.now(UTC)).total_seconds())
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        if every is not None:
            every()


# ---------------------------------------------------------------------- part 2
def pending_run(dbs: Databases, sizes: Sizes, backend: str) -> dict[str, Any]:
    """The due query with ``pending_small`` vs ``pending_large`` pending one-time tasks."""
    origin = datetime.now(UTC)
    due_first = origin + DUE_AFTER
    urls: list[str] = []
    load_before = load_average()
    try:
        measured: list[dict[str, Any]] = []
        for pending in (sizes.pending_small, sizes.pending_large):
            url = dbs.new(backend)
            urls.append(url)
            measured.append(_populate(url, pending, sizes, origin=origin, due_first=due_first))
        probes = probe_empty_polls(urls, sizes.pending_probes)
        due = due_polls(urls, sizes, due_first=due_first)
    finally:
        for url in urls:
            dbs.drop(url)
    small, large = measured
    for m, p, d in zip(measured, probes, due, strict=True):
        m.update(p)
        m.update(d)

    def p50_sum(m: dict[str, Any], *keys: str) -> float | None:
        values = [(m.get(k) or {}).get("p50_ms") for k in keys]
        return None if any(v is None for v in values) else sum(values)

    empty = ("empty_poll_claim", "empty_poll_next_due_at")
    due_keys = ("due_poll_claim", "due_poll_next_due_at")
    empty_ratio = poll_ratio(p50_sum(large, *empty), p50_sum(small, *empty))
    claim_ratio = poll_ratio(p50_sum(large, empty[0]), p50_sum(small, empty[0]))
    next_ratio = poll_ratio(p50_sum(large, empty[1]), p50_sum(small, empty[1]))
    due_ratio = poll_ratio(p50_sum(large, *due_keys), p50_sum(small, *due_keys))
    index_used = all(m["plans_use_due_at_index"] for m in measured)
    return {
        "small": small,
        "large": large,
        # p50 of claim + p50 of next_due_at, large over small.
        "empty_poll_cost_ratio_large_vs_small": empty_ratio,
        "empty_poll_claim_ratio_large_vs_small": claim_ratio,
        "empty_poll_next_due_at_ratio_large_vs_small": next_ratio,
        "due_poll_cost_ratio_large_vs_small": due_ratio,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "targets": [
            {
                "target": f"empty poll (claim + next_due_at) flat within 20 % from "
                f"{sizes.pending_small} to {sizes.pending_large} pending one-time tasks",
                "measured": f"x{empty_ratio} (claim x{claim_ratio}, next_due_at x{next_ratio})",
                "met": empty_ratio is not None and empty_ratio <= 1.2,
            },
            {
                # Not the wording but its point: the poll that finds due one-time
                # tasks (they are new to the scheduler: it reads their definitions).
                "target": f"due poll (claim + dispatch of {sizes.pending_due} due one-time "
                "tasks, then next_due_at) flat within 20 % from "
                f"{sizes.pending_small} to {sizes.pending_large} pending",
                "measured": f"x{due_ratio}",
                "met": due_ratio is not None and due_ratio <= 1.2,
            },
            {
                "target": f"due query plans use {INDEX}",
                "measured": {
                    "small": small["plans_use_due_at_index"],
                    "large": large["plans_use_due_at_index"],
                },
                "met": index_used,
            },
            {
                "target": f"each due poll claims exactly its {sizes.pending_due} due tasks",
                "measured": {
                    "small": small["due_polls_claimed_as_expected"],
                    "large": large["due_polls_claimed_as_expected"],
                },
                "met": small["due_polls_claimed_as_expected"]
                and large["due_polls_claimed_as_expected"],
            },
        ],
    }


def _populate(
    url: str, pending: int, sizes: Sizes, *, origin: datetime, due_first: datetime
) -> dict[str, Any]:
    """``pending`` one-time tasks due over ``PENDING_SPREAD`` from ``origin +
    PENDING_AFTER``, and the due groups: group ``g`` of ``pending_due`` tasks due at
    ``due_first + g * DUE_STEP``. ANALYZE after."""
    spread = PENDING_SPREAD / pending
    pending_first = origin + PENDING_AFTER
    pending_s = create_once_tasks(
        url, pending, lambda i: pending_first + i * spread, prefix="pending"
    )
    k = sizes.pending_due
    due_s = create_once_tasks(
        url,
        k * sizes.pending_due_polls,
        lambda i: due_first + (i // k) * DUE_STEP,
        prefix="due",
    )
    started = time.perf_counter()
    analyze(url)
    return {
        "pending": pending,
        "due_tasks": k * sizes.pending_due_polls,
        "created_through": f"Client.add_tasks, {ONCE_CHUNK} tasks a call",
        "create_pending_s": round(pending_s, 2),
        "create_pending_tasks_per_second": round(pending / pending_s),
        "create_due_s": round(due_s, 2),
        "analyze_s": round(time.perf_counter() - started, 2),
    }


def due_polls(urls: Sequence[str], sizes: Sizes, *, due_first: datetime) -> list[dict[str, Any]]:
    """Poll ``g`` at the instant group ``g`` is due (half a step after it): claim +
    dispatch (the engine's path, as in ``probe_empty_polls``), then next_due_at, on each
    database in turn. Each poll must claim exactly ``pending_due`` tasks. The SQL the polls
    run is timed statement by statement, and the costliest statements are explained."""
    engines = [create_db_engine(url) for url in urls]
    timers = [StatementTimer(engine) for engine in engines]
    stores = [Store(engine, instance_id="bench-due-poll") for engine in engines]
    claim_s: list[list[float]] = [[] for _ in urls]
    next_s: list[list[float]] = [[] for _ in urls]
    # (schedules claimed, runs dispatched) of each poll
    counts: list[list[tuple[int, int]]] = [[] for _ in urls]
    try:
        for group in range(sizes.pending_due_polls):
            now = due_first + group * DUE_STEP + DUE_STEP / 2
            for i, store in enumerate(stores):
                started = time.perf_counter()
                claimed, runs = store.claim_and_dispatch(now=now, limit=CLAIM_LIMIT, lease=LEASE)
                claim_s[i].append(time.perf_counter() - started)
                counts[i].append((claimed, len(runs)))
                started = time.perf_counter()
                store.next_due_at()
                next_s[i].append(time.perf_counter() - started)
        for timer in timers:
            timer.close()
        statements = [timer.top(EXPLAINED_STATEMENTS, explain=True) for timer in timers]
    finally:
        for timer in timers:
            timer.close()
        for engine in engines:
            engine.dispose()
    return [
        {
            "due_poll_claim": summarize_ms(claim_s[i]),
            "due_poll_next_due_at": summarize_ms(next_s[i]),
            "due_polls_claimed_as_expected": all(
                c == (sizes.pending_due, sizes.pending_due) for c in counts[i]
            ),
            # The distinct (claimed, dispatched) pairs seen: one pair when all went as expected.
            "due_polls_claimed_dispatched": sorted(set(counts[i])),
            # Where a due poll's time goes in the database: the statements that took longest
            # in all, with their plans.
            "due_poll_top_statements": statements[i],
        }
        for i in range(len(urls))
    ]


#: How many of the due polls' costliest statements are reported (and explained).
EXPLAINED_STATEMENTS = 4
#: Plan lines are cut there (a claim's array of digests is kilobytes long).
PLAN_LINE_CHARS = 200


class StatementTimer:
    """Wall time of each SQL statement an engine runs, summed by statement text (its first
    ``LABEL_CHARS`` characters); keeps the first parameters of each to explain it."""

    LABEL_CHARS = 110

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.calls: dict[str, list[float]] = {}
        self.samples: dict[str, tuple[str, Any]] = {}
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _before(
        self, conn: Any, _cursor: Any, _statement: str, _params: Any, _ctx: Any, _many: bool
    ) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def _after(
        self, conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, many: bool
    ) -> None:
        started = conn.info.get("bench_started")
        if not started:  # it began before the timer was attached: not timed
            return
        elapsed = time.perf_counter() - started.pop()
        label = " ".join(statement.split())[: self.LABEL_CHARS]
        self.calls.setdefault(label, []).append(elapsed)
        if not many and label not in self.samples:
            self.samples[label] = (statement, params)

    def close(self) -> None:
        """Stop timing (idempotent)."""
        for name, fn in (
            ("before_cursor_execute", self._before),
            ("after_cursor_execute", self._after),
        ):
            with suppress(sa.exc.InvalidRequestError):
                sa.event.remove(self.engine, name, fn)

    def top(self, count: int, *, explain: bool = False) -> list[dict[str, Any]]:
        """The ``count`` statements with the largest total time, with their plans."""
        ranked = sorted(self.calls.items(), key=lambda kv: -sum(kv[1]))[:count]
        out: list[dict[str, Any]] = []
        for label, seconds in ranked:
            entry: dict[str, Any] = {
                "statement": label,
                "calls": len(seconds),
                "total_ms": round(sum(seconds) * 1000, 1),
                "per_call_ms": round(sum(seconds) * 1000 / len(seconds), 3),
            }
            sample = self.samples.get(label)
            if explain and sample is not None and label.split(" ", 1)[0] in _EXPLAINABLE:
                try:
                    plan = explain_plan(self.engine, *sample)
                    entry["plan"] = [line[:PLAN_LINE_CHARS] for line in plan]
                except sa.exc.DBAPIError as exc:
                    entry["plan"] = [f"not explained: {type(exc.orig).__name__}"]
            out.append(entry)
        return out


_EXPLAINABLE = ("SELECT", "UPDATE", "INSERT", "DELETE", "WITH")
