"""Acceptance: for every task, every gauge and counter /metrics serves equals what the run rows
in ``scheduler_task_runs`` say, on SQLite and PostgreSQL, with two scheduler instances sharing
the database (and a third one that dies mid-run, so a survivor marks its run abandoned).

The workload has successes, failures, command and async timeouts, a retry that recovers and one
that fails again, cancels, an overlap skip, an abandoned run, and runs shorter and longer than a
second. Time is a clock that flows with the monotonic clock and jumps when the test moves it
(to the next tick, to a retry's time, past the dead instance's lease), so ticks come exactly
when the test wants them while runs still take their real time.

The expectations are computed here from the run rows only (never from the schedule counters or
the health rows), and every disagreement is collected, per phase, and reported at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from exporter.server import ExporterServer
from exporter.settings import ExporterSettings
from scheduler_core.config import parse_task_document
from scheduler_core.models import TERMINAL_STATUSES, schedules, task_runs
from scheduler_core.runtime import EngineSettings, Scheduler
from scheduler_core.store import Store

pytestmark = pytest.mark.timeout(180)

HERE = __name__  # the callables below, as module:function
SCHEDCTL = [sys.executable, "-m", "scheduler_core.cli"]
#: The statuses /metrics has a series for (runs_total outcome, last_status one-hot).
OUTCOMES: tuple[str, ...] = tuple(TERMINAL_STATUSES)
#: Statuses of a run that was executed (it has a start and an end). A ``skipped`` row records a
#: tick that was not run because the previous run was still going, and a ``missed`` row ticks
#: that never ran: both are written at claim time with ``started_at`` NULL and no duration.
#: Decision: the last start/finish/duration/status gauges ("the task's latest run started /
#: finished", "how long the latest finished run took") are about runs that executed, so they
#: ignore skipped and missed rows; ``runs_total{outcome="skipped"}`` still counts skipped rows
#: (the catalog lists skipped among the finished-run outcomes). In this scenario a skipped row
#: is never the latest finished row at the final check; it only matters in the in-flight phase,
#: where the cancelled task's only finished row is its skipped tick.
EXECUTED = ("success", "failure", "timeout", "cancelled", "abandoned")
FAILED = ("failure", "timeout")
#: Exposition carries float seconds: timestamps and durations agree within a millisecond.
TOLERANCE = 1e-3
HOUR = 3600.0
ROUNDS = 3
LONG_RUN_S = 1.5
QUICK_RUN_S = 0.2


# ------------------------------------------------------------------ task actions (module:function)
_lock = threading.Lock()
_scripts: dict[str, list[str]] = {}
_release = threading.Event()


def fail() -> None:
    """Always fails."""
    raise RuntimeError("this task always fails")


def scripted(key: str) -> None:
    """Succeeds, fails or blocks until released, as the next entry of ``key``'s script says."""
    with _lock:
        script = _scripts.get(key)
        step = script.pop(0) if script else "exhausted"
    if step == "ok":
        return
    if step == "hold":
        _release.wait(60)  # bounded, so no thread outlives the test for long
        return
    raise RuntimeError(f"scripted {step} for {key}")


# ------------------------------------------------------------------ a clock that flows and jumps
class JumpClock:
    """Real elapsed time (monotonic) from ``start``, plus whatever the test advanced it by."""

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._origin = time.monotonic()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            offset = self._offset
        return self._start + timedelta(seconds=time.monotonic() - self._origin + offset)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def jump_to(self, when: datetime) -> None:
        """Move forward to just after ``when`` (never backwards)."""
        ahead = (when - self.now()).total_seconds() + 0.01
        if ahead > 0:
            self.advance(ahead)


# ------------------------------------------------------------------ the workload
REGULAR = (
    "quick",  # success, ~0.2 s: its start is only ever written with its finish
    "long",  # success, ~1.5 s: its start is written on its own first
    "fails",  # failure every tick, no retries
    "mixed",  # success, then failures: consecutive failures count from the success
    "timeout-cmd",  # a command killed at its timeout
    "timeout-async",  # an async callable cancelled at its timeout
    "retry-recovers",  # fails, its retry succeeds: no consecutive failure
    "retry-fails",  # fails, its retry fails too: one consecutive failure per tick
)
CANCELLED = "cancelled"  # runs until cancelled; its tick during the run is skipped
ABANDONED = "abandoned"  # a manual run succeeds, then its one-time tick runs on an instance that
#                         dies mid-run


def task_document(start: datetime) -> list[Any]:
    every = {"every": "1h", "anchor": start.isoformat()}
    return parse_task_document(
        {
            "tasks": [
                {"name": "quick", "callable": "time:sleep", "args": [QUICK_RUN_S], **every},
                {"name": "long", "callable": "time:sleep", "args": [LONG_RUN_S], **every},
                {"name": "fails", "callable": f"{HERE}:fail", **every},
                {"name": "mixed", "callable": f"{HERE}:scripted", "args": ["mixed"], **every},
                {
                    "name": "timeout-cmd",
                    "command": ["sleep", "5"],
                    "timeout": "1s",
                    "timeout_grace": "200ms",
                    **every,
                },
                {
                    "name": "timeout-async",
                    "callable": "asyncio:sleep",
                    "args": [5],
                    "timeout": "500ms",
                    **every,
                },
                {
                    "name": "retry-recovers",
                    "callable": f"{HERE}:scripted",
                    "args": ["retry-recovers"],
                    "retries": {"max": 1, "backoff": "fixed", "delay": "2s"},
                    **every,
                },
                {
                    "name": "retry-fails",
                    "callable": f"{HERE}:fail",
                    "retries": {"max": 1, "backoff": "fixed", "delay": "2s"},
                    **every,
                },
                {
                    "name": CANCELLED,
                    "command": ["sleep", "30"],
                    "timeout_grace": "200ms",
                    **every,
                },
                {
                    "name": ABANDONED,
                    "callable": f"{HERE}:scripted",
                    "args": [ABANDONED],
                    "at": (start + timedelta(minutes=30)).isoformat(),
                },
            ]
        },
        source="test_numbers_agree",
    )


def tick(start: datetime, k: int) -> datetime:
    return start + timedelta(hours=k)


# ------------------------------------------------------------------ SQL side
def run_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(task_runs).order_by(task_runs.c.id)))


def task_names(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(schedules.c.name).order_by(schedules.c.name)).scalars())


def pending_retries(engine: sa.Engine) -> list[datetime]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(schedules.c.retry_at).where(schedules.c.retry_at.is_not(None))
            ).scalars()
        )


def describe(rows: Sequence[sa.Row]) -> str:
    return "\n".join(
        f"  #{r.id} {r.task_name} for={r.scheduled_for:%H:%M:%S} a{r.attempt} {r.status} "
        f"on {r.instance_id} start={r.started_at} end={r.finished_at} dur={r.duration_seconds}"
        for r in rows
    )


@dataclass(frozen=True)
class Expected:
    """What one task's gauges and counters must be, from its run rows alone."""

    runs_total: dict[str, int]
    last_start: datetime | None
    last_finish: datetime | None
    last_success: datetime | None
    last_duration: float | None
    last_status: str | None
    consecutive_failures: int
    running: int


def expected_from_rows(rows: Sequence[sa.Row]) -> Expected:
    counts = Counter(r.status for r in rows)
    starts = [r.started_at for r in rows if r.started_at is not None]
    finished = sorted(
        (r for r in rows if r.status in EXECUTED and r.finished_at is not None),
        key=lambda r: (r.finished_at, r.id),
    )
    latest = finished[-1] if finished else None
    successes = [r.finished_at for r in finished if r.status == "success"]
    # A failed attempt is final when no later attempt of the same tick exists (its retry ran,
    # or none was due): only a tick's final failure or timeout counts; a success resets;
    # cancelled and abandoned runs leave the count as it is.
    attempts: dict[datetime, int] = defaultdict(int)
    for r in rows:
        attempts[r.scheduled_for] = max(attempts[r.scheduled_for], r.attempt)
    failures = 0
    for r in finished:
        if r.status == "success":
            failures = 0
        elif r.status in FAILED and r.attempt >= attempts[r.scheduled_for]:
            failures += 1
    return Expected(
        runs_total={o: counts.get(o, 0) for o in OUTCOMES},
        last_start=max(starts) if starts else None,
        last_finish=latest.finished_at if latest else None,
        last_success=max(successes) if successes else None,
        last_duration=latest.duration_seconds if latest else None,
        last_status=latest.status if latest else None,
        consecutive_failures=failures,
        running=counts.get("running", 0),
    )


# ------------------------------------------------------------------ exporter side
def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: ExporterServer) -> Samples:
    text = http_get(f"{server.url}/metrics").decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def fmt(value: Any) -> str:
    if value is None:
        return "absent"
    if isinstance(value, datetime):
        return f"{value.timestamp():.6f} ({value.isoformat()})"
    if isinstance(value, float):
        return f"{value:.6f}"
    return repr(value)


def compare(
    phase: str, engine: sa.Engine, server: ExporterServer, mismatches: list[str]
) -> dict[str, Expected]:
    """Refresh the exporter, scrape it, and add every disagreement with the run rows."""
    rows = run_rows(engine)
    names = task_names(engine)
    server.refresh_now()
    assert server.state.up, f"{phase}: the exporter could not read the database"
    samples = scrape(server)
    # The database is quiet during a comparison: the rows read before the scrape are still
    # the rows now (a changed read would be a bug of this test, not of the exporter).
    assert run_rows(engine) == rows, f"{phase}: the run rows changed during the comparison"

    served = {dict(labels)["task"] for name, labels in samples if name == "scheduler_task_info"}
    if served != set(names):
        mismatches.append(
            f"[{phase}] tasks: expected {sorted(names)}, /metrics serves {sorted(served)}"
        )
    by_task: dict[str, list[sa.Row]] = defaultdict(list)
    for r in rows:
        by_task[r.task_name].append(r)
    expectations: dict[str, Expected] = {}
    for task in names:
        exp = expectations[task] = expected_from_rows(by_task.get(task, []))

        def check(
            metric: str,
            expected: Any,
            *,
            labels: dict[str, str] | None = None,
            exact: bool = False,
            task: str = task,
        ) -> None:
            labels = labels or {}
            actual = sample(samples, metric, task=task, **labels)
            want = expected.timestamp() if isinstance(expected, datetime) else expected
            if want is None or actual is None:
                ok = want is None and actual is None
            elif exact:
                ok = float(want) == actual
            else:
                ok = abs(float(want) - actual) <= TOLERANCE
            if not ok:
                shown = "".join(f",{k}={v}" for k, v in labels.items())
                mismatches.append(
                    f"[{phase}] task={task} metric={metric}{{{shown.lstrip(',')}}}: "
                    f"expected {fmt(expected)} (run rows), actual {fmt(actual)} (/metrics)"
                )

        for outcome in OUTCOMES:
            check(
                "scheduler_task_runs_total",
                float(exp.runs_total[outcome]),
                labels={"outcome": outcome},
                exact=True,
            )
        check("scheduler_task_last_start_timestamp_seconds", exp.last_start)
        check("scheduler_task_last_finish_timestamp_seconds", exp.last_finish)
        check("scheduler_task_last_success_timestamp_seconds", exp.last_success)
        check("scheduler_task_last_duration_seconds", exp.last_duration)
        for status in OUTCOMES:
            check(
                "scheduler_task_last_status",
                1.0 if exp.last_status == status else 0.0,
                labels={"status": status},
                exact=True,
            )
        check("scheduler_task_consecutive_failures", float(exp.consecutive_failures), exact=True)
        check("scheduler_task_running", float(exp.running), exact=True)
    compare_badges(phase, engine, server, mismatches)
    return expectations


def compare_badges(
    phase: str, engine: sa.Engine, server: ExporterServer, mismatches: list[str]
) -> None:
    """The badge of every task: `schedctl tasks list --json` against /api/v1/status."""
    url = engine.url.render_as_string(hide_password=False)
    result = subprocess.run(
        [*SCHEDCTL, "tasks", "list", "--json", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{phase}: schedctl tasks list failed:\n{result.stderr}"
    cli = {t["name"]: t for t in json.loads(result.stdout)}
    api = {t["name"]: t for t in json.loads(http_get(f"{server.url}/api/v1/status"))["tasks"]}
    if set(cli) != set(api):
        mismatches.append(
            f"[{phase}] tasks: CLI lists {sorted(cli)}, /api/v1/status lists {sorted(api)}"
        )
    for name in sorted(set(cli) & set(api)):
        cli_badge = cli[name].get("badge", "<no badge key in `schedctl tasks list --json`>")
        if cli_badge != api[name]["badge"]:
            mismatches.append(
                f"[{phase}] task={name} badge: CLI `tasks list --json` says {cli_badge!r}, "
                f"/api/v1/status says {api[name]['badge']!r}"
            )


# ------------------------------------------------------------------ driving the schedulers
def drive(
    schedulers: Sequence[Scheduler],
    until: Callable[[], bool],
    *,
    what: str,
    engine: sa.Engine,
    timeout: float = 30.0,
) -> None:
    """Step the schedulers (alternating who goes first) until ``until()``; bounded."""
    deadline = time.monotonic() + timeout
    turn = 0
    while True:
        order = schedulers if turn % 2 == 0 else list(reversed(schedulers))
        for scheduler in order:
            scheduler.step()
        if until():
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; runs:\n"
                f"{describe(run_rows(engine))}"
            )
        turn += 1
        time.sleep(0.02)


def new_scheduler(
    engine: sa.Engine, clock: JumpClock, instance_id: str, **overrides: Any
) -> Scheduler:
    settings = EngineSettings(
        instance_id=instance_id,
        health_listen=None,
        drain_grace=2,
        kill_grace=1,
        heartbeat_interval=0.2,
        max_running=4,
        claim_ahead=1,
        **overrides,
    )
    scheduler = Scheduler(engine=engine, settings=settings, clock=clock)
    scheduler.start()
    return scheduler


@pytest.fixture
def fresh_actions() -> Iterator[None]:
    global _release
    _release = threading.Event()
    with _lock:
        _scripts.clear()
        _scripts["mixed"] = ["ok", "fail", "fail"]
        _scripts["retry-recovers"] = ["fail", "ok"] * ROUNDS
        _scripts[ABANDONED] = ["ok", "hold"]
    yield
    _release.set()


def test_metrics_equal_the_run_rows(db_engine: sa.Engine, fresh_actions: None) -> None:
    """Two instances share a mixed workload (and a third dies mid-run); with the database
    quiet, and once with a run in flight, every per-task gauge and counter of /metrics
    equals what the run rows say, and the CLI's badge equals the JSON API's."""
    engine = db_engine
    began = time.monotonic()
    start = datetime.now(UTC).replace(microsecond=0)
    clock = JumpClock(start)
    Store(engine, instance_id="setup").sync_tasks(task_document(start), now=clock.now())
    admin = Store(engine, instance_id="admin")
    # Long leases for the survivors: the clock jumps an hour at a time, and the survivors must
    # never see each other as dead. The victim's lease is short.
    a = new_scheduler(engine, clock, "inst-a", instance_lease=6 * HOUR)
    b = new_scheduler(engine, clock, "inst-b", instance_lease=6 * HOUR)
    victim = new_scheduler(engine, clock, "inst-victim", instance_lease=3.0)
    server = ExporterServer(
        settings=ExporterSettings(refresh_interval=3600.0),
        listen="127.0.0.1:0",
        database_url=engine.url.render_as_string(hide_password=False),
        background_refresh=False,
    ).start()
    mismatches: list[str] = []
    try:

        def rows_of(task: str) -> list[sa.Row]:
            return [r for r in run_rows(engine) if r.task_name == task]

        # A manual run of the one-time task succeeds first, so that /metrics has an earlier
        # finished run of it to show.
        admin.run_now(ABANDONED, now=clock.now(), by="test")
        drive(
            [a],
            lambda: [r.status for r in rows_of(ABANDONED)] == ["success"],
            what="the manual run",
            engine=engine,
        )
        # The victim runs the one-time task and lives long enough (over a second) for its
        # start to reach its health row; then it dies: it is never stepped or drained again.
        clock.jump_to(start + timedelta(minutes=30))

        def victim_started() -> bool:
            with engine.connect() as conn:
                written = conn.execute(
                    sa.text(
                        "SELECT last_started_at FROM scheduler_task_health "
                        "WHERE task_name = :t AND instance_id = 'inst-victim'"
                    ),
                    {"t": ABANDONED},
                ).scalar()
            return written is not None

        drive([victim], victim_started, what="the victim's start", engine=engine)
        assert [r.status for r in rows_of(ABANDONED)] == ["success", "running"]

        cancelled_run: dict[int, int] = {}

        for k in range(1, ROUNDS + 1):
            due = tick(start, k)
            # Past the tick (and, at the first round, past the victim's lease: the first
            # survivor heartbeat reaps its run).
            clock.jump_to(due)
            order = [a, b] if k % 2 else [b, a]

            def round_done(due: datetime = due) -> bool:
                rows = run_rows(engine)
                this_tick = [r for r in rows if r.scheduled_for == due]
                if any(r.status == "running" for r in rows if r.task_name in REGULAR):
                    return False
                retries = pending_retries(engine)
                if retries:
                    clock.jump_to(max(retries))
                    return False
                have = {r.task_name for r in this_tick}
                return have >= {*REGULAR, CANCELLED}

            drive(order, round_done, what=f"round {k}", engine=engine)

            if k == 2:
                # The cancelled task's first run is still going (its tick of this round was
                # skipped): a moment with a run in flight, the database otherwise quiet.
                statuses = Counter(r.status for r in rows_of(CANCELLED))
                assert statuses == {"running": 1, "skipped": 1}, describe(rows_of(CANCELLED))
                compare("in flight", engine, server, mismatches)
            # Cancel the cancelled task's run (rounds 2 and 3: its first run, then its third).
            if k >= 2:
                (running,) = [r for r in rows_of(CANCELLED) if r.status == "running"]
                assert (
                    admin.request_cancel(running.id, reason="ops said so", now=clock.now())
                    == "running"
                )
                cancelled_run[k] = running.id

                def cancelled(run_id: int = running.id) -> bool:
                    return next(r for r in run_rows(engine) if r.id == run_id).status != "running"

                drive(order, cancelled, what=f"the cancel of run {running.id}", engine=engine)

        for scheduler in (a, b):
            scheduler.request_stop()
            scheduler.drain()

        rows = run_rows(engine)
        # The scenario happened as designed (these are the test's preconditions).
        assert not [r for r in rows if r.status == "running"], describe(rows)
        assert {r.status for r in rows} >= set(OUTCOMES), describe(rows)
        assert {r.instance_id for r in rows if r.status in EXECUTED} == {
            "inst-a",
            "inst-b",
            "inst-victim",
        }, describe(rows)
        assert [(r.trigger, r.status) for r in rows_of(ABANDONED)] == [
            ("manual", "success"),
            ("schedule", "abandoned"),
        ], describe(rows_of(ABANDONED))
        assert [r.status for r in rows_of(CANCELLED)] == [
            "cancelled",
            "skipped",
            "cancelled",
        ], describe(rows_of(CANCELLED))
        assert [(r.attempt, r.status) for r in rows_of("retry-recovers")] == [
            (1, "failure"),
            (2, "success"),
        ] * ROUNDS, describe(rows_of("retry-recovers"))
        assert [(r.attempt, r.status) for r in rows_of("retry-fails")] == [
            (1, "failure"),
            (2, "failure"),
        ] * ROUNDS, describe(rows_of("retry-fails"))
        assert [r.status for r in rows_of("mixed")] == ["success", "failure", "failure"]
        assert {r.status for r in rows_of("timeout-cmd")} == {"timeout"}
        assert {r.status for r in rows_of("timeout-async")} == {"timeout"}
        durations = [r.duration_seconds for r in rows_of("quick") + rows_of("long")]
        assert min(durations) < 1.0 < max(durations), durations
        # "The latest finished run" is well defined: no task finished two runs at one instant.
        for task in {r.task_name for r in rows}:
            ends = [r.finished_at for r in rows_of(task) if r.status in EXECUTED]
            assert len(ends) == len(set(ends)), describe(rows_of(task))

        expectations = compare("quiet", engine, server, mismatches)
        assert expectations["fails"].consecutive_failures == ROUNDS
        assert expectations["retry-fails"].consecutive_failures == ROUNDS
        assert expectations["mixed"].consecutive_failures == 2
        assert expectations["retry-recovers"].consecutive_failures == 0
    finally:
        _release.set()
        server.stop()
        for scheduler in (a, b, victim):
            scheduler.request_stop()
            scheduler.drain()
    elapsed = time.monotonic() - began
    assert not mismatches, (
        f"{len(mismatches)} disagreement(s) between /metrics (or the CLI) and the run rows "
        f"({engine.dialect.name}, {elapsed:.1f}s):\n" + "\n".join(mismatches)
    )
