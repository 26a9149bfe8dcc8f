"""The read-only JSON API: ``/api/v1/status`` from the snapshot, run history through the
store's run query (:mod:`scheduler_core.store.run_queries`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from multidict import MultiMapping

from exporter.errors import ApiError
from exporter.refresh import RefreshState
from scheduler_core.durations import SINCE_FORMS, parse_since
from scheduler_core.models import RUN_STATUSES
from scheduler_core.store import Store
from scheduler_core.store.run_queries import read_runs_page
from scheduler_core.store.snapshot import BADGES, InstanceSnapshot, Snapshot, TaskSnapshot

__all__ = [
    "RunsQuery",
    "fetch_run",
    "fetch_runs",
    "json_ready",
    "parse_runs_query",
    "status_document",
]

MAX_LIMIT = 500
DEFAULT_LIMIT = 50


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _task_document(task: TaskSnapshot) -> dict[str, Any]:
    return {
        "name": task.name,
        "badge": task.badge,
        "schedule_type": task.schedule_type,
        "schedule": task.schedule,
        "timezone": task.timezone,
        "action_kind": task.action_kind,
        "enabled": task.enabled,
        "paused": task.paused,
        "pause_reason": task.pause_reason,
        "next_run_at": _iso(task.next_run_at),
        "last_started_at": _iso(task.last_started_at),
        "last_finished_at": _iso(task.last_finished_at),
        "last_success_at": _iso(task.last_success_at),
        "last_failure_at": _iso(task.last_failure_at),
        "last_duration_seconds": task.last_duration_seconds,
        "last_status": task.last_status,
        "last_error_message": task.last_error_message,
        "running": task.running,
        "stuck": task.stuck,
        "late": task.late,
        "consecutive_failures": task.consecutive_failures,
        "max_runtime_seconds": task.max_runtime_seconds,
        "expected_interval_seconds": task.expected_interval_seconds,
        "runs_total": dict(task.runs_total),
        "missed_runs_total": task.missed_runs_total,
        "open_alarms": sorted(task.open_alarms),
        # The task's alerts: block, durations in seconds ({} without one), and whether its
        # deadline was missed (null without a deadline).
        "alerts": {} if task.alert_policy is None else task.alert_policy.to_dict(),
        "deadline_missed": task.deadline_missed,
    }


def _instance_document(instance: InstanceSnapshot, now: datetime) -> dict[str, Any]:
    return {
        "instance_id": instance.instance_id,
        "hostname": instance.hostname,
        "state": instance.state,
        "version": instance.version,
        "started_at": _iso(instance.started_at),
        "last_heartbeat_at": _iso(instance.last_heartbeat_at),
        "heartbeat_age_seconds": round((now - instance.last_heartbeat_at).total_seconds(), 3),
        "lease_seconds": instance.lease_seconds,
        "running_runs": instance.running_runs,
    }


def status_document(state: RefreshState, now: datetime) -> dict[str, Any]:
    """The body of ``GET /api/v1/status`` (the caller checks that a snapshot exists)."""
    snapshot: Snapshot | None = state.snapshot
    assert snapshot is not None
    age = state.snapshot_age(now)
    return {
        "database_up": state.up,
        "last_error": state.last_error,
        "snapshot_taken_at": _iso(snapshot.taken_at),
        "snapshot_age_seconds": None if age is None else round(age, 3),
        "instances": [_instance_document(i, now) for i in snapshot.instances],
        "task_count": len(snapshot.tasks),
        "task_counts": {badge: snapshot.badge_counts[badge] for badge in BADGES},
        # A paused task's run can still be stuck, so this is not the same as the stuck badge.
        "any_stuck": any(t.stuck for t in snapshot.tasks),
        "stuck_tasks": [t.name for t in snapshot.tasks if t.stuck],
        "tasks": [_task_document(t) for t in snapshot.tasks],
    }


@dataclass(frozen=True, kw_only=True)
class RunsQuery:
    """A validated request for one page of a task's run history, newest first."""

    task: str
    limit: int = DEFAULT_LIMIT
    before_id: int | None = None
    offset: int | None = None
    status: str | None = None
    since: datetime | None = None
    instance_id: str | None = None


_RUNS_PARAMETERS = ("limit", "before_id", "offset", "status", "since", "instance_id")


def _bad(parameter: str, message: str) -> ApiError:
    return ApiError(400, f"query parameter {parameter!r} {message}", code="invalid_parameter")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "...")


def _int(params: MultiMapping[str], name: str, low: int, high: int | None) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise _bad(name, f"must be an integer {bounds}, got {_shown(raw)}")
    return value


def parse_runs_query(
    task: str, params: MultiMapping[str], *, now: datetime | None = None
) -> RunsQuery:
    """Validate the query string; raise ApiError(400) naming the first bad parameter.

    ``since`` is what ``schedctl runs --since`` takes (one parser, scheduler_core.durations
    ``parse_since``): a duration back from ``now`` (the wall clock by default) or an ISO time.
    """
    for name in params:
        if name not in _RUNS_PARAMETERS:
            raise _bad(name, f"is not known; use one of {', '.join(_RUNS_PARAMETERS)}")
        if len(params.getall(name)) > 1:
            raise _bad(name, "is given more than once")
    limit = _int(params, "limit", 1, MAX_LIMIT)
    before_id = _int(params, "before_id", 1, None)
    offset = _int(params, "offset", 0, None)
    if before_id is not None and offset is not None:
        raise _bad("offset", "cannot be combined with 'before_id'; page with one or the other")
    status = params.get("status")
    if status is not None and status not in RUN_STATUSES:
        raise _bad("status", f"must be one of {', '.join(RUN_STATUSES)}, got {_shown(status)}")
    since = None
    raw_since = params.get("since")
    if raw_since is not None:
        try:
            since = parse_since(raw_since, now=datetime.now(UTC) if now is None else now)
        except ValueError:
            raise _bad("since", f"must be {SINCE_FORMS}, got {_shown(raw_since)}") from None
    instance_id = params.get("instance_id")
    if instance_id is not None and not instance_id:
        raise _bad("instance_id", "must not be empty")
    return RunsQuery(
        task=task,
        limit=limit if limit is not None else DEFAULT_LIMIT,
        before_id=before_id,
        offset=offset,
        status=status,
        since=since,
        instance_id=instance_id,
    )


def fetch_runs(engine: sa.Engine, query: RunsQuery) -> dict[str, Any] | None:
    """One page of runs as the response document, or None when the task does not exist."""
    page = read_runs_page(
        engine, task=query.task, limit=query.limit, before_id=query.before_id,
        offset=query.offset, status=query.status, since=query.since,
        instance_id=query.instance_id,
    )  # fmt: skip
    if page is None:
        return None
    more = page.more
    runs = [
        {key: (_iso(value) if isinstance(value, datetime) else value)
         for key, value in row._mapping.items()}
        for row in page.rows
    ]  # fmt: skip
    for run in runs:
        run["task"] = run.pop("task_name")
        run["cancel_requested"] = bool(run["cancel_requested"])
        # Where its output is: a dashboard's recent-runs link lands here, one click from it.
        run["output_url"] = f"/api/v1/runs/{run['id']}/output"
        run["url"] = f"/api/v1/runs/{run['id']}"
    return {
        "task": query.task,
        "limit": query.limit,
        "runs": runs,
        "next_before_id": runs[-1]["id"] if more else None,
        "next_offset": (query.offset or 0) + query.limit if more and query.before_id is None
        else None,
    }  # fmt: skip


def json_ready(row: dict[str, Any]) -> dict[str, Any]:
    """A run (or any row) as JSON-ready values: times in ISO 8601."""
    return {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in row.items()}


def fetch_run(engine: sa.Engine, run_id: int) -> dict[str, Any]:
    """Run ``run_id`` with what it said (output, result), as ``GET /api/v1/runs/{id}`` shows
    it: the row's fields, ``task`` for ``task_name``. RunLookupError when there is none."""
    run = json_ready(Store(engine, instance_id="exporter").get_run(run_id))
    run["task"] = run.pop("task_name")
    run["cancel_requested"] = bool(run["cancel_requested"])
    return run


def json_response(document: dict[str, Any], *, scrub: str | None = None) -> web.Response:
    """Serialise ``document``; ``scrub`` (a secret) is masked wherever it appears."""
    text = json.dumps(document)
    if scrub:
        text = text.replace(scrub, "***").replace(json.dumps(scrub)[1:-1], "***")
    return web.Response(text=text, content_type="application/json")
