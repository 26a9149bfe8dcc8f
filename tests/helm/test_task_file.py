"""The chart's `tasks`/`taskDefaults` values and the task file it renders agree with the
scheduler's own task-file parser (scheduler_core.config)."""

from __future__ import annotations

import json
from typing import Any

import yaml

from scheduler_core import config, tasks
from scheduler_core.alert_policy import ALERT_KEYS, SEVERITIES
from tests.helm.chart import CHART_DIR, PRODUCTION_VALUES, REPO, by_kind, render, render_error

SCHEMA_DEFS = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))["$defs"]


def rendered_task_file(values: dict[str, Any]) -> Any:
    """The task file in the rendered tasks ConfigMap, as the scheduler's YAML loader reads it."""
    configmap = next(
        cm
        for cm in by_kind(render(values), "ConfigMap")
        if cm["metadata"]["name"] == "schedctl-tasks"
    )
    return yaml.safe_load(configmap["data"]["tasks.yaml"])


def retry_mapping_schema() -> dict[str, Any]:
    """The mapping form of `retries` in the chart schema."""
    return next(s for s in SCHEMA_DEFS["retries"]["anyOf"] if s.get("type") == "object")


def test_schema_knows_exactly_the_fields_the_parser_knows() -> None:
    """Task, policy and retry fields and the policy choices in values.schema.json are exactly
    those the parser accepts, so the chart neither rejects a valid task nor passes a typo."""
    assert set(SCHEMA_DEFS["task"]["properties"]) == config.TASK_KEYS
    assert set(SCHEMA_DEFS["taskPolicies"]["properties"]) == config.POLICY_KEYS
    assert set(retry_mapping_schema()["properties"]) == config.RETRY_KEYS
    policies = SCHEMA_DEFS["taskPolicies"]["properties"]
    assert tuple(policies["overlap"]["enum"]) == tasks.OVERLAP_POLICIES
    assert tuple(policies["misfire"]["enum"]) == tasks.MISFIRE_POLICIES
    assert tuple(retry_mapping_schema()["properties"]["backoff"]["enum"]) == tasks.BACKOFF_KINDS


def test_rendered_task_file_parses_to_the_tasks_in_values() -> None:
    """The scheduler's parser accepts the rendered task file and reads the same tasks as from
    the values themselves."""
    expected = config.parse_task_document(
        {"defaults": PRODUCTION_VALUES["taskDefaults"], "tasks": PRODUCTION_VALUES["tasks"]},
        source="values",
        check_callables=False,
    )
    parsed = config.parse_task_document(
        rendered_task_file(PRODUCTION_VALUES), source="values", check_callables=False
    )
    assert [t.name for t in parsed] == ["nightly-backup", "refresh-cache", "poll", "send-report"]
    assert parsed == expected


def test_example_task_file_is_valid_chart_values() -> None:
    """examples/tasks.yaml, given as tasks and taskDefaults, passes the chart's schema and
    comes back out of the chart unchanged."""
    example = yaml.safe_load((REPO / "examples" / "tasks.yaml").read_text(encoding="utf-8"))
    values = {"taskDefaults": example["defaults"], "tasks": example["tasks"]}
    assert rendered_task_file(values) == {
        "defaults": example["defaults"],
        "tasks": example["tasks"],
    }


def test_schema_knows_exactly_the_alert_fields_the_parser_knows() -> None:
    """The `alerts` block in values.schema.json has exactly the parser's fields and
    severities, for a task and for taskDefaults."""
    alerts = SCHEMA_DEFS["alerts"]
    assert set(alerts["properties"]) == ALERT_KEYS
    assert [s for s in alerts["properties"]["severity"]["enum"] if s] == list(SEVERITIES)
    for where in ("task", "taskPolicies"):
        assert SCHEMA_DEFS[where]["properties"]["alerts"] == {"$ref": "#/$defs/alerts"}


def test_alerts_pass_the_chart_and_parse_as_from_the_values() -> None:
    """Tasks with an `alerts` block (and one in taskDefaults) pass the chart's schema, and
    the rendered task file parses to the same policies as the values themselves."""
    values = {
        "taskDefaults": {"alerts": {"failures": 2, "severity": "warning"}},
        "tasks": [
            {
                "name": "nightly-export",
                "command": ["true"],
                "cron": "0 2 * * *",
                "alerts": {
                    "failures": 1,
                    "late_after": "10m",
                    "no_success_for": "2d",
                    "max_duration": "30m",
                    "min_duration": "2s",
                    "slower_than_usual": 3,
                    "deadline": {"at": "06:00", "timezone": "Europe/Berlin"},
                    "severity": "critical",
                },
            },
            {"name": "poll", "command": ["true"], "every": "5m", "alerts": {"deadline": "07:30"}},
        ],
    }
    expected = config.parse_task_document(
        {"defaults": values["taskDefaults"], "tasks": values["tasks"]}, source="values"
    )
    parsed = config.parse_task_document(rendered_task_file(values), source="values")
    assert parsed == expected
    assert [t.policies.alerts.failures for t in parsed] == [1, 2]


def test_chart_rejects_an_unknown_alert_field() -> None:
    """A typo in an `alerts` block fails at `helm install`, not in the scheduler."""
    task = {"name": "a", "command": ["true"], "every": "5m", "alerts": {"failure": 1}}
    assert "failure" in render_error({"tasks": [task]})
