"""The store: all SQL the scheduler and the admin commands run, behind one class.

``Store`` is composed of one part per concept, each in its own module:

- ``sync``: definitions and sync of the schedule table;
- ``claims`` and ``dispatch``: claiming due schedules and writing what
  ``scheduler_core.admission`` decides;
- ``finalize``: how runs ended, with ``scheduler_core.retries``' decision and the counters;
- ``instances``: registration, heartbeats and the reaper;
- ``controls``: pause, resume, run now, cancel, emergency stop, audit;
- ``tasks_part``: tasks created, changed and removed at runtime, each owned by a source;
- ``queries``: what the admin commands read.

``base`` holds what they share (the lock order, ``due_at``, the PostgreSQL/SQLite
differences). Each public method's docstring is its contract. Every backend (SQLite and
PostgreSQL) keeps these promises too:

- Times come from the caller's clock (the database clock in production), never from
  ``now()`` inside statements, so tests drive every boundary with an injected clock.
- One lock order for every writer: schedule rows in name order, then run rows; the claim
  takes schedule rows with SKIP LOCKED, so it never waits for one.
- No tick runs twice: run rows are UNIQUE on (task, tick, attempt), and a dispatch writes
  only under a claim that is still this instance's.
- Counters (outcomes, histograms, missed, skipped) live on the schedule row and are added
  to, never recomputed: they survive history cleanup and restarts.
"""

from __future__ import annotations

from scheduler_core.store.claims import ClaimsPart
from scheduler_core.store.controls import ControlsPart
from scheduler_core.store.finalize import FinalizePart
from scheduler_core.store.instances import InstancesPart
from scheduler_core.store.queries import QueriesPart
from scheduler_core.store.records import (
    ERROR_MESSAGE_LIMIT,
    HEALTH_ERROR_LIMIT,
    TRACEBACK_LIMIT,
    ClaimedSchedule,
    DispatchedRun,
    FinalizeResult,
    RunOutcome,
    SyncResult,
    truncate_text,
)
from scheduler_core.store.sync import SyncPart
from scheduler_core.store.tasks_part import TasksPart

__all__ = [
    "ERROR_MESSAGE_LIMIT",
    "HEALTH_ERROR_LIMIT",
    "TRACEBACK_LIMIT",
    "ClaimedSchedule",
    "DispatchedRun",
    "FinalizeResult",
    "RunOutcome",
    "Store",
    "SyncResult",
    "truncate_text",
]


class Store(
    SyncPart, TasksPart, ClaimsPart, FinalizePart, InstancesPart, ControlsPart, QueriesPart
):
    """SQL access for one scheduler instance (or an admin command)."""
