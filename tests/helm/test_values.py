"""values.schema.json and the chart's template checks reject bad values with a message that
says what is wrong."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.helm.chart import CHART_DIR, NAMESPACE, PRODUCTION_VALUES, merged, render, render_error

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
SQLITE_REASON = "a SQLite file cannot be shared between pods"


def task(**fields: Any) -> dict[str, Any]:
    """A valid command task, with ``fields`` added or replaced."""
    return {"name": "t", "command": ["true"], "cron": "*/5 * * * *", **fields}


def test_negative_replicas_are_rejected() -> None:
    """replicas -1 fails schema validation naming the field and the minimum."""
    message = render_error({"replicas": -1})
    assert "at '/replicas': minimum: got -1, want 1" in message


@pytest.mark.parametrize(
    ("values", "where", "key"),
    [
        ({"replicaCount": 2}, "''", "replicaCount"),
        ({"database": {"tpye": "postgresql"}}, "'/database'", "tpye"),
        ({"tasks": [task(schedule="daily")]}, "'/tasks/0'", "schedule"),
        (
            {"serviceMonitor": {"enabled": True, "interval": "30s", "extra": 1}},
            "'/serviceMonitor'",
            "extra",
        ),
    ],
)
def test_unknown_keys_are_rejected(values: dict[str, Any], where: str, key: str) -> None:
    """A key the chart does not know, at any level, is rejected by name instead of ignored."""
    message = render_error(values)
    assert f"at {where}: additional properties '{key}' not allowed" in message


@pytest.mark.parametrize("replicas", [2, 3])
def test_sqlite_with_several_replicas_is_rejected_with_the_reason(replicas: int) -> None:
    """SQLite with more than one replica is rejected, saying a SQLite file cannot be shared."""
    message = render_error({"replicas": replicas})
    assert SQLITE_REASON in message
    assert "database.type postgresql" in message


def test_sqlite_guard_also_holds_without_schema_validation(tmp_path: Path) -> None:
    """Without schema validation (a copy of the chart with no values.schema.json, as with
    helm --skip-schema-validation) the template check still refuses SQLite with 3 replicas,
    with the same reason."""
    unchecked = tmp_path / "schedctl"
    shutil.copytree(CHART_DIR, unchecked)
    (unchecked / "values.schema.json").unlink()
    with helm.Chart.load(unchecked) as chart:
        assert chart.schema is None
        with pytest.raises(helm.HelmRenderError, match=SQLITE_REASON):
            chart.render({"replicas": 3}, name="schedctl", namespace=NAMESPACE)


def test_postgresql_allows_several_replicas() -> None:
    """The SQLite rule does not block PostgreSQL installs with several replicas."""
    assert render(merged(PRODUCTION_VALUES, {"replicas": 5}))


@pytest.mark.parametrize(
    "cron",
    ["*/5 * * *", "every 5 minutes", "* * * * * * *", "0 0 * * * ;rm", "", "60/ * * * *"],
)
def test_invalid_cron_is_rejected(cron: str) -> None:
    """A task whose cron is not a 5- or 6-field expression is rejected, naming the task's
    cron field, the bad value and what a cron expression must look like."""
    message = render_error({"tasks": [task(name="ok"), task(cron=cron)]})
    assert f"at '/tasks/1/cron': '{cron}' does not match pattern" in message
    assert (
        "at '/tasks/1': missing property 'cron must have 5 fields "
        "(minute hour day-of-month month day-of-week) or 6 (with seconds)'"
    ) in message


@pytest.mark.parametrize(
    "cron",
    [
        "30 2 * * *",
        "*/15 * * * *",
        "0 9 * * mon-fri",
        "0 0 1,15 * *",
        "0 0 L * *",
        "0 0 * * 5#3",
        "0 8-18/2 * JAN-MAR 1-5",
        "*/10 * * * * 30",
    ],
)
def test_valid_cron_is_accepted(cron: str) -> None:
    """Ordinary 5-field and 6-field (seconds) cron expressions pass the schema."""
    assert render({"tasks": [task(cron=cron)]})


@pytest.mark.parametrize(
    ("bad_task", "expected"),
    [
        (task(every="5 minutes"), "at '/tasks/0/every'"),
        (task(overlap="queue"), "at '/tasks/0/overlap': value must be one of"),
        (task(callable="not a path"), "at '/tasks/0/callable'"),
        ({"name": "t", "command": ["true"]}, "exactly one schedule: cron, every or at"),
        (task(every="5m"), "exactly one schedule: cron, every or at"),
        ({"name": "t", "every": "5m"}, "exactly one action: command or callable"),
        (task(callable="myapp.jobs:run"), "exactly one action: command or callable"),
    ],
)
def test_malformed_tasks_are_rejected(bad_task: dict[str, Any], expected: str) -> None:
    """A bad duration or policy, or a task without exactly one action and one schedule, is
    rejected at that task."""
    assert expected in render_error({"tasks": [bad_task]})


def test_duplicate_task_names_are_rejected() -> None:
    """Two tasks with one name are rejected, naming the name."""
    message = render_error({"tasks": [task(name="backup"), task(name="backup")]})
    assert 'tasks[1]: the task name "backup" is used twice' in message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"database": {"type": "postgresql"}}, "needs database.existingSecret"),
        (
            {
                "database": {
                    "type": "postgresql",
                    "url": "postgresql://a@b/c",
                    "existingSecret": "s",
                }
            },
            "set only one of database.url and database.existingSecret",
        ),
        ({"database": {"url": "postgresql://a@b/c"}}, "apply to database.type postgresql"),
        ({"database": {"type": "postgresql", "url": "mysql://a@b/c"}}, "at '/database/url'"),
    ],
)
def test_inconsistent_database_settings_are_rejected(values: dict[str, Any], expected: str) -> None:
    """A PostgreSQL install without a URL source, with two, or with a non-PostgreSQL URL, and
    a SQLite install given a URL, are rejected with what to set."""
    assert expected in render_error(values)


def _object_schemas(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for key, value in node.items():
            yield from _object_schemas(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _object_schemas(value, f"{path}/{index}")


def test_every_object_in_the_schema_is_closed() -> None:
    """Every object with named properties has additionalProperties false; the only open objects
    are string-keyed maps (labels, annotations, resource lists) whose values are typed."""
    objects = list(_object_schemas(SCHEMA))
    assert len(objects) > 20
    for path, schema in objects:
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, path
        else:
            assert isinstance(schema.get("additionalProperties"), dict), path


def test_tasks_accept_every_policy_that_task_defaults_accept() -> None:
    """Each policy settable in taskDefaults is settable per task with the same schema."""
    defs = SCHEMA["$defs"]
    for name, schema in defs["taskPolicies"]["properties"].items():
        assert defs["task"]["properties"][name] == schema, name


def test_a_fullname_the_shipped_rules_cannot_find_is_rejected() -> None:
    """With ServiceMonitor and PrometheusRule on, a fullnameOverride without "schedctl" is
    rejected: the scrape job is the Service name and the rules select up{job=~".*schedctl.*"}."""
    message = render_error(merged(PRODUCTION_VALUES, {"fullnameOverride": "jobs"}))
    assert 'the ServiceMonitor\'s job is the Service name "jobs"' in message
    assert render(merged(PRODUCTION_VALUES, {"fullnameOverride": "jobs-schedctl"}))


def test_a_grafana_url_without_a_scheme_is_rejected() -> None:
    """exporter.grafanaUrl must be an http(s) URL (the exporter refuses anything else too)."""
    message = render_error({"exporter": {"grafanaUrl": "grafana.example.com"}})
    assert "/exporter/grafanaUrl" in message and "grafana.example.com" in message
