"""Tasks at runtime: create, change and remove tasks without a restart, each owned by a source.

A task's ``source`` says who owns it: ``file`` (a task file's sync), ``module:<name>``
(``@task`` functions) or ``api`` (created here, by :class:`scheduler_core.Client` or the
admin API). A name owned by one source cannot be created, changed or removed by another
(:class:`TaskConflictError` names the owner); pause, resume and run-now are for everyone.
Removing a task deletes its schedule row (and its health rows, and closes its alarms); its
run history stays. Every change is an audit event with its actor.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from scheduler_core import states
from scheduler_core.errors import TaskConflictError
from scheduler_core.models import alarm_events, audit_events, schedules, task_health
from scheduler_core.store.base import StoreBase, chunks
from scheduler_core.store.controls import audit_details, require_task, write_audit
from scheduler_core.store.queries import task_document
from scheduler_core.store.sync import (
    changed_values,
    insert_task_audited,
    insert_tasks,
    names_taken_as_conflict,
)
from scheduler_core.tasks import TaskDefinition

__all__ = ["API_SOURCE", "TasksPart", "delete_tasks"]

#: The source of tasks created at runtime.
API_SOURCE = "api"


def delete_tasks(conn: sa.Connection, names: Sequence[str], *, now: datetime) -> None:
    """Delete the schedule and health rows of ``names`` and close their open alarms; their
    runs stay (history follows the retention policy)."""
    for chunk in chunks(list(names), 500):
        conn.execute(schedules.delete().where(schedules.c.name.in_(chunk)))
        conn.execute(task_health.delete().where(task_health.c.task_name.in_(chunk)))
        conn.execute(
            alarm_events.update()
            .where(alarm_events.c.task_name.in_(chunk))
            .where(alarm_events.c.closed_at.is_(None))
            .values(closed_at=now)
        )


class TasksPart(StoreBase):
    """``add_tasks``, ``update_task``, ``remove_task``, ``stored_definition``."""

    def add_tasks(
        self,
        definitions: Sequence[TaskDefinition],
        *,
        now: datetime,
        by: str,
        source: str = API_SOURCE,
    ) -> list[str]:
        """Create every task of ``definitions`` in one transaction, owned by ``source``.

        Nothing is written when any name exists already (whoever owns it):
        TaskConflictError names each with its owner. Returns the names, in order.
        """
        self._insert_audited(definitions, now=now, by=by, source=source)
        return [d.name for d in definitions]

    def create_task(
        self, definition: TaskDefinition, *, now: datetime, by: str, source: str = API_SOURCE
    ) -> dict[str, Any]:
        """Create one task (as ``add_tasks``) and return it as ``get_task`` would show it,
        built from the row written: a new task has no runs, health or alarms to read."""
        [row] = self._insert_audited([definition], now=now, by=by, source=source)
        stored = SimpleNamespace(**({c.name: None for c in schedules.c} | row))
        document = task_document(stored, None, None, [], now=now, grace=states.LATE_GRACE_SECONDS)
        return {**document, "source": source, "definition": json.loads(definition.to_json())}

    def _insert_audited(
        self, definitions: Sequence[TaskDefinition], *, now: datetime, by: str, source: str
    ) -> list[dict[str, Any]]:
        """Insert the tasks and their ``add`` audit events in one transaction. A taken name
        fails the insert (the primary key): no lookup first, one round trip saved per create."""
        names = [d.name for d in definitions]
        repeated = sorted(n for n, count in Counter(names).items() if count > 1)
        if repeated:
            raise ValueError(f"task name(s) given more than once: {', '.join(map(repr, repeated))}")
        for definition in definitions:
            self.remember_definition(definition)
        details = audit_details({"source": source})
        audits = [
            {"at": now, "actor": by[:200], "action": "add", "task_name": n, "details": details}
            for n in names
        ]
        conflicts = names_taken_as_conflict(self.engine, names, action="create")
        if len(definitions) == 1 and self.engine.dialect.name == "postgresql":
            # One statement, atomic by itself: no BEGIN and COMMIT round trips.
            with conflicts, self.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                return [
                    insert_task_audited(
                        conn, definitions[0], now=now, source=source, audit=audits[0]
                    )
                ]
        with conflicts, self.engine.begin() as conn:
            rows = insert_tasks(conn, definitions, now=now, source=source)
            for chunk in chunks(audits, 1000):
                conn.execute(audit_events.insert(), list(chunk))
        return rows

    def update_task(
        self, definition: TaskDefinition, *, now: datetime, by: str, source: str = API_SOURCE
    ) -> None:
        """Replace the definition of an existing task of ``source``; counters and history stay,
        and a changed schedule takes effect from its next tick."""
        self.remember_definition(definition)
        with self.engine.begin() as conn:
            self.lock_schedules(conn, schedules.c.name == definition.name)
            row = require_task(conn, definition.name)
            if row.source != source:
                raise TaskConflictError({row.name: row.source}, action="change")
            values = changed_values(definition, row, now)
            conn.execute(schedules.update().where(schedules.c.name == row.name).values(**values))
            write_audit(
                conn, now=now, actor=by, action="update", task=row.name,
                details={"definition": definition.to_dict()},
            )  # fmt: skip
            self.refresh_due_at(conn, [row.name])

    def remove_task(
        self, name: str, *, now: datetime, by: str, source: str | None = API_SOURCE
    ) -> None:
        """Delete task ``name`` (its runs stay); ``source=None`` removes it whoever owns it."""
        with self.engine.begin() as conn:
            self.lock_schedules(conn, schedules.c.name == name)
            row = require_task(conn, name)
            if source is not None and row.source != source:
                raise TaskConflictError({name: row.source}, action="remove")
            delete_tasks(conn, [name], now=now)
            write_audit(
                conn, now=now, actor=by, action="remove", task=name,
                details={"source": row.source},
            )  # fmt: skip

    def stored_definition(self, name: str) -> tuple[dict[str, Any], str]:
        """Task ``name``'s definition (task-file mapping, as stored) and its source."""
        with self.engine.connect() as conn:
            row = require_task(conn, name)
        definition: Mapping[str, Any] = json.loads(row.definition)
        return dict(definition), str(row.source)
