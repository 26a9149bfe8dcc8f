"""The metric catalog of DESIGN.md and the samples each snapshot yields for it.

Both the standard collector (:mod:`exporter.collector`) and the fast exposition renderer
(:mod:`exporter.exposition`) take their samples from here, so the two cannot disagree.
Gauges whose value is unknown (a timestamp of something that never happened, an unset
max_runtime) are left out rather than reported as 0, so ``time() - x`` never sees 1970.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, cast

from prometheus_client.utils import floatToGoString as _untyped_float_to_go

from exporter.refresh import RefreshState
from scheduler_core.alert_policy import AlertPolicy
from scheduler_core.store.snapshot import (
    ALARM_KINDS,
    OUTCOMES,
    POLICY_ALARM_KINDS,
    Snapshot,
    TaskSnapshot,
)

#: prometheus_client's own float formatting (untyped upstream), so our output matches its.
_go_float = cast(Callable[[float], str], _untyped_float_to_go)

__all__ = [
    "CATALOG",
    "TASK_METRICS",
    "Labels",
    "MetricSpec",
    "Sample",
    "global_samples",
    "task_samples",
]

#: A sample's (label, value) pairs.
Labels = tuple[tuple[str, str], ...]
#: One sample: full sample name, (label, value) pairs, value.
Sample = tuple[str, Labels, float]


@dataclass(frozen=True)
class MetricSpec:
    """One family of the catalog. ``name`` is the exposed name (counters end in ``_total``)."""

    name: str
    kind: Literal["gauge", "counter", "histogram"]
    labels: tuple[str, ...]
    unit: str
    help: str


def _parse_catalog(table: str) -> tuple[MetricSpec, ...]:
    """Read :data:`CATALOG`'s table: a ``name kind labels`` line (``-`` for none), its help
    indented on the next. The unit follows from the name, as OpenMetrics requires."""
    lines = table.strip("\n").splitlines()
    specs = []
    for head, help_line in zip(lines[::2], lines[1::2], strict=True):
        name, kind, labels = head.split()
        specs.append(
            MetricSpec(
                name=name,
                kind=cast(Literal["gauge", "counter", "histogram"], kind),
                labels=() if labels == "-" else tuple(labels.split(",")),
                unit="seconds" if name.removesuffix("_total").endswith("_seconds") else "",
                help=help_line.strip(),
            )
        )
    return tuple(specs)


#: Every family schedctl exports: its name and labels are a contract (docs/metrics.md).
CATALOG: tuple[MetricSpec, ...] = _parse_catalog(
    """
scheduler_task_info gauge task,schedule,action_kind,timezone
    Definition facts of a task (schedule, action kind, timezone); always 1.
scheduler_task_enabled gauge task
    1 when the task is enabled in its definition, 0 when disabled.
scheduler_task_paused gauge task
    1 while an operator has paused the task, 0 otherwise.
scheduler_task_next_run_timestamp_seconds gauge task
    Unix time of the task's next regular tick; absent when none is scheduled.
scheduler_task_last_start_timestamp_seconds gauge task
    Unix time the most recent run of the task started, on any instance.
scheduler_task_last_finish_timestamp_seconds gauge task
    Unix time the most recent run of the task finished, on any instance.
scheduler_task_last_success_timestamp_seconds gauge task
    Unix time the task last finished successfully.
scheduler_task_last_duration_seconds gauge task
    Duration of the most recently finished run of the task.
scheduler_task_last_status gauge task,status
    Outcome of the most recently finished run, one-hot: 1 on its status, else 0.
scheduler_task_running gauge task
    Runs of the task in flight right now, across all instances.
scheduler_task_consecutive_failures gauge task
    Failed or timed-out runs in a row since the last success, across all instances.
scheduler_task_stuck gauge task
    1 when a run of the task has been in flight longer than its max_runtime, else 0.
scheduler_task_max_runtime_seconds gauge task
    max_runtime after which a running run counts as stuck; absent when unset.
scheduler_task_expected_interval_seconds gauge task
    Expected time between two ticks of the task; absent for one-time tasks.
scheduler_task_runs_total counter task,outcome
    Finished runs by outcome, persisted in SQL (survives restarts and history cleanup).
scheduler_task_missed_runs_total counter task
    Ticks that were never run (misfires), persisted in SQL.
scheduler_task_result_total counter task,key
    Sum of a numeric result key the task declares in result_metrics, persisted in SQL.
scheduler_task_run_duration_seconds histogram task
    Run durations, from histogram buckets persisted in SQL.
scheduler_task_start_delay_seconds histogram task
    Actual start minus scheduled time of runs, from buckets persisted in SQL.
scheduler_task_alert_threshold gauge task,kind
    A threshold the task's alerts block sets, one series per kind, in the kind's unit.
scheduler_task_alert_policy_info gauge task,severity
    The severity the task's alerts block sets for its alerts; always 1.
scheduler_task_deadline_missed gauge task
    1 when the task's deadline passed without a success since the tick before it, else 0.
scheduler_alarm_open gauge task,kind
    1 while the scheduler has an alarm of this kind open for the task, else 0.
scheduler_instance_last_heartbeat_timestamp_seconds gauge instance_id
    Unix time of the scheduler instance's last lease heartbeat.
scheduler_instance_running_runs gauge instance_id
    Runs in flight on the scheduler instance right now.
scheduler_instance_info gauge instance_id,version,state
    A scheduler instance, its version and state (running, draining, stopped); always 1.
scheduler_exporter_up gauge -
    1 when the exporter's last read of the database succeeded, 0 when it failed.
scheduler_exporter_refresh_duration_seconds gauge -
    How long the exporter's last read of the database took (background reads are paced).
scheduler_exporter_last_refresh_timestamp_seconds gauge -
    Unix time of the exporter's last successful database read (age of the data served).
scheduler_exporter_build_info gauge version
    The exporter's schedctl version; always 1.
"""
)

#: Families with one block of samples per task (the alarm family also has orphan samples).
TASK_METRICS: tuple[str, ...] = tuple(
    spec.name for spec in CATALOG if spec.name.startswith(("scheduler_task_", "scheduler_alarm_"))
)

_LE: dict[float, str] = {}


def _le(bound: float) -> str:
    text = _LE.get(bound)
    if text is None:
        text = _LE[bound] = _go_float(bound)
    return text


def _histogram(
    name: str, task: str, cumulative: list[tuple[float, int]], total: float
) -> list[Sample]:
    out: list[Sample] = [
        (f"{name}_bucket", (("task", task), ("le", _le(bound))), float(count))
        for bound, count in cumulative
    ]
    out.append((f"{name}_count", (("task", task),), float(cumulative[-1][1])))
    out.append((f"{name}_sum", (("task", task),), float(total)))
    return out


# long: one flat list, family by family, of what TASK_METRICS declares (refresh hot path)
def task_samples(task: TaskSnapshot) -> dict[str, list[Sample]]:
    """The samples of ``task`` for every family in TASK_METRICS (a family may get none)."""
    name = task.name
    t = (("task", name),)
    out: dict[str, list[Sample]] = {
        "scheduler_task_info": [
            (
                "scheduler_task_info",
                (("task", name), ("schedule", task.schedule), ("action_kind", task.action_kind),
                 ("timezone", task.timezone)),
                1.0,
            )
        ],
        "scheduler_task_enabled": [("scheduler_task_enabled", t, 1.0 if task.enabled else 0.0)],
        "scheduler_task_paused": [("scheduler_task_paused", t, 1.0 if task.paused else 0.0)],
    }  # fmt: skip
    for metric, when in (
        ("scheduler_task_next_run_timestamp_seconds", task.next_run_at),
        ("scheduler_task_last_start_timestamp_seconds", task.last_started_at),
        ("scheduler_task_last_finish_timestamp_seconds", task.last_finished_at),
        ("scheduler_task_last_success_timestamp_seconds", task.last_success_at),
    ):
        out[metric] = [] if when is None else [(metric, t, when.timestamp())]
    out["scheduler_task_last_duration_seconds"] = (
        []
        if task.last_duration_seconds is None
        else [("scheduler_task_last_duration_seconds", t, float(task.last_duration_seconds))]
    )
    out["scheduler_task_last_status"] = [
        (
            "scheduler_task_last_status",
            (("task", name), ("status", status)),
            1.0 if task.last_status == status else 0.0,
        )
        for status in OUTCOMES
    ]
    out["scheduler_task_running"] = [("scheduler_task_running", t, float(task.running))]
    out["scheduler_task_consecutive_failures"] = [
        ("scheduler_task_consecutive_failures", t, float(task.consecutive_failures))
    ]
    out["scheduler_task_stuck"] = [("scheduler_task_stuck", t, 1.0 if task.stuck else 0.0)]
    for metric, seconds in (
        ("scheduler_task_max_runtime_seconds", task.max_runtime_seconds),
        ("scheduler_task_expected_interval_seconds", task.expected_interval_seconds),
    ):
        out[metric] = [] if seconds is None else [(metric, t, float(seconds))]
    out["scheduler_task_runs_total"] = [
        ("scheduler_task_runs_total", (("task", name), ("outcome", outcome)), float(count))
        for outcome, count in ((o, task.runs_total.get(o, 0)) for o in OUTCOMES)
    ]
    out["scheduler_task_missed_runs_total"] = [
        ("scheduler_task_missed_runs_total", t, float(task.missed_runs_total))
    ]
    out["scheduler_task_result_total"] = [
        ("scheduler_task_result_total", (("task", name), ("key", key)), value)
        for key, value in sorted(task.result_totals.items())
    ]
    out["scheduler_task_run_duration_seconds"] = _histogram(
        "scheduler_task_run_duration_seconds", name, task.duration.cumulative(), task.duration.sum
    )
    out["scheduler_task_start_delay_seconds"] = _histogram(
        "scheduler_task_start_delay_seconds",
        name,
        task.start_delay.cumulative(),
        task.start_delay.sum,
    )
    policy = task.alert_policy
    if policy is None:  # most tasks: no alerts block, so the always-on alarm kinds only
        out["scheduler_task_alert_threshold"] = []
        out["scheduler_task_alert_policy_info"] = []
        out["scheduler_task_deadline_missed"] = []
        kinds = [*ALARM_KINDS, *sorted(task.open_alarms.difference(ALARM_KINDS))]
    else:
        _policy_samples(out, task, policy)
        always = (*ALARM_KINDS, *_policy_alarm_kinds(policy))
        kinds = [*always, *sorted(task.open_alarms.difference(always))]
    out["scheduler_alarm_open"] = [
        ("scheduler_alarm_open", (("task", name), ("kind", kind)),
         1.0 if kind in task.open_alarms else 0.0)
        for kind in kinds
    ]  # fmt: skip
    return out


#: The policy alarm kinds (scheduler_core.telemetry.alarm_rules.policy_alarms) and the fields
#: of an alerts block that open them: a task whose policy sets one gets a series of that kind
#: even while it is closed (0), so "alarm open" alerts see 0 rather than no series.
_POLICY_ALARM_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("too_fast", ("min_duration",)),
    ("slow", ("max_duration", "slower_than_usual")),
    ("deadline_missed", ("deadline",)),
)
assert tuple(kind for kind, _ in _POLICY_ALARM_FIELDS) == POLICY_ALARM_KINDS


def _policy_alarm_kinds(policy: AlertPolicy) -> tuple[str, ...]:
    """The policy alarm kinds ``policy`` can open, in POLICY_ALARM_KINDS order."""
    return tuple(
        kind
        for kind, keys in _POLICY_ALARM_FIELDS
        if any(getattr(policy, key) is not None for key in keys)
    )


def _policy_samples(out: dict[str, list[Sample]], task: TaskSnapshot, policy: AlertPolicy) -> None:
    """The alerts-block families of a task that has a policy: its thresholds (by kind), its
    severity and, when it sets a deadline, whether that was missed."""
    name = task.name
    out["scheduler_task_alert_threshold"] = [
        ("scheduler_task_alert_threshold", (("task", name), ("kind", kind)), value)
        for kind, value in sorted(policy.thresholds().items())
    ]
    out["scheduler_task_alert_policy_info"] = (
        []
        if policy.severity is None
        else [
            (
                "scheduler_task_alert_policy_info",
                (("task", name), ("severity", policy.severity)),
                1.0,
            )
        ]
    )
    missed = task.deadline_missed
    out["scheduler_task_deadline_missed"] = (
        []
        if missed is None
        else [("scheduler_task_deadline_missed", (("task", name),), 1.0 if missed else 0.0)]
    )


def global_samples(state: RefreshState, version: str) -> Iterator[tuple[str, Sample]]:
    """(family, sample) pairs that are not per task: orphan alarms, instances, the exporter."""
    snapshot: Snapshot | None = state.snapshot
    if snapshot is not None:
        for task, kind in snapshot.orphan_alarms:
            yield "scheduler_alarm_open", (
                "scheduler_alarm_open", (("task", task), ("kind", kind)), 1.0
            )  # fmt: skip
        for instance in snapshot.instances:
            iid = (("instance_id", instance.instance_id),)
            yield "scheduler_instance_last_heartbeat_timestamp_seconds", (
                "scheduler_instance_last_heartbeat_timestamp_seconds", iid,
                instance.last_heartbeat_at.timestamp(),
            )  # fmt: skip
            yield "scheduler_instance_running_runs", (
                "scheduler_instance_running_runs", iid, float(instance.running_runs)
            )  # fmt: skip
            yield (
                "scheduler_instance_info",
                (
                    "scheduler_instance_info",
                    (*iid, ("version", instance.version), ("state", instance.state)),
                    1.0,
                ),
            )
        for instance_id, count in snapshot.orphan_running_runs.items():
            yield "scheduler_instance_running_runs", (
                "scheduler_instance_running_runs", (("instance_id", instance_id),), float(count)
            )  # fmt: skip
    yield "scheduler_exporter_up", ("scheduler_exporter_up", (), 1.0 if state.up else 0.0)
    if state.last_duration_seconds is not None:
        yield "scheduler_exporter_refresh_duration_seconds", (
            "scheduler_exporter_refresh_duration_seconds", (), state.last_duration_seconds
        )  # fmt: skip
    if state.last_success_at is not None:
        yield "scheduler_exporter_last_refresh_timestamp_seconds", (
            "scheduler_exporter_last_refresh_timestamp_seconds", (),
            state.last_success_at.timestamp(),
        )  # fmt: skip
    yield "scheduler_exporter_build_info", (
        "scheduler_exporter_build_info", (("version", version),), 1.0
    )  # fmt: skip
