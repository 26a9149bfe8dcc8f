"""What every benchmark shares: databases, statistics, process sampling and run-table checks."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from scheduler_core.config import parse_task_document
from scheduler_core.db import create_db_engine, upgrade_schema
from scheduler_core.models import schedules, task_runs
from scheduler_core.store import Store
from scheduler_core.tasks import TaskDefinition
from scheduler_core.telemetry import TelemetryWriter

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_DB = "bench_template"


# ---------------------------------------------------------------------- statistics
def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p99/max (and count) of durations given in seconds, reported in milliseconds."""

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "count": len(seconds),
        "p50_ms": ms(percentile(seconds, 0.50)),
        "p99_ms": ms(percentile(seconds, 0.99)),
        "max_ms": ms(max(seconds) if seconds else None),
    }


# ---------------------------------------------------------------------- machine
def load_average() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def machine_info(pg_version: str | None) -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": model,
        "python": platform.python_version(),
        "postgresql": pg_version,
        "kernel": platform.release(),
    }


# ---------------------------------------------------------------------- processes
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def thread_cpu_seconds(pid: int, *, main_role: str = "main (loop)") -> dict[str, float]:
    """CPU seconds so far of a process's threads, summed by role: its OS thread names
    (``schedctl-run_N`` workers, ``schedctl-async``, see
    ``scheduler_core.runtime.runners.name_os_thread``) with the number dropped; the main
    thread is ``main_role`` (in ``bench.runner`` it runs the scheduler loop)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        role = main_role if tid == str(pid) else name.rstrip("0123456789").rstrip("_")
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return out


_CPU_STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_cpu_ticks() -> list[int]:
    """The machine's CPU time so far by state (the ``cpu`` line of /proc/stat)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1 : 1 + len(_CPU_STATES)]]


def machine_cpu_percent(before: Sequence[int], after: Sequence[int]) -> dict[str, float]:
    """How the machine's CPUs spent the time between two :func:`machine_cpu_ticks`, in
    percent; ``steal`` is time the hypervisor gave to other guests (a noisy neighbour)."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent) or 1
    return {state: round(100 * t / total, 1) for state, t in zip(_CPU_STATES, spent, strict=True)}


def rss_mib(pid: int) -> dict[str, float]:
    """Current and peak resident set size of a process, in MiB."""
    out = {"rss_mib": 0.0, "peak_rss_mib": 0.0}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_mib"] = round(int(line.split()[1]) / 1024, 1)
            elif line.startswith("VmHWM:"):
                out["peak_rss_mib"] = round(int(line.split()[1]) / 1024, 1)
    return out


def children_cpu_seconds(parent_pid: int) -> float:
    """CPU seconds of the direct children of ``parent_pid`` (PostgreSQL backends): the live
    ones, plus those that exited (autovacuum workers, closed connections), which the
    parent's ``cutime``/``cstime`` count once it has reaped them."""
    total = 0.0
    try:
        with open(f"/proc/{parent_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[13]) + int(fields[14])) / _TICK
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        pass
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent_pid:
                total += (int(fields[11]) + int(fields[12])) / _TICK
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total


# ---------------------------------------------------------------------- databases
class Databases:
    """One throwaway PostgreSQL server plus SQLite files, each benchmark on a fresh database."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="schedctl-bench-"))
        self.pg: Any = None
        self._sqlite_counter = 0
        self._owns_pg = False
        self.pg_version: str | None = None

    def start(self) -> Databases:
        """Start a throwaway PostgreSQL server of our own."""
        sys.path.insert(0, str(REPO))
        from tests.support.pgserver import PostgresServer

        self._owns_pg = True
        return self.attach(PostgresServer().start())

    def attach(self, server: Any) -> Databases:
        """Use a running ``PostgresServer`` (the test session's); ``stop()`` leaves it running."""
        self.pg = server
        with self.pg.admin() as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE_DB,)
            ).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {TEMPLATE_DB} OWNER schedctl")
            row = conn.execute("SHOW server_version").fetchone()
            self.pg_version = str(row[0]) if row else None
        if not exists:
            engine = create_db_engine(self.pg.url(TEMPLATE_DB))
            upgrade_schema(engine)
            engine.dispose()
        return self

    def stop(self) -> None:
        if self.pg is not None and self._owns_pg:
            self.pg.stop()
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def postmaster_pid(self) -> int | None:
        pidfile = self.pg.datadir / "postmaster.pid" if self.pg is not None else None
        if pidfile is None or not pidfile.exists():
            return None
        return int(pidfile.read_text().split()[0])

    def new(self, backend: str, *, migrated: bool = True) -> str:
        """A fresh database URL on ``backend`` ('postgresql' or 'sqlite')."""
        if backend == "postgresql":
            name = self.pg.create_database(template=TEMPLATE_DB if migrated else None)
            return str(self.pg.url(name))
        self._sqlite_counter += 1
        url = f"sqlite:///{self.tmp / f'bench{self._sqlite_counter}.db'}"
        if migrated:
            engine = create_db_engine(url)
            upgrade_schema(engine)
            engine.dispose()
        return url

    def drop(self, url: str) -> None:
        if url.startswith("postgresql"):
            self.pg.drop_database(url.rsplit("/", 1)[1])
        else:
            path = Path(url.removeprefix("sqlite:///"))
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(path) + suffix).unlink(missing_ok=True)


def peer_url(url: str, *, driver: str) -> str:
    """The same database as ``url`` with another driver (a peer's choice)."""
    scheme, rest = url.split("://", 1)
    base = "postgresql" if scheme.startswith("postgres") else "sqlite"
    return f"{base}+{driver}://{rest}"


def reader_engine(url: str) -> sa.Engine:
    """A plain engine for the benchmark's own reads: no BEGIN IMMEDIATE, so it never blocks
    the scheduler's writer on SQLite."""
    if url.startswith("sqlite"):
        return sa.create_engine(url)
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


# ---------------------------------------------------------------------- tasks
def one_shot_tasks(n: int, due: datetime, *, prefix: str = "burst") -> list[TaskDefinition]:
    """``n`` one-shot no-op tasks all due at ``due``; each records its own lateness."""
    due_epoch = due.timestamp()
    return parse_task_document(
        {
            "tasks": [
                {
                    "name": f"{prefix}-{i:06d}",
                    "callable": "bench.jobs:noop",
                    "kwargs": {"due": due_epoch},
                    "at": due.isoformat(),
                }
                for i in range(n)
            ]
        },
        source="bench",
    )


def interval_tasks(
    n: int,
    every: float,
    *,
    prefix: str = "steady",
    spread: bool = True,
    callable_ref: str = "bench.jobs:noop",
    fields: dict[str, Any] | None = None,
) -> list[TaskDefinition]:
    """``n`` tasks calling ``callable_ref`` (a no-op) ``every`` seconds, with more task-file
    ``fields`` if given; with ``spread`` their grids are offset evenly (an anchor per task),
    so the load is ``n / every`` runs per second, not one burst."""
    step = every / n
    return parse_task_document(
        {
            "tasks": [
                {
                    "name": f"{prefix}-{i:06d}",
                    "callable": callable_ref,
                    "every": f"{every:g}s",
                    **(fields or {}),
                    **(
                        {"anchor": datetime.fromtimestamp(i * step, UTC).isoformat()}
                        if spread
                        else {}
                    ),
                }
                for i in range(n)
            ]
        },
        source="bench",
    )


#: Tasks per ``sync_tasks`` call. One call builds all its rows in Python inside its
#: transaction, and 100,000 rows take longer than the engine's
#: idle_in_transaction_session_timeout (10 s) allows on PostgreSQL.
SYNC_CHUNK = 5_000


def sync(url: str, definitions: Sequence[TaskDefinition]) -> float:
    """Store ``definitions`` (in chunks, see SYNC_CHUNK); returns the seconds it took."""
    engine = create_db_engine(url)
    try:
        started = time.perf_counter()
        store = Store(engine, instance_id="bench-setup")
        for start in range(0, len(definitions), SYNC_CHUNK):
            store.sync_tasks(
                definitions[start : start + SYNC_CHUNK],
                now=datetime.now(UTC),
                disable_missing=False,
            )
        return time.perf_counter() - started
    finally:
        engine.dispose()


# ---------------------------------------------------------------------- checks
@dataclass
class RunTable:
    """What the run table holds for a set of tasks, and whether each tick ran exactly once."""

    rows: int
    by_status: dict[str, int]
    duplicate_ticks: int  # (task, scheduled_for, attempt) seen more than once
    tasks_not_exactly_once: int  # one-shot tasks with 0 or >1 rows
    start_delays: list[float] = field(repr=False)
    first_scheduled: datetime | None
    last_finished: datetime | None
    per_instance: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "by_status": self.by_status,
            "duplicate_ticks": self.duplicate_ticks,
            "tasks_not_exactly_once": self.tasks_not_exactly_once,
            "per_instance": self.per_instance,
        }


def read_runs(
    url: str,
    *,
    prefix: str,
    expected_tasks: int | None = None,
    scheduled_from: datetime | None = None,
    scheduled_until: datetime | None = None,
) -> RunTable:
    """Read the run rows of tasks named ``prefix-*`` (optionally in a scheduled window)."""
    engine = reader_engine(url)
    try:
        with engine.connect() as conn:
            stmt = sa.select(
                task_runs.c.task_name,
                task_runs.c.scheduled_for,
                task_runs.c.attempt,
                task_runs.c.status,
                task_runs.c.started_at,
                task_runs.c.finished_at,
                task_runs.c.instance_id,
            ).where(task_runs.c.task_name.like(f"{prefix}-%"))
            if scheduled_from is not None:
                stmt = stmt.where(task_runs.c.scheduled_for >= scheduled_from)
            if scheduled_until is not None:
                stmt = stmt.where(task_runs.c.scheduled_for < scheduled_until)
            rows = conn.execute(stmt).all()
    finally:
        engine.dispose()
    by_status: dict[str, int] = {}
    per_instance: dict[str, int] = {}
    ticks: dict[tuple[str, Any, int], int] = {}
    per_task: dict[str, int] = {}
    delays: list[float] = []
    first_scheduled: datetime | None = None
    last_finished: datetime | None = None
    for r in rows:
        by_status[r.status] = by_status.get(r.status, 0) + 1
        per_instance[r.instance_id] = per_instance.get(r.instance_id, 0) + 1
        key = (r.task_name, r.scheduled_for, r.attempt)
        ticks[key] = ticks.get(key, 0) + 1
        per_task[r.task_name] = per_task.get(r.task_name, 0) + 1
        scheduled = _aware(r.scheduled_for)
        if r.started_at is not None:
            delays.append((_aware(r.started_at) - scheduled).total_seconds())
        if first_scheduled is None or scheduled < first_scheduled:
            first_scheduled = scheduled
        if r.finished_at is not None:
            finished = _aware(r.finished_at)
            if last_finished is None or finished > last_finished:
                last_finished = finished
    not_once = 0
    if expected_tasks is not None:
        not_once = expected_tasks - sum(1 for c in per_task.values() if c == 1)
    return RunTable(
        rows=len(rows),
        by_status=by_status,
        duplicate_ticks=sum(1 for c in ticks.values() if c > 1),
        tasks_not_exactly_once=not_once,
        start_delays=delays,
        first_scheduled=first_scheduled,
        last_finished=last_finished,
        per_instance=per_instance,
    )


def count_finished(url: str, prefix: str) -> int:
    engine = reader_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM scheduler_task_runs "
                        "WHERE task_name LIKE :p AND status <> 'running'"
                    ),
                    {"p": f"{prefix}-%"},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition`` until true or ``timeout`` seconds pass; True when it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class CountQuery:
    """One counting query run again and again on one engine (cheap enough to poll at 50 Hz)."""

    def __init__(self, url: str, sql: str, params: dict[str, Any] | None = None) -> None:
        self._engine = reader_engine(url)
        self._sql = sa.text(sql)
        self._params = params or {}

    def __call__(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(self._sql, self._params).scalar_one())

    def close(self) -> None:
        self._engine.dispose()


class FinishedCounter(CountQuery):
    """Counts the finished run rows of tasks named ``prefix-*``."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(
            url,
            "SELECT count(*) FROM scheduler_task_runs "
            "WHERE task_name LIKE :p AND status <> 'running'",
            {"p": f"{prefix}-%"},
        )


class OverdueCounter(CountQuery):
    """Schedules more than a second overdue: the scheduler has not caught up yet."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "SELECT count(*) FROM scheduler_schedules WHERE due_at < :before")
        self._sql = self._sql.bindparams(sa.bindparam("before", type_=schedules.c.due_at.type))

    def __call__(self) -> int:
        self._params = {"before": datetime.now(UTC) - timedelta(seconds=1)}
        return super().__call__()


#: Longest wait for a start-up backlog to be worked off before a window opens anyway.
CATCH_UP_TIMEOUT = 120.0


def catch_up_after_start(url: str) -> dict[str, Any]:
    """Wait until a scheduler has worked off the ticks that fell due before it was ready
    (a restart's backlog): no schedule is more than a second overdue any more. Returns how
    many were overdue when it became ready and how long working them off took."""
    started = time.monotonic()
    overdue = OverdueCounter(url)
    try:
        backlog = overdue()
        caught_up = wait_until(lambda: overdue() == 0, timeout=CATCH_UP_TIMEOUT, interval=0.1)
    finally:
        overdue.close()
    return {
        "overdue_at_start": backlog,
        "caught_up": caught_up,
        "catch_up_s": round(time.monotonic() - started, 2),
    }


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---------------------------------------------------------------------- instrumentation
class NullTelemetry(TelemetryWriter):
    """Telemetry off: no health rows, no alarms (the run rows and counters are still written)."""

    def runs_started(self, runs: Any, *, now: datetime) -> None:
        return None

    def runs_finished(self, result: Any, definitions: Any, *, now: datetime) -> None:
        return None

    def check_stuck(self, *, now: datetime) -> set[str]:
        return set()


STORE_METHODS = (
    "claim_and_dispatch",  # on PostgreSQL the whole claim + dispatch; on SQLite it calls both
    "claim_due_schedules",
    "dispatch_claimed",
    "finalize_runs",
    "next_due_at",
)


def instrument_store(store: Store) -> dict[str, list[tuple[float, int]]]:
    """Time each call of the store's hot methods: name -> [(seconds, rows returned)]."""
    timings: dict[str, list[tuple[float, int]]] = {name: [] for name in STORE_METHODS}
    lock = threading.Lock()
    for name in STORE_METHODS:
        original = getattr(store, name)

        def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = _original(*args, **kwargs)
            elapsed = time.perf_counter() - started
            size = len(result) if isinstance(result, list) else 1
            if _name == "claim_and_dispatch":
                size = result[0]  # schedules claimed
            if _name == "finalize_runs":
                size = len(args[0]) if args else 0
            with lock:
                timings[_name].append((elapsed, size))
            return result

        setattr(store, name, timed)
    return timings


def summarize_timings(timings: dict[str, list[tuple[float, int]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, calls in timings.items():
        seconds = [c[0] for c in calls]
        summary = summarize_ms(seconds)
        summary["rows_total"] = sum(c[1] for c in calls)
        summary["total_ms"] = round(sum(seconds) * 1000, 1)
        out[name] = summary
    return out


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    started = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - started


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str, sort_keys=False)


def run_peer_script(
    python: Path, script: str, url: str, *, driver: str, args: Sequence[str], timeout: float
) -> dict[str, Any]:
    """Run ``bench/peers/<script> args`` with a peer's ``python`` on database ``url`` (given
    to it as ``BENCH_DB_URL`` with the peer's ``driver``); its JSON line, see ``run_json``."""
    return run_json(
        [str(python), str(REPO / "bench" / "peers" / script), *args],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BENCH_DB_URL": peer_url(url, driver=driver),
        },
        timeout=timeout,
    )


def run_json(cmd: list[str], *, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run a helper script that prints one JSON object as its last stdout line."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return last_json_line(proc.stdout, proc.stderr, proc.returncode)


def last_json_line(stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    """A helper script's result: its last stdout line that is a JSON object, or
    ``{"error": ...}`` with the end of its stderr when it failed or printed none."""
    lines = [ln for ln in stdout.splitlines() if ln.strip().startswith("{")]
    if returncode != 0 or not lines:
        return {"error": f"exit {returncode}: " + " | ".join(stderr.strip().splitlines()[-5:])}
    result: dict[str, Any] = json.loads(lines[-1])
    return result
