"""The Grafana dashboards: current with dashboards/build.py, valid against the Grafana JSON
schemas vendored in schemas/grafana, reading only metrics of the catalog in docs/metrics.md, and
written so that every query works with several exporter replicas."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from dashboards import build
from scheduler_core.alert_policy import MIN_RUNS_FOR_USUAL, THRESHOLD_KINDS
from tests.alerts.promql_checks import raw_metric_names, unaggregated_selectors

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO / "schemas" / "grafana"
CATALOG_DOC = REPO / "docs" / "metrics.md"
RULES = REPO / "alerts" / "schedctl-rules.yml"
DASHBOARD_DIR = REPO / "dashboards"

EXPECTED_FILES = {
    "schedctl-overview": "schedctl-overview.json",
    "schedctl-task": "schedctl-task.json",
}
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
UIDS = sorted(EXPECTED_FILES)


@cache
def _schema(name: str) -> dict[str, Any]:
    path = SCHEMA_DIR / f"{name}.jsonschema.json"
    if not path.exists():
        pytest.fail(f"{path} not found: vendor it first (schemas/grafana/README.md)")
    return json.loads(path.read_text(encoding="utf-8"))


def _validator(schema_file: str, definition: str | None = None) -> Draft7Validator:
    schema = _schema(schema_file)
    if definition is not None:
        schema = {"$ref": f"#/definitions/{definition}", "definitions": schema["definitions"]}
    return Draft7Validator(schema)


def _errors(validator: Draft7Validator, instance: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message[:200]}"
        for error in validator.iter_errors(instance)
    ]


def _committed(uid: str) -> dict[str, Any]:
    return json.loads((DASHBOARD_DIR / EXPECTED_FILES[uid]).read_text(encoding="utf-8"))


def _panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in model["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [panel for panel in found if panel["type"] != "row"]


def _all_panels() -> list[tuple[str, dict[str, Any]]]:
    return [(uid, panel) for uid in UIDS for panel in _panels(_committed(uid))]


def _panel_id(item: tuple[str, dict[str, Any]]) -> str:
    return f"{item[0]}:{item[1]['title']}"


# --- generated and committed --------------------------------------------------------------------


@pytest.mark.parametrize("uid", UIDS)
def test_committed_json_is_what_build_produces(uid: str) -> None:
    """The committed JSON file is byte for byte what `python -m dashboards.build` writes now."""
    committed = (DASHBOARD_DIR / EXPECTED_FILES[uid]).read_text(encoding="utf-8")
    assert committed == build.render(build.build_all()[uid]), (
        "stale dashboard: run python -m dashboards.build"
    )


def test_build_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    """`--check` exits 1 when a dashboard file differs and 0 once it was rewritten."""
    assert build.main(["--out", str(tmp_path)]) == 0
    stale = tmp_path / EXPECTED_FILES["schedctl-task"]
    stale.write_text("{}\n", encoding="utf-8")
    assert build.main(["--check", "--out", str(tmp_path)]) == 1
    assert build.main(["--out", str(tmp_path)]) == 0
    assert build.main(["--check", "--out", str(tmp_path)]) == 0


@pytest.mark.parametrize("uid", UIDS)
def test_uid_id_and_schema_version_are_pinned(uid: str) -> None:
    """Each dashboard has its stable uid, a null id and the pinned schemaVersion 39."""
    model = _committed(uid)
    assert model["uid"] == uid
    assert model["id"] is None
    assert model["schemaVersion"] == 39
    assert build.DASHBOARD_FILES == EXPECTED_FILES


# --- Grafana JSON schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("uid", UIDS)
def test_dashboard_validates_against_dashboard_schema(uid: str) -> None:
    """The dashboard validates against Grafana's classic dashboard model schema."""
    assert _errors(_validator("dashboard"), _committed(uid)) == []


@pytest.mark.parametrize("item", _all_panels(), ids=_panel_id)
def test_panel_options_validate_against_panel_type_schema(item: tuple[str, dict[str, Any]]) -> None:
    """Each panel's `options` validate against the Options of its panel type's schema."""
    _, panel = item
    assert _errors(_validator(panel["type"], "Options"), panel["options"]) == []


@pytest.mark.parametrize("item", _all_panels(), ids=_panel_id)
def test_panel_field_config_validates_against_panel_type_schema(
    item: tuple[str, dict[str, Any]],
) -> None:
    """fieldConfig.defaults.custom and every `custom.*` override match the panel type's
    FieldConfig; panel types without one carry no custom field config."""
    _, panel = item
    definitions = _schema(panel["type"])["definitions"]
    field_config = panel["fieldConfig"]
    custom = field_config["defaults"].get("custom")
    if "FieldConfig" not in definitions:
        assert custom is None
        return
    validator = _validator(panel["type"], "FieldConfig")
    if custom is not None:
        assert _errors(validator, custom) == []
    for override in field_config["overrides"]:
        for prop in override["properties"]:
            if prop["id"].startswith("custom."):
                key = prop["id"].removeprefix("custom.")
                assert _errors(validator, {**(custom or {}), key: prop["value"]}) == []


@pytest.mark.parametrize("item", _all_panels(), ids=_panel_id)
def test_targets_validate_against_prometheus_query_schema(
    item: tuple[str, dict[str, Any]],
) -> None:
    """Each panel target is a valid Prometheus query model."""
    _, panel = item
    assert panel["targets"], "panel without a query"
    for target in panel["targets"]:
        assert _errors(_validator("prometheus"), target) == []


# --- house rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("uid", UIDS)
def test_datasource_variable_is_used_by_every_panel_and_target(uid: str) -> None:
    """A `datasource` variable of type datasource (prometheus) drives every panel and target."""
    model = _committed(uid)
    variables = {variable["name"]: variable for variable in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(model):
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, panel["title"]
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE_REF, variable["name"]


@pytest.mark.parametrize("item", _all_panels(), ids=_panel_id)
def test_every_panel_has_unit_and_description(item: tuple[str, dict[str, Any]]) -> None:
    """Every panel states its unit and describes what it shows."""
    _, panel = item
    assert panel["fieldConfig"]["defaults"].get("unit")
    assert panel.get("description", "").strip()


@pytest.mark.parametrize("uid", UIDS)
def test_panel_ids_unique_and_grid_free_of_overlap(uid: str) -> None:
    """Panel ids are unique and no two panels overlap on the grid."""
    panels = _panels(_committed(uid))
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, panel["title"]
        cells |= area


def test_task_dashboard_has_task_variable_from_task_info() -> None:
    """schedctl-task selects its task from label_values(scheduler_task_info, task)."""
    variables = {v["name"]: v for v in _committed("schedctl-task")["templating"]["list"]}
    assert variables["task"]["type"] == "query"
    assert variables["task"]["query"] == "label_values(scheduler_task_info, task)"
    assert all(
        'task="$task"' in expr for uid, _, expr in build.all_queries() if uid == "schedctl-task"
    )


def test_rate_queries_use_rate_interval() -> None:
    """rate()/irate() use [$__rate_interval]; increase() that or [$__range]; no fixed windows."""
    for uid, title, expr in build.all_queries():
        for function, window in re.findall(r"\b(rate|irate|increase)\([^\[]*\[([^\]]+)\]", expr):
            allowed = {"$__rate_interval"} | ({"$__range"} if function == "increase" else set())
            assert window in allowed, f"{uid} / {title}: {function}(...[{window}])"
        assert not re.search(r"\[\d+[smhdwy]\]", expr), f"{uid} / {title}: fixed range"


def test_queries_aggregate_away_scrape_target_labels() -> None:
    """Every raw series in every panel query is aggregated so instance/job/pod are gone."""
    offenders = {
        f"{uid} / {title}": found
        for uid, title, expr in build.all_queries()
        if (found := unaggregated_selectors(expr))
    }
    assert offenders == {}


def test_queries_read_only_metrics_of_the_catalog() -> None:
    """Every scheduler_* metric the dashboards read is in the metric table of docs/metrics.md."""
    section = CATALOG_DOC.read_text(encoding="utf-8").split("\n## Metrics\n", 1)[1]
    allowed = set(re.findall(r"^\| (scheduler_\w+) \|", section.split("\n## ", 1)[0], re.MULTILINE))
    assert allowed, f"no metric rows under ## Metrics in {CATALOG_DOC}"
    used = {
        re.sub(r"_bucket$", "", name)
        for _, _, expr in build.all_queries()
        for name in raw_metric_names(expr)
        if name.startswith("scheduler_")
    }
    assert used <= allowed, used - allowed


def test_dashboard_thresholds_match_alert_rules() -> None:
    """The late grace, heartbeat staleness and the global thresholds the overview's alert
    thresholds table names as defaults equal the alert thresholds."""
    recorded = {
        rule["record"]: rule["expr"]
        for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    grace = recorded["schedctl:threshold:late_grace_seconds"]
    stale = recorded["schedctl:threshold:heartbeat_stale_seconds"]
    assert grace == f"vector({build.LATE_GRACE_SECONDS})"
    assert stale == f"vector({build.HEARTBEAT_STALE_SECONDS})"
    for name, value in (
        ("consecutive_failures", build.CONSECUTIVE_FAILURES),
        ("no_success_intervals", build.NO_SUCCESS_INTERVALS),
        ("no_success_slack_seconds", build.NO_SUCCESS_SLACK_SECONDS),
    ):
        assert recorded[f"schedctl:threshold:{name}"] == f"vector({value})", name


def _panel(uid: str, title: str) -> dict[str, Any]:
    return next(panel for panel in _panels(_committed(uid)) if panel["title"] == title)


def test_thresholds_table_has_a_column_per_threshold_kind_and_severity() -> None:
    """The overview's thresholds table reads every kind of scheduler_task_alert_threshold
    (one query each, so one column each), the severity label, and lists every task; a task
    without a value shows "default"."""
    panel = _panel("schedctl-overview", "Alert thresholds per task")
    exprs = [target["expr"] for target in panel["targets"]]
    kinds = {
        m for e in exprs for m in re.findall(r'scheduler_task_alert_threshold\{kind="(\w+)"', e)
    }
    assert kinds == set(THRESHOLD_KINDS.values())
    assert exprs[0] == "max by (task) (scheduler_task_info)"
    assert exprs[-1] == "max by (task, severity) (scheduler_task_alert_policy_info)"
    organize = panel["transformations"][-1]["options"]
    assert organize["indexByName"]["task"] == 0 and organize["indexByName"]["severity"] == 7
    assert set(organize["excludeByName"]) == {"Time", "Value #A", "Value #H"}
    [default] = panel["fieldConfig"]["defaults"]["mappings"]
    assert default["options"] == {"match": "null", "result": {"text": "default", "index": 0}}


def test_duration_panel_draws_median_and_the_policy_bounds() -> None:
    """The task dashboard draws the last duration against the median of all runs and the
    min_duration / max_duration / slower_than_usual bounds of the task's alerts block."""
    panel = _panel("schedctl-task", "Run duration against its alert thresholds")
    exprs = {target["legendFormat"]: target["expr"] for target in panel["targets"]}
    buckets = 'scheduler_task_run_duration_seconds_bucket{task="$task"}'
    median = f"histogram_quantile(0.5, max by (le) ({buckets}))"
    assert exprs["median"] == median
    assert exprs["min_duration"] == (
        'max by (task) (scheduler_task_alert_threshold{task="$task", kind="min_duration_seconds"})'
    )
    assert exprs["max_duration"] == (
        'max by (task) (scheduler_task_alert_threshold{task="$task", kind="max_duration_seconds"})'
    )
    assert exprs["last run"] == 'max by (task) (scheduler_task_last_duration_seconds{task="$task"})'
    assert exprs["slower_than_usual x median"].startswith(median)
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"


def test_table_transformations_refer_to_existing_queries() -> None:
    """Every `Value #X` column a transformation names comes from a target with refId X."""
    for uid, panel in _all_panels():
        ref_ids = {target["refId"] for target in panel["targets"]}
        named = set(re.findall(r"Value #(\w+)", json.dumps(panel.get("transformations", []))))
        assert named <= ref_ids, f"{uid} / {panel['title']}: {named - ref_ids}"


# --- helpers for the end-to-end test ------------------------------------------------------------


def test_all_queries_lists_every_target() -> None:
    """all_queries() returns one (uid, title, expr) per target of every panel of both dashboards."""
    expected = [
        (uid, panel["title"], target["expr"])
        for uid, panel in _all_panels()
        for target in panel["targets"]
    ]
    assert sorted(build.all_queries()) == sorted(expected)
    assert {uid for uid, _, _ in build.all_queries()} == set(UIDS)


def test_substitute_replaces_every_grafana_variable_form() -> None:
    """$name, ${name}, ${name:format} and [[name]] are replaced; PromQL's own $1 is left alone."""
    variables = {"task": "backup", "__rate_interval": "1m", "__range": "1h"}
    expr = (
        'rate(x{task="$task"}[$__rate_interval]) + increase(y{task="${task}"}[${__range}])'
        ' + z{task="${task:raw}", t="[[task]]"} + label_replace(v, "a", "$1", "b", "(.*)")'
    )
    assert build.substitute(expr, variables) == (
        'rate(x{task="backup"}[1m]) + increase(y{task="backup"}[1h])'
        ' + z{task="backup", t="backup"} + label_replace(v, "a", "$1", "b", "(.*)")'
    )


def test_substitute_refuses_a_missing_variable() -> None:
    """A variable without a value raises KeyError instead of sending `$task` to Prometheus."""
    with pytest.raises(KeyError, match="task"):
        build.substitute('up{task="$task"}', {"__rate_interval": "1m"})


@pytest.mark.prometheus
def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    """Every panel query, with its variables substituted, is valid PromQL to promtool's parser."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is required (Debian: prometheus)")
    variables = {"task": "backup", "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {
                        "record": f"dashboard_query_{index}",
                        "expr": build.substitute(expr, variables),
                    }
                    for index, (_, _, expr) in enumerate(build.all_queries())
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


#: A series with a label of its own, as "name|label=value, " (see the series list below).
FAILED_LAST_STATUS = 'scheduler_task_last_status|status="failure", '


@pytest.mark.prometheus
def test_status_badge_gives_each_task_one_state(tmp_path: Path) -> None:
    """The status badge query yields one series per task, first match wins in the exporter's
    precedence, even when two exporter replicas report the task (evaluated by promtool)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is required (Debian: prometheus)")
    # task -> (gauges that differ from a healthy, idle task due in the future, badge, value)
    tasks: dict[str, tuple[dict[str, str], str, float]] = {
        "ok": ({}, "ok", 1),
        "failing": (
            {"scheduler_task_consecutive_failures": "2", FAILED_LAST_STATUS: "1"},
            "failing",
            2,
        ),
        "paused": (
            {"scheduler_task_paused": "1", "scheduler_task_consecutive_failures": "2"},
            "paused",
            1,
        ),
        "disabled": ({"scheduler_task_enabled": "0", "scheduler_task_paused": "1"}, "disabled", 0),
        "stuck": ({"scheduler_task_stuck": "1", "scheduler_task_running": "1"}, "stuck", 1),
        "running": ({"scheduler_task_running": "1"}, "running", 1),
        # At 10m the run due at 60 s is 540 s overdue.
        "late": ({"scheduler_task_next_run_timestamp_seconds": "60"}, "late", 540),
        "failing-and-late": (
            {
                "scheduler_task_consecutive_failures": "1",
                FAILED_LAST_STATUS: "1",
                "scheduler_task_next_run_timestamp_seconds": "60",
            },
            "failing",
            1,
        ),
    }
    healthy = {
        "scheduler_task_info": "1",
        "scheduler_task_paused": "0",
        "scheduler_task_enabled": "1",
        "scheduler_task_stuck": "0",
        "scheduler_task_running": "0",
        "scheduler_task_consecutive_failures": "0",
        "scheduler_task_next_run_timestamp_seconds": "100000",
    }
    series = [
        {
            "series": f"{metric.partition('|')[0]}{{{metric.partition('|')[2]}"
            f'task="{task}", job="schedctl", instance="{ip}", pod="{pod}"}}',
            "values": f"{value}x10",
        }
        for task, (changes, _, _) in tasks.items()
        for metric, value in {**healthy, **changes}.items()
        for ip, pod in (("10.0.0.1:9464", "schedctl-0"), ("10.0.0.2:9464", "schedctl-1"))
    ]
    expected = [
        {"labels": f'{{task="{task}", state="{state}"}}', "value": value}
        for task, (_, state, value) in tasks.items()
    ]
    (tmp_path / "none.yml").write_text("groups: []\n", encoding="utf-8")
    test_file = tmp_path / "status_test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["none.yml"],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": series,
                        "promql_expr_test": [
                            {
                                "expr": build.status_expr(),
                                "eval_time": "10m",
                                "exp_samples": expected,
                            }
                        ],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_duration_bounds_evaluate_per_task_across_replicas(tmp_path: Path) -> None:
    """With two exporter replicas, the duration panel's lines are one series each, and the
    slower-than-usual bound is the factor times the median only once the task has
    MIN_RUNS_FOR_USUAL runs (evaluated by promtool)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is required (Debian: prometheus)")
    panel = _panel("schedctl-task", "Run duration against its alert thresholds")
    # task -> cumulative bucket counts: 10 runs took up to 1 s, the others up to 2 s; only
    # "seasoned" has the runs its median needs to count as usual.
    buckets = {
        task: {"1": 10, "2": runs, "+Inf": runs}
        for task, runs in (("seasoned", MIN_RUNS_FOR_USUAL), ("young", MIN_RUNS_FOR_USUAL - 1))
    }
    series = []
    for task, counts in buckets.items():
        per_task = {
            "scheduler_task_last_duration_seconds|": "2.5",
            'scheduler_task_alert_threshold|kind="min_duration_seconds", ': "0.5",
            'scheduler_task_alert_threshold|kind="max_duration_seconds", ': "30",
            'scheduler_task_alert_threshold|kind="slower_than_usual_factor", ': "3",
            **{
                f'scheduler_task_run_duration_seconds_bucket|le="{le}", ': str(count)
                for le, count in counts.items()
            },
        }
        series += [
            {
                "series": f"{metric.partition('|')[0]}{{{metric.partition('|')[2]}"
                f'task="{task}", job="schedctl", instance="{ip}", pod="{pod}"}}',
                "values": f"{value}x10",
            }
            for metric, value in per_task.items()
            for ip, pod in (("10.0.0.1:9464", "schedctl-0"), ("10.0.0.2:9464", "schedctl-1"))
        ]
    # histogram_quantile: rank 0.5 x runs within the first bucket (10 runs in 0..1 s).
    median = {task: 0.5 * counts["+Inf"] / 10 for task, counts in buckets.items()}
    expected = {
        "last run": lambda task: [(f'{{task="{task}"}}', 2.5)],
        "median": lambda task: [("{}", median[task])],
        "min_duration": lambda task: [(f'{{task="{task}"}}', 0.5)],
        "max_duration": lambda task: [(f'{{task="{task}"}}', 30.0)],
        "slower_than_usual x median": lambda task: (
            [("{}", 3 * median[task])] if task == "seasoned" else []
        ),
    }
    tests = [
        {
            "expr": build.substitute(target["expr"], {"task": task}),
            "eval_time": "5m",
            "exp_samples": [
                {"labels": labels, "value": value}
                for labels, value in expected[target["legendFormat"]](task)
            ],
        }
        for target in panel["targets"]
        for task in buckets
    ]
    assert len(tests) == 2 * len(expected)
    (tmp_path / "none.yml").write_text("groups: []\n", encoding="utf-8")
    test_file = tmp_path / "durations_test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["none.yml"],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
            }
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_is_free_of_variables_after_substitution() -> None:
    """With task, rate interval, interval and range given, no `$` variable remains in any query."""
    variables = {"task": "backup", "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
    for _, _, expr in build.all_queries():
        assert "$" not in build.substitute(expr, variables).replace('"$1"', "")


# --- provisioning -------------------------------------------------------------------------------


def test_provisioning_files_point_grafana_at_the_dashboards() -> None:
    """The provisioning examples declare a file dashboard provider and a Prometheus data source."""
    provisioning = DASHBOARD_DIR / "provisioning"
    dashboards = yaml.safe_load((provisioning / "dashboards.yml").read_text(encoding="utf-8"))
    datasources = yaml.safe_load((provisioning / "datasource.yml").read_text(encoding="utf-8"))
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
    assert datasources["apiVersion"] == 1
    assert [source["type"] for source in datasources["datasources"]] == ["prometheus"]
