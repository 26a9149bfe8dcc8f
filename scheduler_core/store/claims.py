"""Claims: take due schedules under a lease (or a row lock) and dispatch them.

- ``claim_due_schedules`` takes rows whose ``due_at <= now`` and whose lease is free
  (``claimed_until IS NULL OR claimed_until < now``: a lease is not reclaimable *at*
  ``claimed_until``, only after), sets ``claimed_by``/``claimed_until`` and returns them.
  PostgreSQL selects with ``FOR UPDATE SKIP LOCKED``; SQLite serialises writers
  (``BEGIN IMMEDIATE``), so the same UPDATE is a compare-and-swap.
- ``dispatch_claimed`` inserts the run rows and advances the schedule in one transaction,
  fenced on the claim: a claim that expired and was taken over writes nothing. The UNIQUE
  (task_name, scheduled_for, attempt) constraint makes a second run of a tick impossible.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scheduler_core.bulk import PgStatement, member_of
from scheduler_core.db import driver_rows
from scheduler_core.models import schedules
from scheduler_core.store.dispatch import DispatchPart
from scheduler_core.store.records import ClaimedSchedule, DispatchedRun

__all__ = ["ClaimsPart"]

#: The definition text is not among them: it is read only for a digest this process has not
#: parsed yet (``StoreBase.learn_definitions``), not with every claim.
_CLAIM_COLUMNS = (
    schedules.c.name,
    schedules.c.definition_hash,
    schedules.c.next_run_at,
    schedules.c.retry_at,
    schedules.c.retry_scheduled_for,
    schedules.c.retry_attempt,
    schedules.c.retries_queued,
    schedules.c.run_now_requested_at,
    schedules.c.claimed_until,
    schedules.c.fire_count,
    schedules.c.consecutive_failures,
    schedules.c.run_now_overrides,
)


#: The statements every pass runs on PostgreSQL, built and compiled once (``PgStatement``:
#: compiling them per pass was a measurable share of an idle claim's CPU).
_PG_CLAIM = PgStatement.of(
    sa.select(*_CLAIM_COLUMNS)
    .where(schedules.c.due_at <= sa.bindparam("horizon"))
    .where(
        sa.or_(schedules.c.claimed_until.is_(None), schedules.c.claimed_until < sa.bindparam("now"))
    )
    .order_by(schedules.c.due_at)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_PG_NEXT_DUE = PgStatement.of(sa.select(sa.func.min(schedules.c.due_at)))


def _claimed(r: Any) -> ClaimedSchedule:
    """A row of ``_CLAIM_COLUMNS`` (unpacked by position: thousands a second)."""
    (
        name,
        definition_hash,
        next_run_at,
        retry_at,
        retry_scheduled_for,
        retry_attempt,
        retries_queued,
        run_now_requested_at,
        claimed_until,
        fire_count,
        consecutive_failures,
        run_now_overrides,
    ) = r
    return ClaimedSchedule(
        name=name,
        definition_hash=definition_hash,
        next_run_at=next_run_at,
        retry_at=retry_at,
        retry_scheduled_for=retry_scheduled_for,
        retry_attempt=retry_attempt,
        retries_queued=retries_queued,
        run_now_requested_at=run_now_requested_at,
        claimed_until=claimed_until,
        fire_count=fire_count,
        consecutive_failures=consecutive_failures,
        run_now_overrides=run_now_overrides,
    )


class ClaimsPart(DispatchPart):
    """``next_due_at``, ``claim_due_schedules``, ``claim_and_dispatch``, ``dispatch_claimed``."""

    def next_due_at(self) -> datetime | None:
        """The earliest ``due_at`` of any schedule (the engine sleeps until then)."""
        with self.engine.connect() as conn:
            if self.is_postgres:
                found: datetime | None = _PG_NEXT_DUE.run(conn).scalar()
                return found
            value: datetime | None = conn.execute(
                sa.select(sa.func.min(schedules.c.due_at))
            ).scalar()
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def claim_due_schedules(
        self,
        *,
        now: datetime,
        limit: int,
        lease: timedelta,
        look_ahead: timedelta = timedelta(0),
    ) -> list[ClaimedSchedule]:
        """Claim up to ``limit`` schedules due by ``now + look_ahead`` with a lease until
        ``now + lease``."""
        if limit <= 0:
            return []
        until = now + lease
        candidates = (
            sa.select(schedules.c.name)
            .where(schedules.c.due_at <= now + look_ahead)
            .where(sa.or_(schedules.c.claimed_until.is_(None), schedules.c.claimed_until < now))
            .order_by(schedules.c.due_at)
            .limit(limit)
        )
        if self.is_postgres:
            candidates = candidates.with_for_update(skip_locked=True)
        stmt = (
            schedules.update()
            .where(schedules.c.name.in_(candidates.scalar_subquery()))
            # Re-checked in the UPDATE itself: on SQLite this is the compare-and-swap.
            .where(sa.or_(schedules.c.claimed_until.is_(None), schedules.c.claimed_until < now))
            .values(claimed_by=self.instance_id, claimed_until=until)
            .returning(*_CLAIM_COLUMNS)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(stmt).all()
        return [_claimed(r) for r in rows]

    def claim_and_dispatch(
        self,
        *,
        now: datetime,
        limit: int,
        lease: timedelta,
        thread_name: str | None = None,
        finished_unrecorded: Mapping[str, int] | None = None,
        look_ahead: timedelta = timedelta(0),
        settle: timedelta = timedelta(0),
    ) -> tuple[int, list[DispatchedRun]]:
        """Claim up to ``limit`` due schedules and dispatch them; returns how many were
        claimed and the runs to execute.

        On PostgreSQL this is one transaction: the due rows are locked with ``FOR UPDATE
        SKIP LOCKED`` (other instances skip them), planned, their run rows inserted and the
        schedules advanced before the commit releases the locks, so no lease needs writing
        and no fence re-reading (a crash before the commit leaves nothing behind). Rows
        another instance holds a lease on (``claimed_until`` in the future) are skipped, as
        in ``claim_due_schedules``. SQLite claims with the compare-and-swap and dispatches
        in a second transaction.

        ``look_ahead`` also takes what falls due within that time after ``now``; such runs
        come back with a later ``not_before`` (their tick), for the engine to start then.

        ``settle``: a due tick that overlap or ``max_concurrency`` would skip only because
        of runs other instances own is decided again shortly, until ``settle`` after its
        time: such a run may have finished with its outcome still waiting in its owner's
        batched finalize, and a tick is skipped only for a run still in flight.
        """
        horizon = now + look_ahead
        if not self.is_postgres or limit <= 0:
            claimed = self.claim_due_schedules(
                now=now, limit=limit, lease=lease, look_ahead=look_ahead
            )
            return len(claimed), self.dispatch_claimed(
                claimed,
                now=now,
                thread_name=thread_name,
                finished_unrecorded=finished_unrecorded,
                horizon=horizon,
                settle=settle,
            )
        with self.engine.begin() as conn:
            rows = driver_rows(_PG_CLAIM.run(conn, horizon=horizon, now=now, limit=limit))
            claimed = [_claimed(r) for r in rows]
            planned = self.dispatch_in(
                conn,
                claimed,
                now=now,
                thread_name=thread_name,
                finished_unrecorded=finished_unrecorded,
                fenced=False,
                horizon=horizon,
                settle=settle,
            )
        return len(claimed), self.dispatched(planned, claimed, now)

    def dispatch_claimed(
        self,
        claimed: Sequence[ClaimedSchedule],
        *,
        now: datetime,
        thread_name: str | None = None,
        rand: random.Random | None = None,
        finished_unrecorded: Mapping[str, int] | None = None,
        horizon: datetime | None = None,
        settle: timedelta = timedelta(0),
    ) -> list[DispatchedRun]:
        """Plan each claimed schedule's ticks, insert run/missed/skipped rows, advance it.

        One transaction for the whole batch. Only schedules whose claim is still ours
        (same ``claimed_by`` and ``claimed_until``) are touched. ``finished_unrecorded``
        counts, per task, this instance's runs that have finished but whose rows still read
        ``running`` (their outcome is written at the next finalize): overlap and
        concurrency limits do not count them as running.
        """
        if not claimed:
            return []
        by_name = {c.name: c for c in claimed}
        with self.engine.begin() as conn:
            fence = (
                sa.select(schedules.c.name, schedules.c.claimed_until)
                .where(member_of(self.dialect, schedules.c.name, list(by_name)))
                .where(schedules.c.claimed_by == self.instance_id)
            )
            if self.is_postgres:
                fence = fence.with_for_update()
            still_ours = {
                r.name
                for r in conn.execute(fence)
                if r.claimed_until == by_name[r.name].claimed_until
            }
            ours = [by_name[name] for name in sorted(still_ours)]
            planned = self.dispatch_in(
                conn,
                ours,
                now=now,
                thread_name=thread_name,
                finished_unrecorded=finished_unrecorded,
                fenced=True,
                horizon=horizon,
                settle=settle,
            )
        return self.dispatched(planned, claimed, now)
