"""Instances: registration, heartbeats, and the reaper of runs whose instance died.

An instance is dead when ``last_heartbeat_at + lease_seconds < now``. Its runs still
``running`` are marked ``abandoned`` (each counts once in ``runs_abandoned_total``), and its
health rows get that outcome, as the dead instance will not write them any more.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scheduler_core.bulk import bulk_insert_returning, member_of
from scheduler_core.models import instances, schedules, task_health, task_runs
from scheduler_core.store.base import StoreBase, chunks, upsert
from scheduler_core.store.records import HEALTH_ERROR_LIMIT, truncate_text

__all__ = ["InstancesPart"]


class InstancesPart(StoreBase):
    """``register_instance``, ``heartbeat``, ``set_instance_state``, ``reap_abandoned``."""

    def register_instance(
        self,
        *,
        now: datetime,
        lease: timedelta,
        hostname: str,
        pid: int,
        version: str,
        running_runs: int | None = None,
    ) -> list[int]:
        """Upsert this instance as running.

        A process starting up (``running_runs`` None) reaps its own leftovers from a
        previous life under the same id: returns the ids of runs it found still ``running``
        and marked abandoned. A live process whose row was removed rejoins with its
        ``running_runs``, and its runs, claims and health rows stay as they are.
        """
        restarting = running_runs is None
        reaped: list[int] = []
        with self.engine.begin() as conn:
            if restarting:
                reaped = self._abandon_where(
                    conn,
                    (task_runs.c.status == "running")
                    & (task_runs.c.instance_id == self.instance_id),
                    now,
                    f"instance {self.instance_id} restarted while the run was in flight",
                )
                mine = self.lock_schedules(conn, schedules.c.claimed_by == self.instance_id)
                if mine:
                    conn.execute(
                        schedules.update()
                        .where(member_of(self.dialect, schedules.c.name, mine))
                        .values(claimed_by=None, claimed_until=None)
                    )
            values = {
                "hostname": hostname,
                "pid": pid,
                "started_at": now,
                "last_heartbeat_at": now,
                "lease_seconds": lease.total_seconds(),
                "state": "running",
                "version": version,
                "running_runs": running_runs or 0,
            }
            stmt = upsert(conn, instances).values(instance_id=self.instance_id, **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=["instance_id"], set_=values))
            if restarting:
                conn.execute(
                    task_health.update()
                    .where(task_health.c.instance_id == self.instance_id)
                    .values(is_running=False)
                )
        return reaped

    def heartbeat(
        self, *, now: datetime, running_runs: int, state: str = "running"
    ) -> list[tuple[int, str]]:
        """Renew this instance's heartbeat; return (run id, reason) of its runs to cancel.

        Raises LookupError when the instance row is gone (another host's admin removed it).
        """
        with self.engine.begin() as conn:
            result = conn.execute(
                instances.update()
                .where(instances.c.instance_id == self.instance_id)
                .values(last_heartbeat_at=now, running_runs=running_runs, state=state)
            )
            if result.rowcount == 0:
                raise LookupError(f"instance {self.instance_id!r} is not registered")
            conn.execute(
                task_health.update()
                .where(task_health.c.instance_id == self.instance_id)
                .where(task_health.c.is_running)
                .values(last_heartbeat_at=now)
            )
            cancel = conn.execute(
                sa.select(task_runs.c.id, task_runs.c.cancel_reason)
                .where(task_runs.c.status == "running")
                .where(task_runs.c.instance_id == self.instance_id)
                .where(task_runs.c.cancel_requested)
            )
            return [(r.id, r.cancel_reason or "cancel requested") for r in cancel]

    def set_instance_state(self, state: str, *, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                instances.update()
                .where(instances.c.instance_id == self.instance_id)
                .values(state=state, last_heartbeat_at=now)
            )

    def reap_abandoned(self, *, now: datetime) -> list[int]:
        """Mark ``abandoned`` the running rows of instances that stopped heartbeating.

        An instance is dead when ``last_heartbeat_at + lease_seconds < now``; a running row
        whose instance never registered is dead once it started more than the default lease
        ago. Each reaped run counts once in ``runs_abandoned_total``.
        """
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(
                    instances.c.instance_id,
                    instances.c.last_heartbeat_at,
                    instances.c.lease_seconds,
                ).where(instances.c.state != "stopped")
            ).all()
            stale = [
                r.instance_id
                for r in rows
                if r.instance_id != self.instance_id
                and r.last_heartbeat_at + timedelta(seconds=r.lease_seconds) < now
            ]
            known = sa.select(instances.c.instance_id).scalar_subquery()
            orphan = (
                (task_runs.c.status == "running")
                & task_runs.c.instance_id.not_in(known)
                & (task_runs.c.started_at < now - timedelta(seconds=60))
            )
            reaped = self._abandon_where(
                conn, orphan, now, "its instance never registered a heartbeat"
            )
            if stale:
                for chunk in chunks(stale, 500):
                    reaped += self._abandon_where(
                        conn,
                        (task_runs.c.status == "running")
                        & task_runs.c.instance_id.in_(list(chunk)),
                        now,
                        "its instance stopped heartbeating past its lease",
                    )
                    conn.execute(
                        instances.update()
                        .where(instances.c.instance_id.in_(list(chunk)))
                        .values(running_runs=0)
                    )
                    conn.execute(
                        task_health.update()
                        .where(task_health.c.instance_id.in_(list(chunk)))
                        .values(is_running=False)
                    )
            return reaped

    def _abandon_where(
        self, conn: sa.Connection, condition: sa.ColumnElement[bool], now: datetime, why: str
    ) -> list[int]:
        tasks = sa.select(task_runs.c.task_name).where(condition).distinct().scalar_subquery()
        self.lock_schedules(conn, schedules.c.name.in_(tasks))
        rows = conn.execute(
            task_runs.update()
            .where(condition)
            .values(
                status="abandoned",
                finished_at=now,
                error_message=f"abandoned: {why}",
            )
            .returning(
                task_runs.c.id,
                task_runs.c.task_name,
                task_runs.c.started_at,
                task_runs.c.instance_id,
            )
        ).all()
        if not rows:
            return []
        self._health_abandoned(conn, rows, now, f"abandoned: {why}")
        per_task: dict[str, int] = defaultdict(int)
        for r in rows:
            per_task[r.task_name] += 1
        conn.execute(
            schedules.update()
            .where(schedules.c.name == sa.bindparam("b_name"))
            .values(runs_abandoned_total=schedules.c.runs_abandoned_total + sa.bindparam("b_n")),
            [{"b_name": n, "b_n": c} for n, c in per_task.items()],
        )
        # How long an abandoned run ran is unknown: no duration (the reap time is no finish).
        conn.execute(
            task_runs.update()
            .where(task_runs.c.id.in_([r.id for r in rows]))
            .where(task_runs.c.started_at.is_not(None))
            .values(duration_seconds=None)
        )
        return [r.id for r in rows]

    def _health_abandoned(
        self, conn: sa.Connection, rows: Sequence[Any], now: datetime, message: str
    ) -> None:
        """The abandoned runs' outcome on their instances' health rows, as a finish would
        write it: the health rows are where the exporter reads each task's last finish and
        status, and the dead instance will not write them any more."""
        started: dict[tuple[str, str], datetime | None] = {}
        for r in rows:
            key = (r.task_name, r.instance_id)
            starts = [t for t in (started.get(key), r.started_at) if t is not None]
            started[key] = max(starts) if starts else None
        bulk_insert_returning(
            conn,
            task_health,
            [
                {"task_name": task, "instance_id": instance, "last_started_at": start}
                for (task, instance), start in sorted(started.items())
            ],
            conflict=("task_name", "instance_id"),
            update=(
                "last_finished_at",
                "last_duration_seconds",
                "last_status",
                "is_running",
                "last_error_message",
                "updated_at",
            ),
            latest=("last_started_at",),
            consts={
                # Only a row never written before takes these (the dead instance never
                # wrote the task's health): the exporter does not read them.
                "enabled": True,
                "schedule_type": "",
                "schedule_payload": "{}",
                "consecutive_failures": 0,
                "last_finished_at": now,
                "last_duration_seconds": None,
                "last_status": "abandoned",
                "is_running": False,
                "last_error_message": truncate_text(message, HEALTH_ERROR_LIMIT),
                "updated_at": now,
            },
        )
