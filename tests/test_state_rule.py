"""One table of cases for the task state rule, checked against every form of it.

Each case is a task's inputs (enabled, paused, runs in flight and their ages, max_runtime,
next run, consecutive failures, last status) and the badge it must get:

(a) ``scheduler_core.states.assess`` directly;
(b) the exporter: the case is written as rows into a SQLite database (tests/exporter/factories),
    read by ``scheduler_core.store.snapshot.read_snapshot`` and ``Store.list_tasks`` (``schedctl tasks list``);
(c) the dashboards: the samples ``exporter.catalog.task_samples`` renders from those snapshots
    (the exporter's own code, not hand-written series, two exporter replicas each) are the
    input series of a ``promtool test rules`` file whose recording rule is
    ``dashboards.build.status_expr()``; the expected samples are the badge of each case.

Times are relative to ``NOW``, one day after the Unix epoch, because promtool evaluates from
t=0: ``time()`` at ``eval_time: 1d`` is NOW.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from dashboards import build
from exporter.catalog import TASK_METRICS, task_samples
from scheduler_core import models, states
from scheduler_core.db import create_db_engine
from scheduler_core.store import Store
from scheduler_core.store.snapshot import TaskSnapshot, read_snapshot
from tests.exporter.factories import health_row, insert, run_row, schedule_row

NOW = datetime(1970, 1, 2, tzinfo=UTC)
GRACE = states.LATE_GRACE_SECONDS
#: Metrics the state rule reads (the promtool input is limited to them to stay small).
RULE_METRICS = (
    "scheduler_task_info",
    "scheduler_task_enabled",
    "scheduler_task_paused",
    "scheduler_task_stuck",
    "scheduler_task_running",
    "scheduler_task_consecutive_failures",
    "scheduler_task_last_status",
    "scheduler_task_next_run_timestamp_seconds",
)
REPLICAS = (("10.0.0.1:9464", "schedctl-0"), ("10.0.0.2:9464", "schedctl-1"))


@dataclass(frozen=True)
class Case:
    """A task's state inputs; times are seconds relative to NOW."""

    name: str
    expected: states.Badge
    enabled: bool = True
    paused: bool = False
    #: How long ago each run in flight started.
    running_ages: tuple[float, ...] = ()
    max_runtime: float | None = None
    #: Seconds from NOW to the next tick (negative: overdue); None: no next tick.
    next_run_in: float | None = 300.0
    consecutive_failures: int = 0
    last_status: str | None = None

    @property
    def next_run_at(self) -> datetime | None:
        return None if self.next_run_in is None else NOW + timedelta(seconds=self.next_run_in)

    @property
    def starts(self) -> tuple[datetime, ...]:
        return tuple(NOW - timedelta(seconds=age) for age in self.running_ages)


CASES = [
    Case("ok", "ok", last_status="success"),
    Case("never-run", "ok"),
    Case("no-next-run", "ok", next_run_in=None, last_status="success"),
    Case("disabled", "disabled", enabled=False, next_run_in=None),
    Case("disabled-and-paused", "disabled", enabled=False, paused=True),
    Case("disabled-and-late", "disabled", enabled=False, next_run_in=-3600),
    Case("disabled-and-failing", "disabled", enabled=False, consecutive_failures=3,
         last_status="failure"),
    Case("paused", "paused", paused=True),
    Case("paused-and-stuck", "paused", paused=True, running_ages=(600,), max_runtime=60),
    Case("paused-and-late", "paused", paused=True, next_run_in=-3600),
    Case("paused-and-failing", "paused", paused=True, consecutive_failures=1,
         last_status="timeout"),
    Case("stuck", "stuck", running_ages=(120,), max_runtime=60),
    Case("stuck-one-of-two-runs", "stuck", running_ages=(10, 120), max_runtime=60),
    Case("stuck-and-failing", "stuck", running_ages=(120,), max_runtime=60,
         consecutive_failures=2, last_status="failure"),
    Case("stuck-and-late", "stuck", running_ages=(7200,), max_runtime=60, next_run_in=-3600),
    Case("running", "running", running_ages=(30,), max_runtime=3600),
    Case("running-two-runs", "running", running_ages=(10, 20)),
    Case("running-max-runtime-unset", "running", running_ages=(86000,), max_runtime=None),
    Case("running-exactly-max-runtime", "running", running_ages=(60,), max_runtime=60),
    Case("running-and-failing", "running", running_ages=(10,), consecutive_failures=2,
         last_status="failure"),
    Case("running-and-late", "running", running_ages=(10,), next_run_in=-3600),
    Case("failing", "failing", consecutive_failures=2, last_status="failure"),
    Case("failing-timeout", "failing", consecutive_failures=1, last_status="timeout"),
    Case("failing-and-late", "failing", consecutive_failures=1, last_status="failure",
         next_run_in=-3600),
    # Failures counted, but the last finished run succeeded (a retry of an older tick pending).
    Case("failures-but-last-success", "ok", consecutive_failures=1, last_status="success"),
    Case("failures-but-last-success-late", "late", consecutive_failures=1,
         last_status="success", next_run_in=-3600),
    Case("failures-but-last-cancelled", "ok", consecutive_failures=1, last_status="cancelled"),
    Case("failed-but-no-failures-counted", "ok", last_status="failure"),
    Case("late", "late", next_run_in=-600, last_status="success"),
    Case("late-exactly-at-grace", "ok", next_run_in=-GRACE),
    Case("late-just-past-grace", "late", next_run_in=-GRACE - 1),
]  # fmt: skip


def test_cases_cover_every_badge() -> None:
    assert {case.expected for case in CASES} == set(states.BADGES)
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_rule(case: Case) -> None:
    """(a) The rule itself."""
    assert (
        states.assess(
            now=NOW,
            enabled=case.enabled,
            paused=case.paused,
            running_starts=case.starts,
            max_runtime_seconds=case.max_runtime,
            next_run_at=case.next_run_at,
            consecutive_failures=case.consecutive_failures,
            last_status=case.last_status,
        ).badge
        == case.expected
    )


def test_late_guards_are_implied_by_precedence() -> None:
    """is_late's own conditions (enabled, not paused, not running) never change a badge: the
    badges before ``late`` cover them, so the PromQL late condition can leave them out."""
    for enabled, paused, stuck, running, failing, overdue in itertools.product(
        (True, False), (True, False), (True, False), (0, 1), (True, False), (True, False)
    ):
        if stuck and not running:
            continue  # stuck needs a run in flight
        flags = {"enabled": enabled, "paused": paused, "stuck": stuck, "running": running}
        guarded = overdue and enabled and not paused and running == 0
        assert states.badge_of(**flags, failing=failing, late=overdue) == states.badge_of(
            **flags, failing=failing, late=guarded
        )


# --- (b) the exporter and the CLI read the same case from SQL --------------------------------


def _rows(case: Case) -> tuple[dict, list[dict], list[dict]]:
    schedule = schedule_row(
        case.name,
        now=NOW,
        enabled=case.enabled,
        paused=case.paused,
        next_run_at=case.next_run_at,
        due_at=case.next_run_at if case.enabled and not case.paused else None,
        consecutive_failures=case.consecutive_failures,
        max_runtime_seconds=case.max_runtime,
    )
    health = []
    if case.last_status is not None or case.running_ages:
        health.append(
            health_row(
                case.name,
                "node-a:1",
                now=NOW,
                is_running=bool(case.running_ages),
                last_status=case.last_status,
                last_finished_at=NOW - timedelta(minutes=1) if case.last_status else None,
                consecutive_failures=case.consecutive_failures,
                max_runtime_seconds=case.max_runtime,
            )
        )
    runs = [
        run_row(
            case.name,
            scheduled_for=started - timedelta(seconds=1),
            status="running",
            started_at=started,
            finished_at=None,
            duration_seconds=None,
        )
        for started in case.starts
    ]
    return schedule, health, runs


@pytest.fixture(scope="module")
def case_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """Every case as rows of one SQLite database."""
    from scheduler_core.db import upgrade_schema

    url = f"sqlite:///{tmp_path_factory.mktemp('state-rule') / 'schedctl.db'}"
    engine = create_db_engine(url)
    upgrade_schema(engine)
    rows = [_rows(case) for case in CASES]
    insert(engine, models.schedules, [schedule for schedule, _, _ in rows])
    insert(engine, models.task_health, [h for _, health, _ in rows for h in health])
    insert(engine, models.task_runs, [r for _, _, runs in rows for r in runs])
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def snapshots(case_db: sa.Engine) -> dict[str, TaskSnapshot]:
    return dict(read_snapshot(case_db, NOW).tasks_by_name)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_exporter_and_cli(
    case: Case, case_db: sa.Engine, snapshots: dict[str, TaskSnapshot]
) -> None:
    """(b) ``/api/v1/status`` (the snapshot) and ``schedctl tasks list`` (Store.list_tasks)."""
    assert snapshots[case.name].badge == case.expected
    listed = {t["name"]: t for t in Store(case_db).list_tasks(now=NOW)}
    assert listed[case.name]["badge"] == case.expected


# --- (c) the dashboards' PromQL, evaluated by promtool ---------------------------------------


def _labels(labels: tuple[tuple[str, str], ...], instance: str, pod: str) -> str:
    pairs = [*labels, ("job", "schedctl"), ("instance", instance), ("pod", pod)]
    return "{" + ", ".join(f'{name}="{value}"' for name, value in pairs) + "}"


def _input_series(tasks: list[TaskSnapshot]) -> list[dict[str, str]]:
    """The exporter's samples of ``tasks`` as promtool input series, constant over a day
    (one sample an hour), from two exporter replicas."""
    assert set(RULE_METRICS) <= set(TASK_METRICS)
    series = []
    for task in tasks:
        samples = task_samples(task)
        for metric in RULE_METRICS:
            for name, labels, value in samples[metric]:
                for instance, pod in REPLICAS:
                    series.append(
                        {"series": name + _labels(labels, instance, pod), "values": f"{value!r}x24"}
                    )
    return series


@pytest.mark.prometheus
def test_dashboard_promql(tmp_path: Path, snapshots: dict[str, TaskSnapshot]) -> None:
    """(c) ``status_expr()`` gives each case's task exactly one series, its badge."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is required (Debian: prometheus)")
    record = "schedctl_test:task_badge"
    rules = {
        "groups": [
            {"name": "state-rule", "rules": [{"record": record, "expr": build.status_expr()}]}
        ]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1h",
        "tests": [
            {
                "interval": "1h",
                "input_series": _input_series([snapshots[case.name] for case in CASES]),
                "promql_expr_test": [
                    {
                        # One sample per task: count by (task, state) is 1 for each.
                        "expr": f"count by (task, state) ({record})",
                        "eval_time": "1d",
                        "exp_samples": [
                            {
                                "labels": f'{{task="{case.name}", state="{case.expected}"}}',
                                "value": 1,
                            }
                            for case in CASES
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "state_rule_test.yml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", "state_rule_test.yml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
