"""The store's run-history query: a task's runs, newest first, filtered and paged. Read-only.

One filter rule for ``schedctl runs`` (``Store.list_runs``) and the exporter's
``/api/v1/tasks/{name}/runs``: :func:`runs_select` builds the statement, :func:`read_runs_page`
reads one page of it for the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler_core import models

__all__ = ["RUN_COLUMNS", "RunsPage", "read_runs_page", "runs_select", "task_exists"]

_R = models.task_runs.c
#: The columns of a run the API shows (its traceback and output are left out).
RUN_COLUMNS: tuple[sa.Column[Any], ...] = (
    _R.id, _R.task_name, _R.scheduled_for, _R.attempt, _R.trigger, _R.status, _R.started_at,
    _R.finished_at, _R.duration_seconds, _R.error_message, _R.exit_code, _R.pid, _R.instance_id,
    _R.thread_name, _R.consecutive_failures_at_start, _R.trace_id, _R.cancel_requested,
    _R.cancel_reason, _R.missed_count, _R.missed_first_at, _R.missed_last_at,
)  # fmt: skip


def runs_select(
    columns: Sequence[sa.ColumnElement[Any]] | None = None,
    *,
    task: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    instance_id: str | None = None,
    before_id: int | None = None,
) -> sa.Select[Any]:
    """The runs matching every filter given, newest (highest id) first, without a limit.

    ``columns`` defaults to the whole row. ``since`` keeps the runs that started at or after
    it and the rows that never started (missed, skipped) recorded at or after it:
    ``COALESCE(started_at, finished_at)``. Not ``scheduled_for``: a run of missed ticks
    recorded a minute ago stands for its first tick, which may be days old.
    """
    stmt = sa.select(*columns) if columns is not None else sa.select(models.task_runs)
    if task is not None:
        stmt = stmt.where(_R.task_name == task)
    if status is not None:
        stmt = stmt.where(_R.status == status)
    if instance_id is not None:
        stmt = stmt.where(_R.instance_id == instance_id)
    if since is not None:
        stmt = stmt.where(sa.func.coalesce(_R.started_at, _R.finished_at) >= since)
    if before_id is not None:
        stmt = stmt.where(_R.id < before_id)
    return stmt.order_by(_R.id.desc())


def task_exists(conn: sa.Connection, name: str) -> bool:
    """Whether a task of that name has a schedule row."""
    schedules = models.schedules
    found = conn.execute(sa.select(schedules.c.name).where(schedules.c.name == name)).first()
    return found is not None


@dataclass(frozen=True, kw_only=True)
class RunsPage:
    """One page of a task's runs (:data:`RUN_COLUMNS`), newest first."""

    rows: list[sa.Row[Any]]
    #: Whether older runs than this page's match too.
    more: bool


def read_runs_page(
    engine: sa.Engine,
    *,
    task: str,
    limit: int,
    before_id: int | None = None,
    offset: int | None = None,
    status: str | None = None,
    since: datetime | None = None,
    instance_id: str | None = None,
) -> RunsPage | None:
    """Up to ``limit`` runs of ``task`` matching the filters (see :func:`runs_select`), after
    skipping ``offset`` of them; None when the task does not exist."""
    filters = runs_select(
        RUN_COLUMNS, task=task, status=status, since=since, instance_id=instance_id,
        before_id=before_id,
    )  # fmt: skip
    stmt = filters.limit(limit + 1)  # one extra row tells whether another page exists
    if offset:
        stmt = stmt.offset(offset)
    with engine.connect() as conn:
        exists = task_exists(conn, task)
        rows = list(conn.execute(stmt)) if exists else []
        conn.rollback()
    if not exists:
        return None
    return RunsPage(rows=rows[:limit], more=len(rows) > limit)
