"""The output policy fields of a task file (keep_output, output_limit, log_level,
result_metrics, redact): defaults, overrides, every bad value named, stable digests."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler_core.config import parse_task_document
from scheduler_core.errors import ConfigError
from scheduler_core.output_policy import DEFAULT_OUTPUT_LIMIT, OutputPolicy

TASK = {"name": "t", "command": ["true"], "every": "1m"}


def parse(task: dict[str, Any], defaults: dict[str, Any] | None = None) -> OutputPolicy:
    [definition] = parse_task_document(
        {"defaults": defaults or {}, "tasks": [{**TASK, **task}]}, source="test"
    )
    return definition.policies.output


def test_defaults_keep_everything_within_64_kib() -> None:
    """Without any field: keep_output always, 64 KiB, INFO, no metrics, no extra patterns."""
    assert parse({}) == OutputPolicy()
    assert OutputPolicy().output_limit == DEFAULT_OUTPUT_LIMIT == 65536


def test_fields_per_task_and_from_defaults() -> None:
    """defaults: sets the fields for every task; a task's own value wins."""
    policy = parse(
        {"keep_output": "never", "result_metrics": ["files_moved", "bytes_moved"]},
        defaults={"keep_output": "failures", "output_limit": "1MiB", "log_level": "warning"},
    )
    assert policy.keep_output == "never"
    assert policy.output_limit == 1024 * 1024 and policy.log_level == "WARNING"
    assert policy.result_metrics == ("files_moved", "bytes_moved")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("keep_output", "sometimes"),
        ("output_limit", 10),
        ("output_limit", "lots"),
        ("log_level", "LOUD"),
        ("result_metrics", "files_moved"),
        ("result_metrics", ["files moved"]),
        ("redact", ["(unclosed"]),
    ],
)
def test_a_bad_value_is_named_with_the_field(field: str, value: object) -> None:
    """Each bad value is an error naming the task, the field and the value."""
    with pytest.raises(ConfigError) as caught:
        parse({field: value})
    [issue] = caught.value.issues
    assert (issue.task, issue.field, issue.value) == ("t", field, value)


def test_keeps_follows_the_policy() -> None:
    """always keeps every run's output, failures only those that did not succeed, never none."""
    statuses = ("success", "failure", "timeout", "cancelled")
    assert [OutputPolicy(keep_output="always").keeps(s) for s in statuses] == [True] * 4
    assert [OutputPolicy(keep_output="failures").keeps(s) for s in statuses] == [
        False,
        True,
        True,
        True,
    ]
    assert not any(OutputPolicy(keep_output="never").keeps(s) for s in statuses)


def test_a_task_without_the_fields_keeps_its_stored_form() -> None:
    """The stored definition names only fields that differ from the defaults, so tasks
    stored before these fields existed keep their digest (a sync does not rewrite them)."""
    [plain] = parse_task_document({"tasks": [TASK]}, source="test")
    assert not {"keep_output", "output_limit", "log_level", "result_metrics", "redact"} & set(
        plain.to_dict()
    )
    [with_fields] = parse_task_document(
        {"tasks": [{**TASK, "keep_output": "failures", "redact": ["secret-\\d+"]}]}, source="test"
    )
    stored = with_fields.to_dict()
    assert stored["keep_output"] == "failures" and stored["redact"] == ["secret-\\d+"]
    [again] = parse_task_document({"tasks": [stored]}, source="test")
    assert again.policies.output == with_fields.policies.output
