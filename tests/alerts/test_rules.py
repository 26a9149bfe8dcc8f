"""The shipped Prometheus rules: promtool accepts and tests them, they implement every alert of
the catalog in docs/metrics.md with its labels and annotations, they read only metrics of its
metric table, no query pages once per exporter replica, and every task alert takes the task's
own severity from its `alerts:` block."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler_core.alert_policy import MIN_RUNS_FOR_USUAL
from tests.alerts.promql_checks import raw_metric_names, unaggregated_selectors
from tests.alerts.severity import SEVERITIES, default_severity, is_per_task

pytestmark = pytest.mark.prometheus

REPO = Path(__file__).resolve().parents[2]
CATALOG_DOC = REPO / "docs" / "metrics.md"
RULES = REPO / "alerts" / "schedctl-rules.yml"
TESTS_DIR = REPO / "alerts" / "tests"
RUNBOOK = REPO / "alerts" / "runbook.md"
ALERTMANAGER_EXAMPLE = REPO / "alerts" / "alertmanager" / "alertmanager.example.yml"

REQUIRED_ANNOTATIONS = {"summary", "description", "runbook_url", "dashboard_url"}
RUNBOOK_BASE = "https://github.com/schedctl/schedctl/blob/main/alerts/runbook.md#"
TARGET_LABELS = {"instance", "job", "pod"}
SEVERITY_JOIN = "task:scheduler_task_alert_severity:join"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required (Debian: prometheus / prometheus-alertmanager)")
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def _groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return groups


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _groups() for rule in group["rules"]]


def _alerts() -> dict[str, list[dict[str, Any]]]:
    alerts: dict[str, list[dict[str, Any]]] = {}
    for rule in _rules():
        if "alert" in rule:
            alerts.setdefault(rule["alert"], []).append(rule)
    return alerts


def _catalog_rows(heading: str, prefix: str) -> list[str]:
    """First cells of the rows of the table under ``## heading`` of docs/metrics.md that start
    with ``prefix``."""
    section = CATALOG_DOC.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1]
    return re.findall(rf"^\| ({prefix}\w+) \|", section.split("\n## ", 1)[0], re.MULTILINE)


def _catalog_alerts() -> list[str]:
    return sorted(set(_catalog_rows("Alerts", "Scheduler")))


def _catalog_metrics() -> set[str]:
    return set(_catalog_rows("Metrics", "scheduler_"))


def _test_files() -> list[Path]:
    return sorted(TESTS_DIR.glob("*.yml"))


# --- promtool -----------------------------------------------------------------------------------


def test_promtool_check_rules_is_clean() -> None:
    """`promtool check rules` with every lint enabled accepts the file without a warning."""
    result = _run(_tool("promtool"), "check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in result.stdout, output
    assert "warning" not in output.lower(), output


def test_promtool_unit_tests_pass() -> None:
    """Every promtool unit-test file in alerts/tests passes."""
    files = _test_files()
    assert files, f"no promtool tests in {TESTS_DIR}"
    result = _run(_tool("promtool"), "test", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


# --- the alerts of docs/metrics.md --------------------------------------------------------------


def test_catalog_alert_list_is_read() -> None:
    """The alert names are parsed from docs/metrics.md (guards the tests below against a vacuous
    list)."""
    assert len(_catalog_alerts()) == 13, _catalog_alerts()


@pytest.mark.parametrize("alertname", _catalog_alerts())
def test_catalog_alert_has_for_severity_and_annotations(alertname: str) -> None:
    """Each alert of docs/metrics.md exists with `for`, a severity and all four annotations."""
    rules = _alerts().get(alertname)
    assert rules, f"{alertname} is not defined in {RULES.name}"
    for rule in rules:
        assert rule.get("for"), f"{alertname} has no `for`"
        assert default_severity(rule.get("labels", {}).get("severity", "")) in SEVERITIES
        annotations = rule.get("annotations", {})
        assert set(annotations) >= REQUIRED_ANNOTATIONS, alertname
        assert all(annotations[key].strip() for key in REQUIRED_ANNOTATIONS), alertname
        assert annotations["runbook_url"] == RUNBOOK_BASE + alertname.lower()
        assert annotations["dashboard_url"].startswith("https://")


def test_every_alert_is_in_catalog_and_runbook() -> None:
    """No alert outside docs/metrics.md, and each alert's runbook anchor is a heading of
    runbook.md."""
    headings = set(re.findall(r"^## (\w+)\s*$", RUNBOOK.read_text(encoding="utf-8"), re.MULTILINE))
    assert set(_alerts()) == set(_catalog_alerts())
    assert set(_alerts()) <= headings, set(_alerts()) - headings


def test_no_query_keeps_scrape_target_labels() -> None:
    """Every raw series in every rule is aggregated so that instance/job/pod are gone."""
    offenders = {
        rule.get("alert") or rule.get("record"): unaggregated_selectors(rule["expr"])
        for rule in _rules()
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_alerts_only_use_recorded_series_defined_in_the_file() -> None:
    """Recorded series an alert reads (names with a colon) are all recorded in the same file."""
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    used = {
        name
        for rule in _rules()
        for name in re.findall(r"[a-z_]+:[a-z_:0-9]+", re.sub(r'"[^"]*"', "", rule["expr"]))
    }
    assert used <= recorded, used - recorded


def test_alert_expressions_hold_no_threshold_literals() -> None:
    """Alerts compare against schedctl:threshold:* series; only 0 and 1 appear as literals."""
    for name, rules in _alerts().items():
        for rule in rules:
            expr = re.sub(r'"[^"]*"|\[[^\]]*\]|\w*:\w[\w:]*|[A-Za-z_]\w*', " ", rule["expr"])
            literals = set(re.findall(r"\d+(?:\.\d+)?", expr))
            assert literals <= {"0", "1"}, f"{name}: {literals}"


def _recorded(name: str) -> dict[str, Any]:
    return next(rule for rule in _rules() if rule.get("record") == name)


def test_task_alerts_take_the_severity_of_the_task() -> None:
    """Every SchedulerTask* alert joins the task's severity and templates its label from it,
    falling back to its own default; the other alerts have a fixed severity."""
    join = re.compile(rf"\)\s*\* on \(task\) group_left \(severity\) {SEVERITY_JOIN}\s*$")
    for name, rules in _alerts().items():
        for rule in rules:
            label = rule["labels"]["severity"]
            if name.startswith("SchedulerTask"):
                assert is_per_task(label), f"{name}: {label!r}"
                assert join.search(rule["expr"]), f"{name} does not end with the severity join"
            else:
                assert label in SEVERITIES, name


def test_severity_join_covers_every_task_an_alert_can_name() -> None:
    """The join has a series for every task the first series of each task alert names, else
    the alert would vanish for tasks without a severity of their own."""
    universe = _recorded(SEVERITY_JOIN)["expr"].split("group by (task)", 1)[1]
    for name, rules in _alerts().items():
        if name.startswith("SchedulerTask"):
            for rule in rules:
                first = re.search(r"task\w*:[\w:]+", rule["expr"])
                assert first and re.search(rf"\b{first.group(0)}\b", universe), name


def test_slower_than_usual_min_runs_matches_the_sql_side() -> None:
    """The rules and scheduler_core.alert_policy agree on how many runs make a median usual."""
    expr = _recorded("schedctl:threshold:slower_than_usual_min_runs")["expr"]
    assert expr == f"vector({MIN_RUNS_FOR_USUAL})"


def test_rules_only_read_metrics_of_the_catalog() -> None:
    """Every scheduler_* metric the rules read is in the metric table of docs/metrics.md."""
    allowed = _catalog_metrics()
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name) if name not in allowed else name
        for rule in _rules()
        for name in raw_metric_names(rule["expr"])
        if name.startswith("scheduler_")
    }
    assert used <= allowed, used - allowed


@pytest.mark.parametrize(
    ("expr", "offenders"),
    [
        ("scheduler_task_stuck == 1", ["scheduler_task_stuck"]),
        ("max by (task, instance) (scheduler_task_stuck)", ["scheduler_task_stuck"]),
        (
            "max by (task) (scheduler_task_stuck) / scheduler_task_running",
            ["scheduler_task_running"],
        ),
        ("max without (pod) (scheduler_task_stuck)", ["scheduler_task_stuck"]),
        ('max by (task) (rate(scheduler_task_runs_total{outcome="up"}[5m]))', []),
        ("sum(scheduler_task_stuck) by (task)", []),
        ("sum(scheduler_task_stuck) by (job)", ["scheduler_task_stuck"]),
        ('count(up{job=~".*schedctl.*"} == 0) or absent(up{job="x"})', []),
        ("task:scheduler_task_stuck:max == 1", []),
    ],
)
def test_aggregation_check_flags_target_labels(expr: str, offenders: list[str]) -> None:
    """The static check reports exactly the selectors that keep instance/job/pod."""
    assert unaggregated_selectors(expr) == offenders


# --- coverage of the promtool tests -------------------------------------------------------------


def _cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(test group, alert_rule_test entry) for every case of every test file."""
    cases = []
    for path in _test_files():
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for case in group.get("alert_rule_test", []):
                cases.append((group, case))
    return cases


def _series_labels(group: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    parsed = []
    for item in group["input_series"]:
        name, _, matchers = item["series"].partition("{")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', matchers))
        parsed.append((name, labels))
    return parsed


def _has_replica_pair(group: dict[str, Any]) -> bool:
    seen: dict[tuple[str, frozenset[tuple[str, str]]], set[str]] = {}
    for name, labels in _series_labels(group):
        domain = frozenset((k, v) for k, v in labels.items() if k not in TARGET_LABELS)
        seen.setdefault((name, domain), set()).add(labels.get("instance", ""))
    return any(len(instances) > 1 for instances in seen.values())


def _has_paused_task(group: dict[str, Any]) -> bool:
    return any(
        name == "scheduler_task_paused" and item["values"].startswith("1")
        for (name, _), item in zip(_series_labels(group), group["input_series"], strict=True)
    )


@pytest.mark.parametrize("alertname", _catalog_alerts())
def test_promtool_tests_cover_each_alert(alertname: str) -> None:
    """Each alert has silent cases, a firing case with labels and all annotations checked, and a
    replica case with one alert; task alerts also a paused case that stays silent."""
    cases = [(group, case) for group, case in _cases() if case["alertname"] == alertname]
    silent = [case for _, case in cases if not case.get("exp_alerts")]
    firing = [case for _, case in cases if case.get("exp_alerts")]
    assert len(silent) >= 2, f"{alertname}: needs before-threshold and recovery cases"
    assert firing, f"{alertname}: no firing case"
    for case in firing:
        for alert in case["exp_alerts"]:
            assert "severity" in alert["exp_labels"], alertname
            assert set(alert["exp_annotations"]) == REQUIRED_ANNOTATIONS, alertname
    replica_cases = [
        case for group, case in cases if _has_replica_pair(group) and case.get("exp_alerts")
    ]
    assert any(len(case["exp_alerts"]) == 1 for case in replica_cases), alertname
    if alertname.startswith("SchedulerTask"):
        assert any(
            _has_paused_task(group) and not case.get("exp_alerts") for group, case in cases
        ), f"{alertname}: no paused case"


# --- Alertmanager example -----------------------------------------------------------------------


def test_alertmanager_example_is_valid() -> None:
    """`amtool check-config` accepts the example Alertmanager configuration."""
    result = _run(_tool("amtool"), "check-config", str(ALERTMANAGER_EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("alertname", "severity", "receiver"),
    [
        ("SchedulerTaskFailing", "critical", "schedctl-pager"),
        ("SchedulerTaskFailing", "warning", "schedctl-chat"),
        ("SchedulerTaskFailing", "info", "schedctl-chat"),
        ("SchedulerTaskDeadlineMissed", "critical", "schedctl-pager"),
        ("SchedulerTaskDeadlineMissed", "info", "schedctl-chat"),
        ("SchedulerTaskSlow", "warning", "schedctl-chat"),
        ("SchedulerNoInstances", "critical", "schedctl-pager"),
    ],
)
def test_alertmanager_example_routes_by_severity(
    alertname: str, severity: str, receiver: str
) -> None:
    """Critical schedctl alerts reach the pager receiver, warnings the chat receiver, and info
    (a task's `alerts: {severity: info}`) only the chat receiver: it never pages."""
    result = _run(
        _tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_EXAMPLE}",
        f"--verify.receivers={receiver}",
        f"alertname={alertname}",
        f"severity={severity}",
        "task=backup",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_example_groups_by_alertname_and_task() -> None:
    """Notifications are grouped by alertname and task, so replicas never multiply them."""
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    assert config["route"]["group_by"] == ["alertname", "task"]


def test_promtool_checks_every_yml_in_alerts_clean() -> None:
    """`promtool check rules alerts/*.yml` (the documented command) succeeds: only rule files match."""
    files = sorted(str(p) for p in (REPO / "alerts").glob("*.yml"))
    result = subprocess.run(
        ["promtool", "check", "rules", *files], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in (result.stdout + result.stderr).upper()
