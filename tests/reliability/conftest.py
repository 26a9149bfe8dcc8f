"""Helpers for the reliability suite: real scheduler processes, tick accounting, figures.

Figures measured by the tests (duplicates, lost ticks, recovery times, RSS) are collected in
``FIGURES``, printed at the end of the run and, when ``SCHEDCTL_RELIABILITY_REPORT`` names a
file, written there as JSON (docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler_core.config import parse_task_document
from scheduler_core.db import create_db_engine
from scheduler_core.models import task_runs
from scheduler_core.store import Store
from scheduler_core.testing import FakeClock, run_cycle, running_scheduler

SCHEDCTL = [sys.executable, "-m", "scheduler_core.cli"]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# Text that tends to break naive code: quotes, newlines, unicode, SQL, format strings.
NASTY = [
    'it\'s "quoted"',
    "line one\nline two\r\n",
    "Ünïcödé ✓ 日本語 🚀",
    "'; DROP TABLE scheduler_task_runs; --",
    "Robert'); DELETE FROM scheduler_schedules WHERE ('1'='1",
    "%s %d {0} {name} \\x00 \\",
    'label"} 1\nfake_metric{a="b',
    "\t\u200b\u202e zero-width and bidi",
]
ODD_NAMES = [n.replace("\n", " ").replace("\r", " ").strip() for n in NASTY]
FIGURES: dict[str, dict[str, Any]] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name, values in FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(values, default=str)}")
    target = os.environ.get("SCHEDCTL_RELIABILITY_REPORT")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2, default=str) + "\n")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A dict of measured figures for this test, reported at the end of the session."""
    return FIGURES.setdefault(request.node.name, {})


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """``cli.main`` reconfigures the root logger; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


# ------------------------------------------------------------------ scheduler processes
@dataclass
class SchedulerProcess:
    """One real ``schedctl scheduler`` process whose output goes to a file."""

    instance_id: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    lives: int = 0

    def start(self) -> SchedulerProcess:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        self.lives += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a drain), SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process cannot drain
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kib(self) -> int:
        """Resident set size from /proc (KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (not its children)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def scheduler_processes(tmp_path: Path) -> Iterator[Callable[..., SchedulerProcess]]:
    """Start ``schedctl scheduler`` processes; every one is stopped at teardown."""
    made: list[SchedulerProcess] = []

    def make(
        config: Path,
        url: str,
        instance_id: str,
        *extra: str,
        log_level: str = "WARNING",
        env: dict[str, str] | None = None,
    ) -> SchedulerProcess:
        argv = [
            *SCHEDCTL, "scheduler", "--config", str(config), "--database-url", url,
            "--instance-id", instance_id, "--health-listen", "off", "--poll-interval", "200ms",
            "--log-level", log_level, *extra,
        ]  # fmt: skip
        process = SchedulerProcess(
            instance_id=instance_id,
            argv=argv,
            log_path=tmp_path / f"{instance_id}.log",
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        made.append(process)
        return process.start()

    try:
        yield make
    finally:
        for process in made:
            process.stop()


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s")
        time.sleep(interval)


def write_config(path: Path, tasks: list[str], defaults: str = "") -> Path:
    path.write_text((f"defaults: {defaults}\n" if defaults else "") + "tasks:\n" + "".join(
        f"  - {t}\n" for t in tasks
    ))  # fmt: skip
    return path


def fetch_runs(url_or_engine: str | sa.Engine) -> list[sa.Row]:
    engine = create_db_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(task_runs).order_by(task_runs.c.id)))
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


# ------------------------------------------------------------------ tick accounting
@dataclass
class TickAccount:
    """How the ticks of interval tasks were covered by run rows and missed spans."""

    ticks: int = 0
    duplicates: list[tuple[str, datetime]] = field(default_factory=list)
    lost: list[tuple[str, datetime]] = field(default_factory=list)
    #: Ticks that are not on the task's grid: a planning bug either way.
    off_grid: list[tuple[str, datetime]] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    missed: int = 0

    def as_figures(self) -> dict[str, Any]:
        return {
            "ticks": self.ticks,
            "duplicates": len(self.duplicates),
            "lost": len(self.lost),
            "missed_by_policy": self.missed,
            "statuses": dict(self.statuses),
        }


def account_ticks(rows: list[sa.Row], interval: timedelta, tasks: set[str]) -> TickAccount:
    """Every tick between a task's first and last recorded one must appear exactly once:
    as a run row (any status) or inside a ``missed`` row's span."""
    account = TickAccount()
    covered: dict[str, Counter[datetime]] = defaultdict(Counter)
    for r in rows:
        if r.task_name not in tasks or r.attempt != 1 or r.trigger not in (None, "schedule"):
            continue
        account.statuses[r.status] += 1
        if r.status == "missed":
            account.missed += r.missed_count
            tick = r.missed_first_at
            for _ in range(r.missed_count):
                covered[r.task_name][tick] += 1
                tick += interval
            assert tick - interval == r.missed_last_at, f"missed span of {r.task_name} is not whole"
        else:
            covered[r.task_name][r.scheduled_for] += 1
    for name in tasks:
        seen = covered.get(name)
        if not seen:
            account.lost.append((name, datetime.min))
            continue
        tick, last = min(seen), max(seen)
        while tick <= last:
            count = seen.get(tick, 0)
            account.ticks += 1
            if count == 0:
                account.lost.append((name, tick))
            elif count > 1:
                account.duplicates.append((name, tick))
            tick += interval
        first = min(seen)
        account.off_grid.extend((name, t) for t in seen if (t - first) % interval)
    return account


# ------------------------------------------------------------------ exporter
@pytest.fixture(scope="module")
def exporter_with_odd_tasks(tmp_path_factory) -> Iterator[str]:
    """An exporter over a SQLite database whose tasks have odd names and failed once."""
    from exporter.server import ExporterServer
    from exporter.settings import ExporterSettings
    from scheduler_core.db import upgrade_schema

    url = f"sqlite:///{tmp_path_factory.mktemp('exp') / 'schedctl.db'}"
    engine = create_db_engine(url)
    upgrade_schema(engine)
    clock = FakeClock(T0)
    tasks = [
        {"name": n, "callable": "tests.reliability.jobs:fail_with", "args": [m], "every": "1h"}
        for n, m in zip(ODD_NAMES, NASTY, strict=True)
    ]
    Store(engine).sync_tasks(parse_task_document({"tasks": tasks}, source="t"), now=clock.now())
    clock.advance(3600)
    with running_scheduler(engine, clock, instance_id="odd") as scheduler:
        run_cycle(scheduler)
    engine.dispose()
    server = ExporterServer(settings=ExporterSettings(port=0), database_url=url).start()
    try:
        server.refresh_now()
        yield server.url
    finally:
        server.stop()
