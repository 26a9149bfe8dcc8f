"""End to end on loopback: a real scheduler with a failing, a stuck and a late task, two exporter
replicas on its database, a real Prometheus loaded with (a time-shortened copy of) the shipped
rules, and a real Alertmanager with the example routing, paging a webhook served by this test.

One scenario runs for the whole module (faults, pages, recovery, resolution, shutdown); each
test then checks one promise of alerts/ and dashboards/ against what happened.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from dashboards.build import all_queries, substitute
from exporter.server import ExporterServer
from scheduler_core.alert_policy import MIN_RUNS_FOR_USUAL
from scheduler_core.config import parse_task_document
from scheduler_core.db import create_db_engine, upgrade_schema
from scheduler_core.models import TERMINAL_STATUSES, schedules
from scheduler_core.runtime import EngineSettings, Scheduler
from scheduler_core.store import Store
from scheduler_core.tasks import TaskDefinition, register_callable
from tests.e2e.configs import (
    RULES_FILE,
    alertmanager_config,
    parse_duration,
    shortened_rules,
    without_windows,
)
from tests.exporter.factories import exporter_replicas
from tests.support.prometheus import AlertmanagerServer, PrometheusServer, WebhookReceiver

# The timeout is a backstop: every wait below is bounded far more tightly.
pytestmark = [pytest.mark.prometheus, pytest.mark.slow, pytest.mark.timeout(240)]

FAILING = "e2e-failing"
STUCK = "e2e-stuck"
LATE = "e2e-late"
HEALTHY = "e2e-healthy"
#: Fails its one run and pages for it, at its own threshold (1) and with its own severity.
STRICT = "e2e-strict"
STRICT_ALERTS = {"failures": 1, "severity": "warning"}
#: Registered in-process: the stuck task's runs block on an event the test sets to recover.
HOLD_CALLABLE = "e2e-hold-until-released"
#: The alert each fault must raise, with the task it must name.
FAULT_ALERTS = {
    "SchedulerTaskFailing": FAILING,
    "SchedulerTaskStuck": STUCK,
    "SchedulerTaskLate": LATE,
}
#: Alerts about the scheduler fleet and the exporters: nothing in this scenario is wrong there.
INFRASTRUCTURE_ALERTS = {
    "SchedulerInstanceDown",
    "SchedulerNoInstances",
    "SchedulerExporterDown",
    "SchedulerExporterDatabaseUnreachable",
}
#: What Grafana would put in the panels' variables for this Prometheus (1 s scrapes).
RATE_INTERVAL = "10s"

PAGE_TIMEOUT = 60.0
RESOLVE_TIMEOUT = 60.0
CONVERGE_TIMEOUT = 30.0


def task_definitions(*, failing_command: str, strict_at: datetime) -> list[TaskDefinition]:
    return parse_task_document(
        {
            "tasks": [
                # max_runtime only so that the task dashboard's max_runtime line has a value.
                {
                    "name": FAILING,
                    "command": [failing_command],
                    "every": "1s",
                    "max_runtime": "30s",
                    # Only so that the dashboards' threshold columns and duration lines have
                    # values (slower than usual needs MIN_RUNS_FOR_USUAL runs first).
                    "alerts": {
                        "min_duration": "1ms",
                        "max_duration": "30s",
                        "slower_than_usual": 1000,
                    },
                },
                {
                    "name": STUCK,
                    "callable": HOLD_CALLABLE,
                    "every": "2s",
                    "max_runtime": "2s",
                    # Far from paging: only so that every threshold column has a value.
                    "alerts": {"late_after": "1h", "no_success_for": "1d"},
                },
                {"name": LATE, "callable": "os:getpid", "every": "1h"},
                # Every 1 s: through refresh + scrape + evaluation its last success looks older
                # than 2 intervals; the rules' no-success slack must keep it from paging.
                {"name": HEALTHY, "callable": "os:getpid", "every": "1s"},
                # One run, one failure: at the default threshold (3) it would never page.
                {
                    "name": STRICT,
                    "command": ["/bin/false"],
                    "at": strict_at.isoformat(),
                    "alerts": STRICT_ALERTS,
                },
            ]
        },
        source="e2e",
    )


def poll(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.25) -> bool:
    """Call ``predicate`` until it is true or ``timeout`` seconds passed; return the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------
# What reached the webhook


def notified_alerts(notifications: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every alert of every notification, with the notification's arrival time."""
    return [
        {**alert, "received_at": notification["received_at"]}
        for notification in notifications
        for alert in notification["alerts"]
    ]


def labelset(alert: dict[str, Any]) -> frozenset[tuple[str, str]]:
    return frozenset(alert["labels"].items())


def firing_labelsets(
    notifications: list[dict[str, Any]], alertname: str
) -> dict[str, set[frozenset[tuple[str, str]]]]:
    """{task: distinct label sets} of the firing ``alertname`` alerts across all notifications."""
    out: dict[str, set[frozenset[tuple[str, str]]]] = {}
    for alert in notified_alerts(notifications):
        if alert["status"] == "firing" and alert["labels"].get("alertname") == alertname:
            out.setdefault(alert["labels"].get("task", ""), set()).add(labelset(alert))
    return out


def firing_notification_count(notifications: list[dict[str, Any]], alertname: str) -> int:
    return sum(
        1
        for n in notifications
        if n["status"] == "firing" and n["groupLabels"].get("alertname") == alertname
    )


def resolved_after(
    notifications: list[dict[str, Any]], alertname: str, task: str, since: float
) -> list[dict[str, Any]]:
    return [
        alert
        for alert in notified_alerts(notifications)
        if alert["status"] == "resolved"
        and alert["labels"].get("alertname") == alertname
        and alert["labels"].get("task") == task
        and alert["received_at"] >= since
    ]


def template_pattern(template: str, task: str) -> re.Pattern[str]:
    """A regex matching ``template`` rendered for ``task``: `$labels.task` is the task name,
    any other `{{ ... }}` (a value, humanized) is some text."""
    parts = re.split(r"(\{\{.*?\}\})", template)
    regex = "".join(
        re.escape(task)
        if re.fullmatch(r"\{\{\s*\$labels\.task\s*\}\}", part)
        else ".+?"
        if part.startswith("{{")
        else re.escape(part)
        for part in parts
    )
    return re.compile(regex, re.DOTALL)


def default_severity(rule: dict[str, Any]) -> str:
    """The severity an alert rule gives a task whose alerts block sets none: its label, or the
    `else` branch of its label template."""
    label = str(rule["labels"]["severity"])
    match = re.search(r"\{\{\s*else\s*\}\}\s*(\w+)\s*\{\{\s*end\s*\}\}", label)
    return match.group(1) if match else label


def committed_alert_rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return {
        rule["alert"]: rule
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


# ----------------------------------------------------------------------------------------------
# The scenario


@dataclass
class RunningScheduler:
    """An in-process scheduler on its own thread, with the switch that unblocks the stuck task."""

    scheduler: Scheduler
    thread: threading.Thread
    release: threading.Event
    #: When the strict task's one run is due.
    strict_at: datetime

    def stop(self) -> None:
        self.release.set()
        self.scheduler.request_stop()
        self.thread.join(timeout=30)


@dataclass
class Scenario:
    """What the module's scenario did and saw; the servers stay up until the module ends."""

    prometheus: PrometheusServer
    alertmanager: AlertmanagerServer
    webhook: WebhookReceiver
    exporters: list[ExporterServer]
    database_url: str
    started_at: float
    #: When every fault had paged (and been re-notified once); None if that never happened.
    paged_at: float | None = None
    cleared_at: float | None = None
    resolved: bool = False
    stopped_cleanly: bool = False
    notes: list[str] = field(default_factory=list)

    def diagnostics(self) -> str:
        """Logs and state of every part, for failure messages."""
        sections = [f"scenario notes: {self.notes}"]
        try:
            prom_alerts = [
                (a["labels"].get("alertname"), a["labels"].get("task"), a["state"])
                for a in self.prometheus.alerts()
            ]
        except Exception as exc:  # diagnostics must not hide the real failure
            prom_alerts = [f"unavailable: {exc!r}"]
        try:
            am_alerts = [
                (a["labels"].get("alertname"), a["labels"].get("task"), a["status"]["state"])
                for a in self.alertmanager.alerts()
            ]
        except Exception as exc:
            am_alerts = [f"unavailable: {exc!r}"]
        sections.append(f"Prometheus alerts now: {prom_alerts}")
        sections.append(f"Alertmanager alerts now: {am_alerts}")
        summary = [
            {
                "at": round(n["received_at"] - self.started_at, 1),
                "receiver": n.get("receiver"),
                "status": n.get("status"),
                "alerts": [
                    (a["status"], a["labels"], a.get("fingerprint")) for a in n.get("alerts", [])
                ],
            }
            for n in self.webhook.notifications()
        ]
        sections.append("webhook payloads:\n" + json.dumps(summary, indent=1)[-6000:])
        sections.append("--- prometheus log ---\n" + self.prometheus.process.log_tail(30))
        sections.append("--- alertmanager log ---\n" + self.alertmanager.process.log_tail(30))
        return "\n".join(sections)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'schedctl.db'}"
    engine = create_db_engine(url)
    try:
        upgrade_schema(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="module")
def running_scheduler(database_url: str) -> Iterator[RunningScheduler]:
    """A real scheduler (real clock) running the four tasks; drained at the end."""
    release = threading.Event()

    def hold_until_released() -> None:
        # Bounded, so a test that dies early never leaves a worker thread behind for long.
        if not release.wait(timeout=120):
            raise TimeoutError("the e2e test never released the stuck task")

    register_callable(HOLD_CALLABLE, hold_until_released)
    engine = create_db_engine(database_url)
    running: RunningScheduler | None = None
    try:
        store = Store(engine, instance_id="e2e-setup")
        strict_at = datetime.now(UTC) + timedelta(seconds=2)
        store.sync_tasks(
            task_definitions(failing_command="/bin/false", strict_at=strict_at),
            now=datetime.now(UTC),
        )
        scheduler = Scheduler(
            engine=engine,
            settings=EngineSettings(
                instance_id="e2e-node",
                poll_interval=0.2,
                heartbeat_interval=1.0,
                drain_grace=5.0,
                kill_grace=1.0,
                health_listen=None,
            ),
        )
        scheduler.start()  # here rather than in the thread, so a failure to register raises
        thread = threading.Thread(target=scheduler.run, name="e2e-scheduler", daemon=True)
        thread.start()
        running = RunningScheduler(
            scheduler=scheduler, thread=thread, release=release, strict_at=strict_at
        )
        yield running
    finally:
        release.set()
        if running is not None:
            running.stop()
        engine.dispose()


@pytest.fixture(scope="module")
def exporters(
    database_url: str, running_scheduler: RunningScheduler
) -> Iterator[list[ExporterServer]]:
    """Two exporter replicas on the scheduler's database, each on its own free port."""
    with exporter_replicas(database_url) as servers:
        yield servers


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def alertmanager(webhook: WebhookReceiver) -> Iterator[AlertmanagerServer]:
    with AlertmanagerServer(alertmanager_config(webhook.url)) as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory,
    exporters: list[ExporterServer],
    alertmanager: AlertmanagerServer,
) -> Iterator[PrometheusServer]:
    """Prometheus scraping both replicas every second, evaluating the shortened shipped rules."""
    rules = tmp_path_factory.mktemp("rules") / "schedctl-rules.yml"
    rules.write_text(yaml.safe_dump(shortened_rules(), sort_keys=False), encoding="utf-8")
    targets = [server.url.removeprefix("http://") for server in exporters]
    server = PrometheusServer(
        # The job name matches the shipped selector up{job=~".*schedctl.*"}.
        [{"job_name": "schedctl", "static_configs": [{"targets": targets}]}],
        rule_files=[rules],
        alertmanagers=[alertmanager.url],
    )
    with server:
        server.wait_for_scrapes(len(targets))
        yield server


@pytest.fixture(scope="module")
def scenario(
    database_url: str,
    running_scheduler: RunningScheduler,
    exporters: list[ExporterServer],
    webhook: WebhookReceiver,
    alertmanager: AlertmanagerServer,
    prometheus: PrometheusServer,
) -> Iterator[Scenario]:
    """Make the late task late, wait for all three faults to page, clear the faults, wait for
    the resolutions, then stop the scheduler. Waits are bounded and do not raise: each test
    checks the part it is about and reports ``diagnostics()`` when it fails."""
    record = Scenario(
        prometheus=prometheus,
        alertmanager=alertmanager,
        webhook=webhook,
        exporters=exporters,
        database_url=database_url,
        started_at=time.time(),
    )
    engine = create_db_engine(database_url)
    try:
        now = datetime.now(UTC)
        with engine.begin() as conn:
            # Due ten minutes ago, yet no instance claims it (claims go by due_at, pushed a day
            # out): exactly how a task looks when every instance is too busy to start it.
            conn.execute(
                schedules.update()
                .where(schedules.c.name == LATE)
                .values(next_run_at=now - timedelta(minutes=10), due_at=now + timedelta(days=1))
            )

        def enough_runs_for_usual() -> bool:
            # The task dashboard's slower-than-usual line needs that many runs of FAILING.
            runs = prometheus.query(
                f'max(scheduler_task_run_duration_seconds_count{{task="{FAILING}"}})'
            )
            return bool(runs) and float(runs[0]["value"][1]) >= MIN_RUNS_FOR_USUAL

        def every_fault_paged_twice() -> bool:
            # The second notification of each group is a repeat: Alertmanager had time to
            # merge in any duplicate (e.g. one alert per exporter replica) before it.
            notifications = webhook.notifications()
            return (
                enough_runs_for_usual()
                and STRICT in firing_labelsets(notifications, "SchedulerTaskFailing")
                and all(
                    task in firing_labelsets(notifications, alertname)
                    and firing_notification_count(notifications, alertname) >= 2
                    for alertname, task in FAULT_ALERTS.items()
                )
            )

        if poll(every_fault_paged_twice, timeout=PAGE_TIMEOUT):
            record.paged_at = time.time()
        else:
            record.notes.append(f"not every fault paged twice within {PAGE_TIMEOUT:g}s")

        # Clear the faults: the failing task's command is fixed, the stuck run may finish,
        # and the late task becomes claimable again, so the scheduler catches up on it.
        store = Store(engine, instance_id="e2e-admin")
        store.sync_tasks(
            task_definitions(failing_command="/bin/true", strict_at=running_scheduler.strict_at),
            now=datetime.now(UTC),
        )
        running_scheduler.release.set()
        with engine.begin() as conn:
            conn.execute(
                schedules.update()
                .where(schedules.c.name == LATE)
                .values(due_at=schedules.c.next_run_at)
            )
        record.cleared_at = cleared_at = time.time()

        def every_fault_resolved() -> bool:
            notifications = webhook.notifications()
            return all(
                resolved_after(notifications, alertname, task, cleared_at)
                for alertname, task in FAULT_ALERTS.items()
            )

        record.resolved = poll(every_fault_resolved, timeout=RESOLVE_TIMEOUT)
        if not record.resolved:
            record.notes.append(f"not every fault resolved within {RESOLVE_TIMEOUT:g}s")
        running_scheduler.stop()
        record.stopped_cleanly = not running_scheduler.thread.is_alive()
        yield record
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------------------------
# The copies of the committed configuration


def test_shortened_rules_differ_from_the_shipped_ones_only_in_durations(tmp_path: Path) -> None:
    """The rule copy differs from alerts/schedctl-rules.yml only in shorter `for` durations and
    range windows, and passes promtool."""
    shipped = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    copy = shortened_rules()
    shipped_rules = [rule for group in shipped["groups"] for rule in group["rules"]]
    copied_rules = [rule for group in copy["groups"] for rule in group["rules"]]
    assert [g["name"] for g in copy["groups"]] == [g["name"] for g in shipped["groups"]]
    assert len(copied_rules) == len(shipped_rules)
    windows_changed = 0
    for original, shortened in zip(shipped_rules, copied_rules, strict=True):
        name = original.get("alert") or original.get("record")
        assert without_windows(shortened["expr"]) == without_windows(original["expr"]), name
        windows_changed += shortened["expr"] != original["expr"]
        rest = {k: v for k, v in original.items() if k not in ("expr", "for")}
        assert {k: v for k, v in shortened.items() if k not in ("expr", "for")} == rest, name
        assert ("for" in shortened) == ("for" in original), name
        if "for" in original:
            assert 1 <= parse_duration(shortened["for"]) <= 5, name
            assert parse_duration(shortened["for"]) < parse_duration(original["for"]), name
    assert windows_changed >= 2  # the missed-runs and failure-ratio windows
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(copy, sort_keys=False), encoding="utf-8")
    checked = subprocess.run(
        ["/usr/bin/promtool", "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# ----------------------------------------------------------------------------------------------
# Paging


@pytest.mark.parametrize("alertname", sorted(FAULT_ALERTS))
def test_fault_pages_once_per_task_with_documented_labels_and_annotations(
    scenario: Scenario, alertname: str
) -> None:
    """Each fault reaches the webhook as exactly one alert for its task, not one per exporter
    replica, labelled alertname, task and severity only, with the rule's annotations rendered."""
    task = FAULT_ALERTS[alertname]
    notifications = scenario.webhook.notifications()
    by_task = firing_labelsets(notifications, alertname)
    by_task.pop(STRICT, None)  # its own page: test_task_alert_policy_sets_threshold_and_route
    assert scenario.paged_at is not None, scenario.diagnostics()
    assert set(by_task) == {task}, scenario.diagnostics()
    assert len(by_task[task]) == 1, (
        f"{len(by_task[task])} distinct alerts\n{scenario.diagnostics()}"
    )
    rule = committed_alert_rules()[alertname]
    assert dict(next(iter(by_task[task]))) == {
        "alertname": alertname,
        "task": task,
        "severity": default_severity(rule),
    }
    firing = [
        a
        for a in notified_alerts(notifications)
        if a["status"] == "firing"
        and a["labels"]["alertname"] == alertname
        and a["labels"]["task"] == task
    ]
    assert len({a["fingerprint"] for a in firing}) == 1, scenario.diagnostics()
    for alert in firing:
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}
        for key, template in rule["annotations"].items():
            assert template_pattern(template, task).fullmatch(annotations[key]), (
                f"{alertname} {key}: {annotations[key]!r} does not render {template!r}"
            )
        assert annotations["runbook_url"].endswith(f"#{alertname.lower()}")
        assert annotations["dashboard_url"].endswith(f"var-task={task}")


def test_task_alert_policy_sets_threshold_and_route(scenario: Scenario) -> None:
    """The strict task pages after its one failure (its own `failures: 1`, where the default
    is 3) with its own severity, warning, which the example routing sends to chat; the failing
    task at the default pages critical, to the pager."""
    assert scenario.paged_at is not None, scenario.diagnostics()
    engine = create_db_engine(scenario.database_url)
    try:
        with engine.connect() as conn:
            failures = conn.execute(
                sa.select(schedules.c.consecutive_failures).where(schedules.c.name == STRICT)
            ).scalar_one()
    finally:
        engine.dispose()
    assert failures == 1, scenario.diagnostics()
    receivers: dict[str, set[tuple[str | None, str | None]]] = {}
    for notification in scenario.webhook.notifications():
        for alert in notification["alerts"]:
            labels = alert["labels"]
            if alert["status"] == "firing" and labels["alertname"] == "SchedulerTaskFailing":
                receivers.setdefault(labels["task"], set()).add(
                    (labels.get("severity"), notification.get("receiver"))
                )
    assert receivers.get(STRICT) == {("warning", "schedctl-chat")}, scenario.diagnostics()
    assert receivers.get(FAILING) == {("critical", "schedctl-pager")}, scenario.diagnostics()


@pytest.mark.parametrize("alertname", sorted(FAULT_ALERTS))
def test_fault_alert_is_resolved_after_the_fault_clears(scenario: Scenario, alertname: str) -> None:
    """Once the task succeeds, finishes or starts again, the webhook gets the same alert (same
    labels) with status resolved."""
    task = FAULT_ALERTS[alertname]
    assert scenario.cleared_at is not None, scenario.diagnostics()
    notifications = scenario.webhook.notifications()
    resolved = resolved_after(notifications, alertname, task, scenario.cleared_at)
    assert resolved, f"no resolved {alertname} for {task}\n{scenario.diagnostics()}"
    fired = firing_labelsets(notifications, alertname).get(task, set())
    assert {labelset(a) for a in resolved} <= fired, scenario.diagnostics()
    assert all(a["endsAt"] and not a["endsAt"].startswith("0001") for a in resolved)


def test_healthy_task_and_infrastructure_never_page(scenario: Scenario) -> None:
    """Nothing pages for the healthy task, the scheduler instance or the exporters."""
    alerts = notified_alerts(scenario.webhook.notifications())
    assert alerts, scenario.diagnostics()
    about_healthy = [a["labels"] for a in alerts if a["labels"].get("task") == HEALTHY]
    infrastructure = [
        a["labels"] for a in alerts if a["labels"]["alertname"] in INFRASTRUCTURE_ALERTS
    ]
    assert not about_healthy and not infrastructure, scenario.diagnostics()


# ----------------------------------------------------------------------------------------------
# Dashboards and aggregation


def _has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (NaN, e.g. a quantile of no observations, is no data)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


def test_every_dashboard_panel_query_returns_data(scenario: Scenario) -> None:
    """Every panel query of both dashboards, variables substituted for the failing task, returns
    data from Prometheus as of the moment every fault was paging."""
    assert scenario.paged_at is not None, scenario.diagnostics()
    at = scenario.paged_at
    variables = {
        "datasource": "prometheus",
        "task": FAILING,
        "__rate_interval": RATE_INTERVAL,
        "__interval": "1s",
        "__range": f"{math.floor(at - scenario.started_at)}s",
        "exporter_url": scenario.exporters[0].url,
    }
    empty = []
    queries = all_queries()
    assert {uid for uid, _, _ in queries} == {"schedctl-overview", "schedctl-task"}
    for uid, title, expr in queries:
        promql = substitute(expr, variables)
        result = scenario.prometheus.query(promql, at=at)
        if not _has_data(result):
            empty.append(f"{uid} / {title}: {promql} -> {result}")
    assert not empty, "panels without data:\n" + "\n".join(empty) + "\n" + scenario.diagnostics()


def _sql_run_counters(database_url: str) -> dict[tuple[str, str], float]:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(schedules)).all()
    finally:
        engine.dispose()
    return {
        (row.name, outcome): float(row._mapping[f"runs_{outcome}_total"])
        for row in rows
        for outcome in TERMINAL_STATUSES
    }


def test_two_replicas_aggregate_to_the_sql_counters(scenario: Scenario) -> None:
    """Both replicas export every run counter, and max by (task, outcome) over them equals the
    persisted SQL counters once the scheduler has stopped."""
    assert scenario.stopped_cleanly, scenario.diagnostics()
    expected = _sql_run_counters(scenario.database_url)
    assert expected[(FAILING, "failure")] >= 3 and expected[(FAILING, "success")] >= 1
    assert expected[(STUCK, "success")] >= 1 and expected[(HEALTHY, "success")] >= 1

    def by_task_outcome(expr: str) -> dict[tuple[str, str], float]:
        return {
            (s["metric"]["task"], s["metric"]["outcome"]): float(s["value"][1])
            for s in scenario.prometheus.query(expr)
        }

    seen: dict[str, dict[tuple[str, str], float]] = {}

    def converged() -> bool:
        for how in ("max", "min", "count"):
            seen[how] = by_task_outcome(f"{how} by (task, outcome) (scheduler_task_runs_total)")
        return seen["max"] == expected and seen["min"] == expected

    if not poll(converged, timeout=CONVERGE_TIMEOUT):
        diff = {
            key: (value, seen.get("min", {}).get(key), seen.get("max", {}).get(key))
            for key, value in expected.items()
            if seen.get("max", {}).get(key) != value or seen.get("min", {}).get(key) != value
        }
        pytest.fail(f"(task, outcome): (sql, min, max) differ: {diff}\n{scenario.diagnostics()}")
    assert set(seen["count"].values()) == {2.0}, seen["count"]
