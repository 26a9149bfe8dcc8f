"""What the task and run pages read from the database, through the store's own queries:
a task's stored definition and source, a page of its runs (``read_runs_page``, as
``/api/v1/tasks/{name}/runs``), a run with what it said (``Store.get_run``, as
``/api/v1/runs/{id}``). Blocking: the handlers run these in the exporter's API pool.

A database that cannot be read is not an error page: the pages show the snapshot they have
and say why the rest is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa

from exporter.database import describe_db_error
from scheduler_core.errors import TaskLookupError
from scheduler_core.store import Store
from scheduler_core.store.run_queries import read_runs_page

__all__ = ["DATABASE_ERRORS", "RUNS_PER_PAGE", "TaskDetails", "read_run", "read_task_details"]

#: Runs per page of a task's history.
RUNS_PER_PAGE: Final[int] = 20
#: Failures that mean "the database could not be read".
DATABASE_ERRORS: Final = (sa.exc.SQLAlchemyError, OSError, TimeoutError)


@dataclass(frozen=True, kw_only=True)
class TaskDetails:
    """The part of a task page that comes from SQL rather than the snapshot."""

    #: The stored definition (the task-file mapping), None when it could not be read.
    definition: dict[str, Any] | None = None
    source: str | None = None
    #: This page of runs, newest first (the columns of ``RUN_COLUMNS``).
    runs: list[dict[str, Any]] = field(default_factory=list)
    more_runs: bool = False
    #: The page of runs shown (from 1).
    runs_page: int = 1
    #: Why something could not be read (None when everything was).
    problem: str | None = None


def _store(engine: sa.Engine) -> Store:
    return Store(engine, instance_id="exporter-status-page")


def read_task_details(engine: sa.Engine, name: str, runs_page: int) -> TaskDetails:
    """Task ``name``'s definition, source and page ``runs_page`` of its runs."""
    try:
        definition, source = _store(engine).stored_definition(name)
        page = read_runs_page(
            engine, task=name, limit=RUNS_PER_PAGE, offset=(runs_page - 1) * RUNS_PER_PAGE
        )
    except TaskLookupError:
        return TaskDetails(runs_page=runs_page, problem="the task is not in the database")
    except DATABASE_ERRORS as exc:
        why = describe_db_error(exc, engine.url)
        return TaskDetails(runs_page=runs_page, problem=f"the database cannot be read: {why}")
    if page is None:  # removed between the two reads
        return TaskDetails(definition=definition, source=source, runs_page=runs_page)
    return TaskDetails(
        definition=definition, source=source, runs=[dict(r._mapping) for r in page.rows],
        more_runs=page.more, runs_page=runs_page,
    )  # fmt: skip


def read_run(engine: sa.Engine, run_id: int) -> dict[str, Any]:
    """Run ``run_id`` with its output and result (RunLookupError when there is none)."""
    return _store(engine).get_run(run_id)
