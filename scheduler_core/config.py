"""The task file: YAML in, validated TaskDefinitions out, with every error named.

Validation collects all problems before reporting, each with the file, the task, the field
and the value, so one run of ``schedctl validate`` shows everything to fix.
"""

# long: the task-file grammar is one validator (files, the client, the admin API and stored
# definitions share it), each field's rule next to its error message
from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from scheduler_core.alert_policy import merge_alert_policies, parse_alert_policy
from scheduler_core.durations import parse_duration
from scheduler_core.errors import ConfigError, ConfigIssue
from scheduler_core.output_policy import OUTPUT_KEYS, parse_output_fields
from scheduler_core.schedules import (
    AtSchedule,
    CronSchedule,
    IntervalSchedule,
    Schedule,
    load_timezone,
)
from scheduler_core.tasks import (
    BACKOFF_KINDS,
    MISFIRE_POLICIES,
    OVERLAP_POLICIES,
    Action,
    CallableAction,
    CommandAction,
    Policies,
    RetryPolicy,
    TaskDefinition,
    resolve_callable,
)

__all__ = ["definition_from_json", "parse_task_document", "parse_task_mapping"]

MAX_NAME_LENGTH = 200
POLICY_KEYS = frozenset(
    {
        "timezone", "max_runtime", "timeout", "timeout_grace", "retries", "overlap",
        "max_concurrency", "misfire", "misfire_grace", "catchup_window", "enabled", "alerts",
    }
) | OUTPUT_KEYS  # fmt: skip
ACTION_KEYS = frozenset({"callable", "command"})
SCHEDULE_KEYS = frozenset({"cron", "every", "at"})
TASK_KEYS = (
    POLICY_KEYS
    | ACTION_KEYS
    | SCHEDULE_KEYS
    | {"name", "args", "kwargs", "env", "cwd", "inherit_env", "jitter", "anchor"}
    | {"start", "end", "max_runs", "description"}
)
RETRY_KEYS = frozenset({"max", "backoff", "delay", "max_delay", "jitter"})


class _Collector:
    """Gathers issues for one source; ``field()`` runs a parser and records its ValueError."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[ConfigIssue] = []

    def add(self, task: str | None, field: str, value: object, message: str) -> None:
        self.issues.append(
            ConfigIssue(source=self.source, task=task, field=field, value=value, message=message)
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole_number(
    data: Mapping[str, Any],
    key: str,
    low: int,
    high: int,
    task: str | None,
    out: _Collector,
    *,
    prefix: str = "",
) -> int | None:
    """``data[key]`` when it is a whole number from ``low`` to ``high``; else None, reported."""
    value = data[key]
    if _is_int(value) and low <= value <= high:
        return int(value)
    out.add(task, prefix + key, value, f"must be a whole number from {low} to {high}")
    return None


def _suggest(key: str, allowed: frozenset[str]) -> str:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    return f"unknown field; did you mean {close[0]!r}?" if close else "unknown field"


def _parse_datetime(value: object, timezone: str) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"expected an ISO-8601 date-time like '2026-12-01T09:00:00+01:00', got {value!r}"
            ) from None
    else:
        raise ValueError(f"expected an ISO-8601 date-time, got {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=load_timezone(timezone))
    return parsed


def _parse_policies(
    data: Mapping[str, Any], base: Policies, task: str | None, out: _Collector
) -> Policies:
    values: dict[str, Any] = {}

    def duration(key: str, *, allow_none: bool = True, allow_zero: bool = False) -> None:
        if key not in data:
            return
        raw = data[key]
        if raw is None and allow_none:
            values[key] = None
            return
        try:
            values[key] = parse_duration(raw, allow_zero=allow_zero).total_seconds()
        except ValueError as exc:
            out.add(task, key, raw, str(exc))

    def choice(key: str, allowed: tuple[str, ...]) -> None:
        if key in data:
            if data[key] in allowed:
                values[key] = data[key]
            else:
                out.add(task, key, data[key], f"must be one of {', '.join(allowed)}")

    if "timezone" in data:
        try:
            load_timezone(data["timezone"])
            values["timezone"] = data["timezone"]
        except ValueError as exc:
            out.add(task, "timezone", data["timezone"], str(exc))
    duration("max_runtime")
    duration("timeout")
    duration("timeout_grace", allow_none=False, allow_zero=True)
    duration("misfire_grace", allow_none=False, allow_zero=True)
    duration("catchup_window")
    choice("overlap", OVERLAP_POLICIES)
    choice("misfire", MISFIRE_POLICIES)
    if "max_concurrency" in data:
        limit = _whole_number(data, "max_concurrency", 1, 10_000, task, out)
        if limit is not None:
            values["max_concurrency"] = limit
    if "enabled" in data:
        if isinstance(data["enabled"], bool):
            values["enabled"] = data["enabled"]
        else:
            out.add(task, "enabled", data["enabled"], "must be true or false")
    if "retries" in data:
        retries = _parse_retries(data["retries"], base.retries, task, out)
        if retries is not None:
            values["retries"] = retries
    output, issues = parse_output_fields(data)
    alerts, alert_issues = parse_alert_policy(data.get("alerts"))
    merged_alerts, merge_issues = merge_alert_policies(base.alerts, alerts)
    for field, value, message in [*issues, *alert_issues, *merge_issues]:
        out.add(task, field, value, message)
    if output:
        values["output"] = dataclasses.replace(base.output, **output)
    merged = {**base.__dict__, **values, "alerts": merged_alerts}
    return Policies(**merged)


#: Policies already parsed, keyed by the base's identity and the task's raw policy values
#: (the base kept with the result: an id is only unique while its object lives). A file of
#: 10,000 tasks, and a scheduler re-reading their stored definitions, repeat a handful of
#: policy sets over one base each (the bases come from here too, so they stay the same
#: objects); hashing a base by value, for every task, cost more than parsing its policies.
_POLICY_MEMO: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Policies, Policies]] = {}
_POLICY_MEMO_LIMIT = 1024


def _memo_policies(
    data: Mapping[str, Any], base: Policies, task: str | None, out: _Collector
) -> Policies:
    """``_parse_policies`` of ``data`` over ``base``, memoised."""
    key = (id(base), tuple(sorted((k, repr(v)) for k, v in data.items() if k in POLICY_KEYS)))
    cached = _POLICY_MEMO.get(key)
    if cached is not None and cached[0] is base:
        return cached[1]
    before = len(out.issues)
    policies = _parse_policies(data, base, task, out)
    if len(out.issues) == before and len(_POLICY_MEMO) < _POLICY_MEMO_LIMIT:
        _POLICY_MEMO[key] = (base, policies)  # only clean results: a bad value reports each time
    return policies


_DEFAULT_POLICIES = Policies()


def _parse_retries(
    raw: object, base: RetryPolicy, task: str | None, out: _Collector
) -> RetryPolicy | None:
    if _is_int(raw):
        raw = {"max": raw}
    if not isinstance(raw, Mapping):
        out.add(
            task, "retries", raw, "must be a number of retries or a mapping {max, backoff, delay}"
        )
        return None
    ok = True
    values: dict[str, Any] = {}
    for key in raw:
        if key not in RETRY_KEYS:
            out.add(task, f"retries.{key}", raw[key], _suggest(str(key), RETRY_KEYS))
            ok = False
    if "max" in raw:
        values["max"] = _whole_number(raw, "max", 0, 100, task, out, prefix="retries.")
        ok = ok and values["max"] is not None  # RetryPolicy is not built when not ok
    if "backoff" in raw:
        if raw["backoff"] in BACKOFF_KINDS:
            values["backoff"] = raw["backoff"]
        else:
            out.add(task, "retries.backoff", raw["backoff"], "must be fixed or exponential")
            ok = False
    for key in ("delay", "max_delay", "jitter"):
        if key in raw:
            try:
                values[key] = parse_duration(raw[key], allow_zero=True).total_seconds()
            except ValueError as exc:
                out.add(task, f"retries.{key}", raw[key], str(exc))
                ok = False
    return RetryPolicy(**{**base.__dict__, **values}) if ok else None


def _exactly_one(
    data: Mapping[str, Any], keys: tuple[str, ...], task: str, out: _Collector, what: str
) -> str | None:
    """The one key of ``keys`` that ``data`` has; else an error naming what it has."""
    present = [k for k in keys if k in data]
    if len(present) == 1:
        return present[0]
    choices = " or ".join(f"'{k}'" for k in keys).replace("' or '", "', '", len(keys) - 2)
    out.add(
        task, "/".join(keys), {k: data[k] for k in present} or None,
        f"a task needs exactly one {what}: {choices}",
    )  # fmt: skip
    return None


def _only_for(
    data: Mapping[str, Any], keys: tuple[str, ...], kind: str, task: str, out: _Collector
) -> None:
    for key in keys:
        if key in data:
            out.add(task, key, data[key], f"only valid for '{kind}' tasks")


def _parse_action(
    data: Mapping[str, Any], task: str, out: _Collector, check: bool
) -> Action | None:
    kind = _exactly_one(data, ("callable", "command"), task, out, "action")
    if kind == "callable":
        _only_for(data, ("env", "cwd", "inherit_env"), "command", task, out)
        return _parse_callable(data, task, out, check)
    if kind == "command":
        _only_for(data, ("args", "kwargs"), "callable", task, out)
        return _parse_command(data, task, out)
    return None


def _parse_callable(
    data: Mapping[str, Any], task: str, out: _Collector, check: bool
) -> CallableAction | None:
    ref = data["callable"]
    if not isinstance(ref, str) or not ref.strip():
        out.add(task, "callable", ref, "must be 'package.module:function'")
        return None
    if check:
        try:
            resolve_callable(ref)
        except ValueError as exc:
            out.add(task, "callable", ref, str(exc))
            return None
    args = data.get("args", [])
    kwargs = data.get("kwargs", {})
    if not isinstance(args, list):
        out.add(task, "args", args, "must be a list")
        return None
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        out.add(task, "kwargs", kwargs, "must be a mapping of names to values")
        return None
    return CallableAction(ref=ref, args=tuple(args), kwargs=dict(kwargs))


def _parse_command(data: Mapping[str, Any], task: str, out: _Collector) -> CommandAction | None:
    argv = data["command"]
    if isinstance(argv, str):
        out.add(
            task, "command", argv, "must be a list of arguments, e.g. ['pg_dump', '--file', 'x']"
        )
        return None
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str | int | float) for a in argv)
    ):
        out.add(task, "command", argv, "must be a non-empty list of arguments")
        return None
    env = data.get("env", {})
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
        for k, v in env.items()
    ):
        out.add(task, "env", env, "must be a mapping of variable names to string values")
        return None
    cwd = data.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        out.add(task, "cwd", cwd, "must be a directory path")
        return None
    inherit = data.get("inherit_env", False)
    if not isinstance(inherit, bool):
        out.add(task, "inherit_env", inherit, "must be true or false")
        return None
    return CommandAction(
        argv=tuple(str(a) for a in argv),
        env={k: str(v) for k, v in env.items()},
        cwd=cwd,
        inherit_env=inherit,
    )


def _parse_schedule(
    data: Mapping[str, Any], task: str, timezone: str, out: _Collector
) -> Schedule | None:
    kind = _exactly_one(data, ("cron", "every", "at"), task, out, "schedule")
    if kind is None:
        return None
    for key in ("jitter", "anchor"):
        if key in data and kind != "every":
            out.add(task, key, data[key], "only valid with 'every'")
    try:
        if kind == "cron":
            if not isinstance(data["cron"], str):
                raise ValueError(f"invalid cron expression {data['cron']!r}: must be a string")
            return CronSchedule(expression=data["cron"].strip(), timezone=timezone)
        if kind == "every":
            every = parse_duration(data["every"]).total_seconds()
            jitter = 0.0
            if "jitter" in data:
                try:
                    jitter = parse_duration(data["jitter"], allow_zero=True).total_seconds()
                except ValueError as exc:
                    out.add(task, "jitter", data["jitter"], str(exc))
                    return None
            kwargs: dict[str, Any] = {"every": every, "jitter": jitter, "seed": task}
            if "anchor" in data:
                try:
                    kwargs["anchor"] = _parse_datetime(data["anchor"], timezone)
                except ValueError as exc:
                    out.add(task, "anchor", data["anchor"], str(exc))
                    return None
            try:
                return IntervalSchedule(**kwargs)
            except ValueError as exc:
                out.add(task, "jitter", data.get("jitter"), str(exc))
                return None
        return AtSchedule(at=_parse_datetime(data["at"], timezone))
    except ValueError as exc:
        out.add(task, kind, data[kind], str(exc))
        return None


def parse_task_mapping(
    data: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any],
    source: str,
    check_callables: bool = True,
    collector: _Collector | None = None,
) -> TaskDefinition:
    """Parse one task mapping; raise ConfigError unless a collector gathers the issues."""
    base = _memo_policies(defaults, _DEFAULT_POLICIES, None, _Collector(source))
    return _parse_task(
        data, base, source=source, check_callables=check_callables, collector=collector
    )


# long: one task's fields in task-file order, every error collected at once
def _parse_task(
    data: Mapping[str, Any],
    base: Policies,
    *,
    source: str,
    check_callables: bool,
    collector: _Collector | None,
) -> TaskDefinition:
    """:func:`parse_task_mapping` over the policies of its defaults, ``base``."""
    out = collector or _Collector(source)
    before = len(out.issues)
    name = data.get("name")
    label = name if isinstance(name, str) else None
    if not isinstance(name, str) or not name.strip():
        out.add(label, "name", name, "every task needs a non-empty 'name'")
    elif len(name) > MAX_NAME_LENGTH:
        out.add(label, "name", name[:40] + "...", f"longer than {MAX_NAME_LENGTH} characters")
    for key in data:
        if key not in TASK_KEYS:
            out.add(label, str(key), data[key], _suggest(str(key), frozenset(TASK_KEYS)))
    policies = _memo_policies(data, base, label, out)
    action = _parse_action(data, label or "?", out, check_callables)
    schedule = _parse_schedule(data, label or "?", policies.timezone, out)
    start = end = None
    for key in ("start", "end"):
        if data.get(key) is not None:
            try:
                parsed = _parse_datetime(data[key], policies.timezone)
                start, end = (parsed, end) if key == "start" else (start, parsed)
            except ValueError as exc:
                out.add(label, key, data[key], str(exc))
    if start and end and end <= start:
        out.add(label, "end", data["end"], "must be after 'start'")
    max_runs = data.get("max_runs")
    if max_runs is not None and (
        not isinstance(max_runs, int) or isinstance(max_runs, bool) or max_runs < 1
    ):
        out.add(label, "max_runs", max_runs, "must be a whole number of at least 1")
    # max_runtime > timeout is allowed: stuck alerts after max_runtime, the kill comes at timeout.
    description = data.get("description", "")
    if not isinstance(description, str):
        out.add(label, "description", description, "must be text")
    if len(out.issues) > before or action is None or schedule is None or label is None:
        if collector is None:
            raise ConfigError(out.issues)
        raise _Invalid
    return TaskDefinition(
        name=label,
        action=action,
        schedule=schedule,
        policies=policies,
        start=start,
        end=end,
        max_runs=max_runs,
        description=description if isinstance(description, str) else "",
        source=source,
    )


class _Invalid(Exception):
    """Internal: the task had issues, already recorded in the collector."""


def parse_task_document(
    document: object, *, source: str, check_callables: bool = True
) -> list[TaskDefinition]:
    """Parse a loaded YAML document; raise ConfigError listing every issue."""
    out = _Collector(source)
    if not isinstance(document, Mapping):
        out.add(
            None, "<document>", type(document).__name__, "expected a mapping with a 'tasks' list"
        )
        raise ConfigError(out.issues)
    for key in document:
        if key not in ("defaults", "tasks"):
            out.add(
                None, str(key), document[key], _suggest(str(key), frozenset({"defaults", "tasks"}))
            )
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        out.add(None, "defaults", defaults, "must be a mapping of policy fields")
        defaults = {}
    for key in defaults:
        if key not in POLICY_KEYS:
            out.add(None, f"defaults.{key}", defaults[key], _suggest(str(key), POLICY_KEYS))
    base = _memo_policies(defaults, _DEFAULT_POLICIES, None, out)  # once, not per task
    tasks_raw = document.get("tasks")
    if not isinstance(tasks_raw, list):
        out.add(None, "tasks", tasks_raw, "must be a list of tasks")
        raise ConfigError(out.issues)
    definitions: list[TaskDefinition] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(tasks_raw):
        if not isinstance(raw, Mapping):
            out.add(None, f"tasks[{index}]", raw, "each task must be a mapping")
            continue
        name = raw.get("name")
        if isinstance(name, str):
            if name in seen:
                out.add(name, "name", name, f"duplicate task name (also task #{seen[name] + 1})")
            else:
                seen[name] = index
        try:
            definitions.append(
                _parse_task(
                    raw, base, source=source, check_callables=check_callables, collector=out
                )
            )
        except _Invalid:
            continue
    if out.issues:
        raise ConfigError(out.issues)
    return definitions


def definition_from_json(text: str, *, source: str = "<database>") -> TaskDefinition:
    """Rebuild a definition stored by ``TaskDefinition.to_json`` (without resolving callables)."""
    return parse_task_mapping(json.loads(text), defaults={}, source=source, check_callables=False)
