"""Controls and audit: pause, resume, run now, cancel, emergency stop; who did what, when.

Every control writes its audit event (actor, action, task or run, reason) in the same
transaction as its change, and retries itself on a lock conflict (``retry_conflicts``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler_core.bulk import member_of
from scheduler_core.errors import RunLookupError, TaskLookupError
from scheduler_core.models import audit_events, schedules, task_runs
from scheduler_core.retrying import retry_conflicts
from scheduler_core.store.base import StoreBase
from scheduler_core.store.records import ERROR_MESSAGE_LIMIT, truncate_text

__all__ = ["ControlsPart", "audit_context", "audit_details", "write_audit"]

#: Extra facts every audit event written in this context carries (the admin API's request id).
_AUDIT_EXTRA: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "schedctl_audit_extra", default=None
)


@contextlib.contextmanager
def audit_context(**extra: Any) -> Iterator[None]:
    """Audit events written inside the block carry ``extra`` in their details."""
    token = _AUDIT_EXTRA.set({**(_AUDIT_EXTRA.get() or {}), **extra})
    try:
        yield
    finally:
        _AUDIT_EXTRA.reset(token)


def audit_details(details: Mapping[str, Any] | None) -> str | None:
    """The stored ``details`` of an audit event: ``details`` plus the audit context."""
    merged = {**(_AUDIT_EXTRA.get() or {}), **(details or {})}
    return json.dumps(merged, default=str) if merged else None


def write_audit(
    conn: sa.Connection,
    *,
    now: datetime,
    actor: str,
    action: str,
    task: str | None = None,
    run_id: int | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Insert one audit event inside the caller's transaction."""
    conn.execute(
        audit_events.insert().values(
            at=now,
            actor=actor[:200],
            action=action,
            task_name=task,
            run_id=run_id,
            reason=truncate_text(reason, ERROR_MESSAGE_LIMIT),
            details=audit_details(details),
        )
    )


def run_now_overrides(args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> str | None:
    """The stored form of a run-now's own arguments (None when it has none); ValueError
    naming the field when they are not a list / a mapping of names, or not JSON."""
    if args is None and kwargs is None:
        return None
    if args is not None and (
        isinstance(args, str | bytes | Mapping) or not isinstance(args, Sequence)
    ):
        raise ValueError(f"args: must be a list, got {args!r}"[:300])
    if kwargs is not None and (
        not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs)
    ):
        raise ValueError(f"kwargs: must be a mapping of names to values, got {kwargs!r}"[:300])
    try:
        return json.dumps({"args": None if args is None else list(args), "kwargs": kwargs})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"args/kwargs: must be JSON values ({exc})") from None


def require_task(conn: sa.Connection, name: str) -> Any:
    """The schedule row of task ``name``; TaskLookupError when there is none."""
    row = conn.execute(sa.select(schedules).where(schedules.c.name == name)).first()
    if row is None:
        raise TaskLookupError(name)
    return row


class ControlsPart(StoreBase):
    """The operator's controls, each audited."""

    EMERGENCY_PREFIX = "[emergency-stop] "

    def audit(self, *, now: datetime, actor: str, action: str, **about: Any) -> None:
        """Record an audit event of an action the store does not perform itself (a cleanup);
        ``about`` takes ``write_audit``'s ``task``, ``run_id``, ``reason`` and ``details``."""
        with self.engine.begin() as conn:
            write_audit(conn, now=now, actor=actor, action=action, **about)

    @retry_conflicts()
    def pause(self, name: str, *, reason: str, by: str, now: datetime) -> None:
        """Pause a task: it is not claimed until resumed. Who, when and why are stored."""
        if not reason or not reason.strip():
            raise ValueError("a pause needs a --reason (shown to whoever finds the task paused)")
        with self.engine.begin() as conn:
            require_task(conn, name)
            write_audit(conn, now=now, actor=by, action="pause", task=name, reason=reason)
            conn.execute(
                schedules.update()
                .where(schedules.c.name == name)
                .values(
                    paused=True, pause_reason=reason, paused_at=now, paused_by=by, updated_at=now
                )
            )
            self.refresh_due_at(conn, [name])

    @retry_conflicts()
    def resume(self, name: str, *, now: datetime, by: str = "unknown") -> None:
        """Unpause; ticks that fell during the pause are not run or counted as missed."""
        with self.engine.begin() as conn:
            row = require_task(conn, name)
            write_audit(
                conn, now=now, actor=by, action="resume", task=name, reason=row.pause_reason
            )
            definition = self.definition(row.definition_hash, row.definition)
            values: dict[str, Any] = {
                "paused": False,
                "pause_reason": None,
                "paused_at": None,
                "paused_by": None,
                "updated_at": now,
            }
            if row.next_run_at is not None and row.next_run_at < now:
                values["next_run_at"] = definition.first_fire_after(now)
            conn.execute(schedules.update().where(schedules.c.name == name).values(**values))
            self.refresh_due_at(conn, [name])

    @retry_conflicts()
    def run_now(
        self,
        name: str,
        *,
        now: datetime,
        by: str = "unknown",
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """Ask for one extra run as soon as an instance polls; the schedule is unchanged.

        ``args`` / ``kwargs`` (callable tasks) replace the task's own for that run only; a
        later request before it runs replaces an earlier one's."""
        overrides = run_now_overrides(args, kwargs)
        with self.engine.begin() as conn:
            row = require_task(conn, name)
            if overrides is not None:
                # ValueError when the task runs a command
                self.definition(row.definition_hash, row.definition).with_arguments(args, kwargs)
            details = json.loads(overrides) if overrides else None
            write_audit(conn, now=now, actor=by, action="run-now", task=name, details=details)
            conn.execute(
                schedules.update()
                .where(schedules.c.name == name)
                .values(run_now_requested_at=now, run_now_overrides=overrides, updated_at=now)
            )
            self.refresh_due_at(conn, [name])

    @retry_conflicts()
    def request_cancel(
        self, run_id: int, *, reason: str, by: str = "unknown", now: datetime | None = None
    ) -> str:
        """Flag a running run for cancellation; its owner acts within one heartbeat.

        Returns the run's status (a finished run is left as it is). With ``now`` the request
        is also written to the audit log.
        """
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(task_runs.c.status, task_runs.c.task_name).where(task_runs.c.id == run_id)
            ).first()
            if row is None:
                raise RunLookupError(run_id)
            if row.status == "running":
                conn.execute(
                    task_runs.update()
                    .where(task_runs.c.id == run_id)
                    .values(cancel_requested=True, cancel_reason=reason)
                )
                if now is not None:
                    write_audit(
                        conn,
                        now=now,
                        actor=by,
                        action="cancel",
                        task=row.task_name,
                        run_id=run_id,
                        reason=reason,
                    )
            return str(row.status)

    @retry_conflicts()
    def emergency_stop(self, *, reason: str, by: str, now: datetime) -> tuple[int, int]:
        """Pause every task and flag every running run for cancellation.

        Returns (tasks paused, runs flagged). ``resume_all`` undoes the pauses it made; tasks
        already paused for another reason keep that pause and its reason.
        """
        if not reason or not reason.strip():
            raise ValueError("an emergency stop needs a --reason")
        with self.engine.begin() as conn:
            names = self.lock_schedules(conn, sa.not_(schedules.c.paused))
            paused = conn.execute(
                schedules.update()
                .where(member_of(self.dialect, schedules.c.name, names) if names else sa.false())
                .where(sa.not_(schedules.c.paused))
                .values(
                    paused=True,
                    pause_reason=self.EMERGENCY_PREFIX + reason,
                    paused_at=now,
                    paused_by=by,
                    due_at=None,
                    updated_at=now,
                )
            ).rowcount
            flagged = conn.execute(
                task_runs.update()
                .where(task_runs.c.status == "running")
                .where(sa.not_(task_runs.c.cancel_requested))
                .values(cancel_requested=True, cancel_reason=f"emergency stop by {by}: {reason}")
            ).rowcount
            write_audit(
                conn,
                now=now,
                actor=by,
                action="emergency-stop",
                reason=reason,
                details={"tasks_paused": paused, "runs_cancelled": flagged},
            )
        return int(paused or 0), int(flagged or 0)

    @retry_conflicts()
    def resume_all(self, *, by: str, now: datetime) -> tuple[int, int]:
        """Resume the tasks an emergency stop paused; return (resumed, still paused)."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(schedules.c.name, schedules.c.pause_reason).where(schedules.c.paused)
            ).all()
        names = [r.name for r in rows if (r.pause_reason or "").startswith(self.EMERGENCY_PREFIX)]
        for name in names:
            self.resume(name, now=now, by=by)
        with self.engine.begin() as conn:
            write_audit(
                conn, now=now, actor=by, action="resume-all", details={"tasks_resumed": len(names)}
            )
        return len(names), len(rows) - len(names)
