"""Task files: valid ones load; every invalid field is reported with file, task, field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler_core.errors import ConfigError
from scheduler_core.schedules import AtSchedule, CronSchedule, IntervalSchedule
from scheduler_core.task_files import load_task_file
from scheduler_core.tasks import CallableAction, CommandAction

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tasks.yaml"
    path.write_text(text)
    return path


def test_example_file_loads() -> None:
    """examples/tasks.yaml holds a command, a callable and a cron task with a time zone."""
    tasks = {t.name: t for t in load_task_file(REPO / "examples" / "tasks.yaml")}
    kinds = {type(t.action) for t in tasks.values()}
    assert kinds == {CallableAction, CommandAction}
    assert any(
        isinstance(t.schedule, CronSchedule) and t.schedule.timezone != "UTC"
        for t in tasks.values()
    )


def test_design_format_parses_all_schedule_kinds(tmp_path: Path) -> None:
    """The format from DESIGN.md: defaults, cron+timezone, every, at, retries mapping."""
    path = write(
        tmp_path,
        """
defaults: {timezone: UTC, max_runtime: 10m}
tasks:
  - name: nightly-backup
    command: ["pg_dump", "--file", "/backups/app.sql", "app"]
    cron: "30 2 * * *"
    timezone: Europe/Berlin
    timeout: 1h
    retries: {max: 2, backoff: exponential, delay: 30s}
  - name: refresh-cache
    callable: os.path:exists
    args: ["/"]
    every: 5m
    overlap: skip
  - name: send-report
    callable: os:getcwd
    at: "2026-12-01T09:00:00+01:00"
""",
    )
    backup, cache, report = load_task_file(path)
    assert isinstance(backup.schedule, CronSchedule) and backup.schedule.timezone == "Europe/Berlin"
    assert backup.policies.timeout == 3600 and backup.policies.max_runtime == 600
    assert backup.policies.retries.max == 2 and backup.policies.retries.delay == 30
    assert isinstance(cache.schedule, IntervalSchedule) and cache.schedule.every == 300
    assert isinstance(report.schedule, AtSchedule)


@pytest.mark.parametrize(
    ("task_yaml", "field", "value_text"),
    [
        ('cron: "61 * * * *"', "cron", "61 * * * *"),
        ('cron: "* * *"', "cron", "* * *"),
        ('cron: "0 3 * * *"\n    timezone: Mars/Olympus', "timezone", "Mars/Olympus"),
        ("every: -5s", "every", "-5s"),
        ("every: 0", "every", "0"),
        ("every: soon", "every", "soon"),
        ('at: "next tuesday"', "at", "next tuesday"),
        ("every: 1m\n    overlap: sometimes", "overlap", "sometimes"),
        ("every: 1m\n    retries: {max: -1}", "retries.max", "-1"),
        ("every: 1m\n    colour: blue", "colour", "blue"),
    ],
)
def test_bad_field_is_named(tmp_path: Path, task_yaml: str, field: str, value_text: str) -> None:
    """Each bad field is reported with the file, the task, the field and the value."""
    path = write(tmp_path, f'tasks:\n  - name: broken\n    command: ["true"]\n    {task_yaml}\n')
    with pytest.raises(ConfigError) as info:
        load_task_file(path)
    text = str(info.value)
    assert str(path) in text and "'broken'" in text and repr(field) in text and value_text in text


def test_unknown_import_path_is_named(tmp_path: Path) -> None:
    """A callable whose module does not exist is rejected, naming the import path."""
    path = write(
        tmp_path, "tasks:\n  - name: job\n    callable: no_such_module.jobs:run\n    every: 1m\n"
    )
    with pytest.raises(ConfigError, match=r"no_such_module\.jobs:run"):
        load_task_file(path)


def test_every_error_reported_at_once(tmp_path: Path) -> None:
    """Duplicate names and several bad tasks are all reported in one error."""
    path = write(
        tmp_path,
        """
tasks:
  - {name: a, command: ["true"], every: 1m}
  - {name: a, command: ["true"], every: 1m}
  - {name: b, command: ["true"], cron: "bad cron"}
  - {name: c, command: "not a list", every: 1m}
  - {name: d, command: ["true"]}
""",
    )
    with pytest.raises(ConfigError) as info:
        load_task_file(path)
    fields = {(i.task, i.field) for i in info.value.issues}
    assert ("a", "name") in fields
    assert ("b", "cron") in fields
    assert ("c", "command") in fields
    assert ("d", "cron/every/at") in fields


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    """Malformed YAML is reported with its line number, not a traceback."""
    path = write(tmp_path, "tasks:\n  - name: a\n   every: [1m\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_task_file(path)
