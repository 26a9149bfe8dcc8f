"""The Python client: create, change, remove and drive tasks from any process that can reach
the database; no scheduler is needed in that process.

    from scheduler_core import Client

    with Client("postgresql://sched@db/sched") as client:
        client.add_task({"name": "report", "callable": "app.jobs:report", "cron": "0 6 * * *"})
        name = client.schedule_once("app.jobs:remind", at=when, kwargs={"user": 42})
        client.run_now("report", kwargs={"dry_run": True})

Tasks created here are owned by the source ``api``; tasks of a task file or of ``@task``
functions can be paused, resumed and run, but not changed or removed here. Validation is the
task file's, so an error names the field and the value. Running schedulers pick changes up
at their next poll.
"""

from __future__ import annotations

import copy
import getpass
import inspect
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler_core.clock import Clock, DatabaseClock
from scheduler_core.config import parse_task_document, parse_task_mapping
from scheduler_core.db import check_schema, create_db_engine
from scheduler_core.store import Store
from scheduler_core.store.tasks_part import API_SOURCE
from scheduler_core.tasks import TaskDefinition

__all__ = ["Client", "default_actor"]

TaskSpec = Mapping[str, Any] | TaskDefinition
#: The keys that choose a schedule: giving one in an update replaces the others.
_SCHEDULE_KINDS = ("cron", "every", "at")
_EVERY_ONLY = ("jitter", "anchor")


def default_actor() -> str:
    """``user@host`` of this process: who the audit events say acted."""
    try:
        user = getpass.getuser()
    except Exception:  # no name for this uid (containers): the number will do
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def callable_ref(action: str | Callable[..., Any]) -> str:
    """``module:qualname`` of a module-level function, or ``action`` when already a reference."""
    if isinstance(action, str):
        return action
    module = inspect.getmodule(action)
    qualname = getattr(action, "__qualname__", "")
    if module is None or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(f"{action!r} is not a module-level function; pass 'module:function'")
    return f"{module.__name__}:{qualname}"


class Client:
    """Tasks and runs of one schedctl database. Thread-safe; close it (or use ``with``)."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        engine: sa.Engine | None = None,
        actor: str | None = None,
        clock: Clock | None = None,
        check: bool = True,
    ) -> None:
        if (engine is None) == (database_url is None):
            raise ValueError("give exactly one of database_url and engine=")
        self._owns_engine = engine is None
        self.engine = engine if engine is not None else create_db_engine(str(database_url))
        if check:  # the schema revision this version needs (off: the caller checks it)
            check_schema(self.engine)
        self.actor = actor or default_actor()
        self.clock: Clock = clock or DatabaseClock(self.engine)
        self.store = Store(self.engine, instance_id=f"client:{self.actor}"[:200])

    # ------------------------------------------------------------------ tasks
    def add_task(self, task: TaskSpec) -> str:
        """Create one task (a task-file mapping, or a definition); returns its name."""
        return self.add_tasks([task])[0]

    def create_task(self, task: TaskSpec) -> dict[str, Any]:
        """Create one task (as ``add_task``) and return it as ``get_task`` shows it."""
        [definition] = _definitions([task])
        return self.store.create_task(definition, now=self.clock.now(), by=self.actor)

    def add_tasks(self, tasks: Iterable[TaskSpec]) -> list[str]:
        """Create several tasks in one transaction: all of them, or none on any error."""
        definitions = _definitions(list(tasks))
        return self.store.add_tasks(definitions, now=self.clock.now(), by=self.actor)

    def update_task(self, name: str, **changes: Any) -> None:
        """Change an api task: any task-file key (``every="10m"``, ``kwargs={...}``,
        ``enabled=False``, ``retries=...``). A new schedule key replaces the old one."""
        stored, _source = self.store.stored_definition(name)
        if "name" in changes and changes["name"] != name:
            raise ValueError("a task cannot be renamed; remove it and add it under the new name")
        merged = merge_changes(stored, changes)
        definition = _parse_one(merged)
        self.store.update_task(definition, now=self.clock.now(), by=self.actor)

    def remove_task(self, name: str) -> None:
        """Delete an api task; its run history stays."""
        self.store.remove_task(name, now=self.clock.now(), by=self.actor, source=API_SOURCE)

    def schedule_once(
        self,
        action: str | Callable[..., Any],
        *,
        at: datetime,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        **fields: Any,
    ) -> str:
        """A one-time task calling ``action(*args, **kwargs)`` at ``at`` (an aware datetime);
        returns its name, generated (``once-...``, unique) when none is given."""
        if at.tzinfo is None:
            raise ValueError(f"at: {at.isoformat()!r} needs a time zone (an aware datetime)")
        mapping: dict[str, Any] = {
            "name": name or f"once-{uuid.uuid4().hex[:16]}",
            "callable": callable_ref(action),
            "at": at.isoformat(),
            **fields,
        }
        if args:
            mapping["args"] = list(args)
        if kwargs:
            mapping["kwargs"] = dict(kwargs)
        return self.add_task(mapping)

    def get_task(self, name: str) -> dict[str, Any]:
        """Task ``name``: its state (as ``list_tasks``), source and stored definition."""
        [document] = self.store.list_tasks(now=self.clock.now(), name=name)
        definition, source = self.store.stored_definition(name)
        return {**document, "source": source, "definition": definition}

    def list_tasks(self) -> list[dict[str, Any]]:
        """Every task with its schedule, next and last run, failures and badge."""
        return self.store.list_tasks(now=self.clock.now())

    # ------------------------------------------------------------------ controls
    def run_now(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """One extra run as soon as a scheduler polls; ``args``/``kwargs`` replace the task's
        own for that run only (callable tasks)."""
        self.store.run_now(name, now=self.clock.now(), by=self.actor, args=args, kwargs=kwargs)

    def pause(self, name: str, reason: str) -> None:
        self.store.pause(name, reason=reason, by=self.actor, now=self.clock.now())

    def resume(self, name: str) -> None:
        self.store.resume(name, now=self.clock.now(), by=self.actor)

    def emergency_stop(self, reason: str) -> tuple[int, int]:
        """Pause every task and cancel every running run: (tasks paused, runs flagged)."""
        return self.store.emergency_stop(reason=reason, by=self.actor, now=self.clock.now())

    def cancel(self, run_id: int, reason: str) -> str:
        """Ask the run's scheduler to stop it; returns the run's status when asked."""
        return self.store.request_cancel(run_id, reason=reason, by=self.actor, now=self.clock.now())

    # ------------------------------------------------------------------ runs
    def list_runs(self, **filters: Any) -> list[dict[str, Any]]:
        """Run history, newest first (``task=``, ``status=``, ``since=``, ``limit=``, ...)."""
        return self.store.list_runs(**filters)

    def get_run(self, run_id: int) -> dict[str, Any]:
        return self.store.get_run(run_id)

    # ------------------------------------------------------------------ lifecycle
    def as_actor(self, actor: str) -> Client:
        """This client (same engine and clock) acting as ``actor``; closing it closes nothing."""
        other = copy.copy(self)
        other.actor = actor
        other._owns_engine = False
        return other

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merge_changes(stored: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` with ``changes`` applied; a new schedule kind replaces the stored one."""
    merged = dict(stored)
    if any(kind in changes for kind in _SCHEDULE_KINDS):
        for key in (*_SCHEDULE_KINDS, *_EVERY_ONLY):
            merged.pop(key, None)
    merged.update(changes)
    return {k: v for k, v in merged.items() if v is not None or k in changes}


def _parse_one(mapping: Mapping[str, Any]) -> TaskDefinition:
    return parse_task_mapping(mapping, defaults={}, source=API_SOURCE, check_callables=False)


def _definitions(tasks: Sequence[TaskSpec]) -> list[TaskDefinition]:
    """Definitions of ``tasks``; ConfigError lists every problem of every mapping at once."""
    if all(isinstance(t, TaskDefinition) for t in tasks):
        return [t for t in tasks if isinstance(t, TaskDefinition)]
    mappings = [t.to_dict() if isinstance(t, TaskDefinition) else t for t in tasks]
    return parse_task_document({"tasks": mappings}, source=API_SOURCE, check_callables=False)
