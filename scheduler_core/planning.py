"""Pure tick planning: given a claimed schedule and the time, what runs and what was missed.

Kept free of SQL so the misfire rules are tested directly with plain datetimes.

The rule: of the ticks due since ``next_run_at``, those older than ``misfire_grace`` are
*late*; the rest are *on time* and run. The task's ``misfire`` policy decides the late ones:
``skip`` runs none; ``run_once`` runs the newest late tick unless an on-time tick runs anyway;
``run_all`` runs the late ticks inside ``catchup_window``. Every late tick not run is counted
as missed, and reported as one span (count, first, last) however long the gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from scheduler_core.tasks import TaskDefinition

__all__ = ["MAX_CATCHUP_RUNS", "MissedSpan", "PlannedRun", "TickPlan", "plan_ticks"]

#: However long the outage, one claim starts at most this many runs of one task.
MAX_CATCHUP_RUNS = 100
#: Cron ticks are counted by iteration up to this many per claim (intervals are arithmetic).
MAX_COUNTED_TICKS = 5_000_000
_US = timedelta(microseconds=1)


@dataclass(slots=True, kw_only=True)  # not frozen: one per tick; a frozen __init__ is ~4x slower
class PlannedRun:
    scheduled_for: datetime
    attempt: int = 1
    trigger: str = "schedule"


@dataclass(slots=True, kw_only=True)  # not frozen: one per tick; a frozen __init__ is ~4x slower
class MissedSpan:
    count: int
    first: datetime
    last: datetime


@dataclass(slots=True, kw_only=True)  # not frozen: one per tick; a frozen __init__ is ~4x slower
class TickPlan:
    runs: list[PlannedRun] = field(default_factory=list)
    missed: MissedSpan | None = None
    next_run_at: datetime | None = None


# long: the misfire rule in one pass (hot path: runs for every due schedule), branch per case
def plan_ticks(
    definition: TaskDefinition,
    *,
    next_run_at: datetime | None,
    fire_count: int,
    now: datetime,
) -> TickPlan:
    """Plan the regular ticks due at ``now``, starting from the stored ``next_run_at``."""
    if next_run_at is None or next_run_at > now:
        return TickPlan(next_run_at=next_run_at)
    policies = definition.policies
    schedule = definition.schedule
    horizon = min(now, definition.end) if definition.end is not None else now
    cutoff = now - timedelta(seconds=policies.misfire_grace)
    if next_run_at >= cutoff and definition.end is None and definition.max_runs is None:
        # The common case, once per run: one tick, on time (what the rest computes for it).
        following = schedule.next_after(next_run_at)
        if following is None or following > now:
            return TickPlan(runs=[PlannedRun(scheduled_for=next_run_at)], next_run_at=following)

    late_count = 0
    late_newest: datetime | None = None
    if next_run_at < cutoff:
        late_end = min(cutoff - _US, horizon)
        late_count = 1 + schedule.count_between(next_run_at, late_end, cap=MAX_COUNTED_TICKS)
        late_newest = schedule.last_before(late_end + _US) or next_run_at

    on_time: list[datetime] = []
    tick: datetime | None = next_run_at if late_newest is None else schedule.next_after(late_newest)
    while tick is not None and tick <= horizon and len(on_time) < MAX_CATCHUP_RUNS:
        on_time.append(tick)
        tick = schedule.next_after(tick)

    late_runs: list[datetime] = []
    if late_newest is not None:
        if policies.misfire == "run_once" and not on_time:
            late_runs = [late_newest]
        elif policies.misfire == "run_all" and policies.catchup_window:
            window_start = max(next_run_at, now - timedelta(seconds=policies.catchup_window))
            late_runs = _ticks_between(definition, window_start, late_newest)
    runs = late_runs + on_time
    if definition.max_runs is not None:
        runs = runs[: max(0, definition.max_runs - fire_count)]

    newest_handled = on_time[-1] if on_time else late_newest
    assert newest_handled is not None
    # The loop above already computed the tick after the newest on-time one.
    new_next = tick if on_time else schedule.next_after(newest_handled)
    if definition.end is not None and new_next is not None and new_next > definition.end:
        new_next = None
    if definition.max_runs is not None and fire_count + len(runs) >= definition.max_runs:
        new_next = None

    missed = None
    missed_count = late_count - len(late_runs)
    if missed_count > 0 and late_newest is not None:
        last_missed = late_newest
        if late_runs and late_runs[-1] == late_newest:
            # The newest late ticks ran; the last missed one is just before the first of them.
            last_missed = schedule.last_before(late_runs[0]) or next_run_at
        missed = MissedSpan(count=missed_count, first=next_run_at, last=last_missed)
    return TickPlan(
        runs=[PlannedRun(scheduled_for=t) for t in runs], missed=missed, next_run_at=new_next
    )


def _ticks_between(definition: TaskDefinition, start: datetime, end: datetime) -> list[datetime]:
    """Ticks in ``[start, end]``, keeping the newest MAX_CATCHUP_RUNS."""
    schedule = definition.schedule
    out: list[datetime] = []
    tick = schedule.next_after(start - _US)
    while tick is not None and tick <= end:
        out.append(tick)
        if len(out) > MAX_CATCHUP_RUNS:
            out.pop(0)
        tick = schedule.next_after(tick)
    return out
