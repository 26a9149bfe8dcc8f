"""Best-effort run telemetry: per-(task, instance) health snapshots, alarm events, OTel.

Nothing here may fail, repeat or hold up a task: every write runs in its own short
transaction with a statement timeout, errors are swallowed and logged at most once per
``log_interval`` seconds. The exact counters are not here: they are written with the run.

``TelemetryWriter`` composes the parts: ``health_rows`` (the ``task_health`` rows),
``alarm_rules`` (when alarms open and close), ``otel`` (OpenTelemetry), ``ratelimit``
and ``writes`` (the best-effort transaction).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler_core.store import DispatchedRun, FinalizeResult
from scheduler_core.telemetry.alarm_rules import AlarmRules
from scheduler_core.telemetry.health_rows import HealthRows
from scheduler_core.telemetry.otel import otel_instruments, tracer
from scheduler_core.telemetry.ratelimit import RateLimitedLogger
from scheduler_core.telemetry.writes import BestEffortWriter

__all__ = ["RateLimitedLogger", "TelemetryWriter", "otel_instruments", "tracer"]

#: One logger for all telemetry errors (the name operators and tests filter on).
log = logging.getLogger(__name__)


def _failure_thresholds(
    failures: Mapping[str, int], definitions: Mapping[str, Any]
) -> dict[str, int]:
    """The own ``alerts.failures`` of the tasks of ``failures`` that set one, from the
    definitions their runs ran with (the others open at the global threshold)."""
    own: dict[str, int] = {}
    for name, count in failures.items():
        definition = definitions.get(name) if count else None
        if definition is not None and definition.policies.alerts.failures is not None:
            own[name] = definition.policies.alerts.failures
    return own


class TelemetryWriter:
    """Writes health snapshots and alarm events for one instance, best-effort."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        instance_id: str,
        failure_threshold: int = 3,
        statement_timeout: float = 2.0,
        log_interval: float = 60.0,
    ) -> None:
        self.engine = engine
        self.instance_id = instance_id
        self.failure_threshold = failure_threshold
        self.statement_timeout = statement_timeout
        self.errors = RateLimitedLogger(log, log_interval)
        writer = BestEffortWriter(engine, statement_timeout=statement_timeout, errors=self.errors)
        self.health = HealthRows(writer, instance_id=instance_id)
        self.alarms = AlarmRules(writer, failure_threshold=failure_threshold)

    def runs_started(self, runs: Sequence[DispatchedRun], *, now: datetime) -> None:
        """Note that ``runs`` started (see ``HealthRows.runs_started``)."""
        self.health.runs_started(runs, now=now)

    def write_starts(self, *, older_than: float = 0.0) -> None:
        """Write the health rows of starts noted at least ``older_than`` seconds ago."""
        self.health.write_starts(older_than=older_than)

    def runs_finished(
        self,
        result: FinalizeResult,
        definitions: dict[str, Any],
        *,
        now: datetime,
    ) -> None:
        """A finalize batch: its health rows, then its failure alarms and OTel metrics."""
        latest = self.health.runs_finished(result, definitions, now=now)
        outcomes = result.accepted
        if not outcomes:
            return
        failures = result.consecutive_failures
        self.alarms.update_failure_alarms(
            failures, result.recovered, latest, now=now,
            thresholds=_failure_thresholds(failures, definitions),
        )  # fmt: skip
        instruments = otel_instruments()
        add, record = instruments.runs.add, instruments.duration.record
        for o in outcomes:
            attributes = {"task": o.task_name, "outcome": o.status}
            add(1, attributes)
            record(o.duration_seconds, attributes)
        instruments.failures.update(failures)

    def check_alarms(self, *, now: datetime) -> set[str]:
        """The periodic alarm checks (each heartbeat): stuck runs, ``missed`` alarms whose
        task has succeeded since, and the alarms of tasks' ``alerts:`` policies (too fast,
        slow, deadline missed). Returns the names of stuck tasks."""
        self.alarms.close_recovered_missed(now=now)
        self.alarms.check_policy_alarms(now=now)
        return self.check_stuck(now=now)

    def check_stuck(self, *, now: datetime) -> set[str]:
        """Open a ``stuck`` alarm for each task with a run past ``max_runtime``; close
        cleared ones. Returns the names of stuck tasks (empty when the check could not run)."""
        return self.alarms.check_stuck(now=now)
