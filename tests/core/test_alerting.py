"""Per-task alerting (issue 20) end to end on both backends, with an injected clock: the
``alerts:`` block in a task file, the client and the schedule row; the snapshot's policy,
deadline and per-task late grace (and ``list_tasks``' badge by the same rule); the failure
alarm at the task's own threshold; the ``too_fast``, ``slow`` and ``deadline_missed`` alarms
opening when their condition starts and closing when it clears."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from scheduler_core import Client
from scheduler_core.alert_policy import AlertPolicy, Deadline
from scheduler_core.config import definition_from_json, parse_task_document
from scheduler_core.errors import ConfigError
from scheduler_core.models import POLICY_ALARM_KINDS, alarm_events, schedules
from scheduler_core.store import RunOutcome, Store, alert_inputs
from scheduler_core.store.snapshot import ALARM_KINDS, SnapshotReader, read_snapshot
from scheduler_core.telemetry import TelemetryWriter
from scheduler_core.testing import FakeClock, run_cycle
from tests.core.conftest import T0, tasks
from tests.exporter.factories import NOW, insert, schedule_row

LEASE = timedelta(seconds=30)
README = Path(__file__).resolve().parents[2] / "README.md"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def alarm_rows(engine: sa.Engine, kind: str | None = None) -> list[sa.Row[Any]]:
    stmt = sa.select(alarm_events).order_by(alarm_events.c.id)
    if kind is not None:
        stmt = stmt.where(alarm_events.c.kind == kind)
    with engine.connect() as conn:
        return list(conn.execute(stmt))


def stored_policy_text(engine: sa.Engine, name: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(schedules.c.alert_policy).where(schedules.c.name == name)
        ).scalar_one()


class Runs:
    """Runs of synced tasks, driven by hand: dispatched at a time, ended after a duration,
    finalized and reported to the telemetry as the scheduler does."""

    def __init__(self, engine: sa.Engine) -> None:
        self.store = Store(engine, instance_id="inst-a")
        self.telemetry = TelemetryWriter(engine, instance_id="inst-a")
        self.store.register_instance(now=T0, lease=LEASE, hostname="h", pid=1, version="t")

    def start(self, now: datetime) -> list[Any]:
        claimed = self.store.claim_due_schedules(now=now, limit=100, lease=LEASE)
        return self.store.dispatch_claimed(claimed, now=now)

    def end(self, runs: list[Any], at: datetime, status: str = "success") -> None:
        outcomes = [RunOutcome.of(run, status, at) for run in runs]
        result = self.store.finalize_runs(outcomes, now=at)
        definitions = {run.task_name: run.definition for run in runs}
        self.telemetry.runs_finished(result, definitions, now=at)

    def run(self, now: datetime, seconds: float, status: str = "success") -> datetime:
        """Every due task runs from ``now`` for ``seconds``; returns when they ended."""
        runs = self.start(now)
        assert runs, f"nothing was due at {now}"
        end = now + timedelta(seconds=seconds)
        self.end(runs, end, status)
        return end

    def check(self, now: datetime) -> None:
        self.telemetry.check_alarms(now=now)


# --- the task file, the client and the schedule row -----------------------------------------


def test_alerts_merge_over_defaults_field_by_field_and_round_trip() -> None:
    """A task's block overrides its file's defaults field by field; the stored definition
    reads back to the same policy and digest; a task without alerts stores no ``alerts``
    key, so the digest of every task synced before stays."""
    [strict, plain] = tasks(
        {
            "name": "strict", "command": ["true"], "cron": "0 2 * * *",
            "alerts": {"failures": 1, "deadline": {"at": "06:00", "timezone": "Europe/Berlin"}},
        },
        {"name": "plain", "command": ["true"], "every": "5m"},
        defaults={"alerts": {"failures": 3, "max_duration": "30m", "severity": "warning"}},
    )  # fmt: skip
    assert strict.policies.alerts == AlertPolicy(
        failures=1, max_duration=1800.0, severity="warning",
        deadline=Deadline(at=time(6, 0), timezone="Europe/Berlin"),
    )  # fmt: skip
    assert plain.policies.alerts == AlertPolicy(failures=3, max_duration=1800.0, severity="warning")
    for definition in (strict, plain):
        again = definition_from_json(definition.to_json())
        assert again.policies.alerts == definition.policies.alerts
        assert again.digest() == definition.digest()
    [bare] = tasks({"name": "bare", "command": ["true"], "every": "5m"})
    assert "alerts" not in bare.to_dict() and bare.policies.alerts.is_empty()
    [empty] = tasks({"name": "bare", "command": ["true"], "every": "5m", "alerts": {}})
    assert empty.digest() == bare.digest()


def test_a_min_duration_from_defaults_against_a_task_max_duration_is_refused() -> None:
    """The defaults' min_duration and a task's shorter max_duration contradict each other
    only once merged: the file is refused naming that task, the field and the value."""
    with pytest.raises(ConfigError) as caught:
        parse_task_document(
            {
                "defaults": {"alerts": {"min_duration": "10m"}},
                "tasks": [
                    {"name": "quick", "command": ["true"], "every": "5m",
                     "alerts": {"max_duration": "5m"}},
                    {"name": "fine", "command": ["true"], "every": "5m"},
                ],
            },
            source="tasks.yaml",
        )  # fmt: skip
    assert [(i.task, i.field, i.value) for i in caught.value.issues] == [
        ("quick", "alerts.min_duration", "600s")
    ]
    assert "max_duration (300s)" in str(caught.value)


def test_every_alert_problem_is_named_with_field_and_value() -> None:
    """Bad fields in a task's block and in the defaults' are all reported at once, each as
    ``alerts.<field>`` with its value, as ``schedctl validate`` lists them."""
    with pytest.raises(ConfigError) as caught:
        parse_task_document(
            {
                "defaults": {"alerts": {"severity": "loud"}},
                "tasks": [
                    {
                        "name": "a", "command": ["true"], "every": "5m",
                        "alerts": {"failures": 0, "late_after": "soon", "dedline": "06:00"},
                    },
                    {"name": "b", "command": ["true"], "every": "5m", "alerts": "often"},
                ],
            },
            source="tasks.yaml",
        )  # fmt: skip
    found = {(i.task, i.field, i.value) for i in caught.value.issues}
    assert found == {
        (None, "alerts.severity", "loud"),
        ("a", "alerts.failures", 0),
        ("a", "alerts.late_after", "soon"),
        ("a", "alerts.dedline", "06:00"),
        ("b", "alerts", "often"),
    }
    assert "did you mean 'deadline'" in str(caught.value)


def test_schedctl_validate_names_the_alert_field_and_value(tmp_path: Path) -> None:
    """`schedctl validate` reports a bad alert field as it reports any other: exit 2, the
    file, the task, ``alerts.<field>`` and the value."""
    path = tmp_path / "tasks.yaml"
    path.write_text(
        "tasks:\n"
        "  - {name: nightly, command: ['true'], cron: '0 2 * * *',\n"
        "     alerts: {failures: 0, deadline: {at: '25:00'}}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "scheduler_core.cli", "validate", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert str(path) in done.stderr and "nightly" in done.stderr
    assert "'alerts.failures' = 0" in done.stderr
    assert "'alerts.deadline.at' = '25:00'" in done.stderr


def test_readme_alerts_example_is_a_valid_task_file() -> None:
    """The README's ``alerts:`` example parses, its block over its defaults."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- alerts-example -->\n```yaml\n(.*?)```", text, re.DOTALL)
    assert found, "README lost its alerts example"
    parsed = parse_task_document(
        yaml.safe_load(found.group(1)), source="README", check_callables=False
    )
    assert all(not t.policies.alerts.is_empty() for t in parsed)
    assert any(t.policies.alerts.deadline is not None for t in parsed)


def test_sync_stores_the_policy_and_an_edit_replaces_it(store: Store, db_engine: sa.Engine) -> None:
    """The schedule row's ``alert_policy`` is the policy's JSON, NULL without one; an edit
    writes the new one (or NULL when the block goes)."""
    with_alerts = {"name": "a", "command": ["true"], "every": "5m", "alerts": {"failures": 2}}
    store.sync_tasks(tasks(with_alerts, {"name": "b", "command": ["true"], "every": "5m"}), now=T0)
    assert json.loads(stored_policy_text(db_engine, "a") or "") == {"failures": 2}
    assert stored_policy_text(db_engine, "b") is None
    edited = {**with_alerts, "alerts": {"failures": 5, "min_duration": "1s"}}
    result = store.sync_tasks(tasks(edited), now=T0, disable_missing=False)
    assert result.updated == ["a"]
    assert AlertPolicy.from_json(stored_policy_text(db_engine, "a")) == AlertPolicy(
        failures=5, min_duration=1.0
    )
    store.sync_tasks(tasks({**with_alerts, "alerts": None}), now=T0, disable_missing=False)
    assert stored_policy_text(db_engine, "a") is None


def test_client_creates_and_changes_tasks_with_alerts(
    db_engine: sa.Engine, clock: FakeClock
) -> None:
    """``Client.add_tasks`` takes the block (the admin API's create path); a bad field is a
    ConfigError naming the task, the field and the value (the API's 400 with issues) and
    stores nothing; ``update_task`` replaces the block."""
    with Client(engine=db_engine, actor="tester", clock=clock) as client:
        spec = {"name": "api", "command": ["true"], "every": "5m", "alerts": {"late_after": "1h"}}
        assert client.add_tasks([spec]) == ["api"]
        task = client.get_task("api")
        assert task["definition"]["alerts"] == {"late_after": 3600.0}
        assert json.loads(stored_policy_text(db_engine, "api") or "") == {"late_after": 3600.0}
        with pytest.raises(ConfigError) as caught:
            client.add_tasks([{**spec, "name": "bad", "alerts": {"failures": "many"}}])
        [issue] = caught.value.issues
        assert (issue.task, issue.field, issue.value) == ("bad", "alerts.failures", "many")
        assert [t["name"] for t in client.list_tasks()] == ["api"]
        client.update_task("api", alerts={"failures": 1})
        assert json.loads(stored_policy_text(db_engine, "api") or "") == {"failures": 1}
        created = client.create_task({**spec, "name": "created"})  # the API's POST answer
        assert created["definition"]["alerts"] == {"late_after": 3600.0}
        assert created["badge"] == "ok"


# --- the snapshot and list_tasks --------------------------------------------------------------


def test_late_after_is_the_tasks_own_late_grace_in_both_readers(db_engine: sa.Engine) -> None:
    """Two tasks 10 minutes overdue: the one with ``late_after: 1h`` is not late, the other
    is (the global 300 s), in the snapshot and in ``list_tasks`` alike; the snapshot carries
    the policy, and no deadline to judge."""
    overdue = NOW - timedelta(minutes=10)
    patient = AlertPolicy(late_after=3600.0)
    insert(
        db_engine,
        schedules,
        [
            schedule_row("patient", next_run_at=overdue, alert_policy=patient.to_json()),
            schedule_row("plain", next_run_at=overdue, alert_policy=None),
        ],
    )
    served = read_snapshot(db_engine, NOW).tasks_by_name
    listed = {t["name"]: t["badge"] for t in Store(db_engine).list_tasks(now=NOW)}
    assert listed == {"patient": "ok", "plain": "late"}
    assert {n: t.badge for n, t in served.items()} == listed
    assert served["patient"].alert_policy == patient and served["plain"].alert_policy is None
    assert served["patient"].deadline_missed is None and served["plain"].deadline_missed is None


def test_snapshot_judges_a_deadline_in_the_tasks_time_zone(
    store: Store, db_engine: sa.Engine
) -> None:
    """An hourly task in Europe/Berlin (CET, UTC+1 on 2 March) with a 06:00 deadline: not
    judged before its first deadline after creation; missed at 05:30 UTC (06:30 in Berlin)
    with no success; met once a success finishes after the tick before the deadline."""
    [definition] = tasks(
        {
            "name": "report", "command": ["true"], "every": "1h", "timezone": "Europe/Berlin",
            "alerts": {"deadline": "06:00"},
        }
    )  # fmt: skip
    store.sync_tasks([definition], now=T0)
    assert read_snapshot(db_engine, utc(2026, 3, 2, 4, 30)).tasks[0].deadline_missed is False
    [task] = read_snapshot(db_engine, utc(2026, 3, 2, 5, 30)).tasks
    assert task.deadline_missed is True
    assert task.alert_policy == AlertPolicy(deadline=Deadline(at=time(6, 0)))
    runs = Runs(db_engine)
    runs.run(utc(2026, 3, 2, 5, 40), 60)  # the 05:00 UTC tick, run late
    assert read_snapshot(db_engine, utc(2026, 3, 2, 5, 45)).tasks[0].deadline_missed is False


def test_snapshot_parses_a_deadline_definition_once_and_reuses_unchanged_tasks(
    store: Store, db_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader rebuilds a deadline task's schedule from its stored definition on its first
    read only; the next read reuses the task's snapshot as it is; an edit is read anew."""
    parsed: list[str] = []
    real = alert_inputs.definition_from_json

    def counting(text: str, **kwargs: Any) -> Any:
        parsed.append(text)
        return real(text, **kwargs)

    monkeypatch.setattr(alert_inputs, "definition_from_json", counting)
    spec = {"name": "d", "command": ["true"], "cron": "0 2 * * *", "alerts": {"deadline": "6:00"}}
    store.sync_tasks(tasks(spec, {"name": "plain", "command": ["true"], "every": "5m"}), now=T0)
    reader = SnapshotReader()
    at = utc(2026, 3, 3, 7, 0)
    first = reader.read(db_engine, at).tasks_by_name
    second = reader.read(db_engine, at).tasks_by_name
    assert len(parsed) == 1 and first["d"].deadline_missed is True
    assert second["d"] is first["d"] and second["plain"] is first["plain"]
    store.sync_tasks(tasks({**spec, "alerts": {"deadline": "1:00"}}), now=T0, disable_missing=False)
    third = reader.read(db_engine, at).tasks_by_name
    assert len(parsed) == 2 and third["d"] is not first["d"]
    assert third["d"].alert_policy == AlertPolicy(deadline=Deadline(at=time(1, 0)))


# --- alarms -----------------------------------------------------------------------------------


def test_failure_alarm_opens_at_the_tasks_own_threshold(make_scheduler, clock, db_engine) -> None:
    """``alerts: {failures: 1}`` opens the consecutive_failures alarm after one failure, with
    that threshold in its details; a task at the global threshold (3) has none after two."""
    store = Store(db_engine, instance_id="inst-a")
    store.sync_tasks(
        tasks(
            {"name": "strict", "command": ["false"], "every": "10s", "alerts": {"failures": 1}},
            {"name": "lenient", "command": ["false"], "every": "10s"},
        ),
        now=clock.now(),
    )
    scheduler = make_scheduler()
    clock.advance(10)
    run_cycle(scheduler)
    [alarm] = alarm_rows(db_engine, "consecutive_failures")
    assert alarm.task_name == "strict" and alarm.closed_at is None
    assert json.loads(alarm.details)["threshold"] == 1
    clock.advance(10)
    run_cycle(scheduler)
    assert [a.task_name for a in alarm_rows(db_engine, "consecutive_failures")] == ["strict"]
    clock.advance(10)
    run_cycle(scheduler)
    lenient = [a for a in alarm_rows(db_engine) if a.task_name == "lenient"]
    assert [json.loads(a.details)["threshold"] for a in lenient] == [3]


def test_too_fast_opens_on_a_fast_success_and_closes_on_a_normal_one(
    store: Store, db_engine: sa.Engine
) -> None:
    """A success under ``min_duration`` opens ``too_fast`` (details: threshold and duration);
    a failure that fast is not judged; the next success of normal length closes it."""
    spec = {"name": "fast", "command": ["true"], "every": "1h", "alerts": {"min_duration": "2s"}}
    store.sync_tasks(tasks(spec), now=T0)
    runs = Runs(db_engine)
    end = runs.run(T0 + timedelta(hours=1), 0.5, "failure")
    runs.check(end)
    assert alarm_rows(db_engine) == []
    end = runs.run(T0 + timedelta(hours=2), 0.5)
    runs.check(end)
    [alarm] = alarm_rows(db_engine)
    assert (alarm.kind, alarm.opened_at, alarm.closed_at) == ("too_fast", end, None)
    assert json.loads(alarm.details) == {"duration_seconds": 0.5, "threshold_seconds": 2.0}
    runs.check(end + timedelta(minutes=1))
    assert len(alarm_rows(db_engine)) == 1  # still one, still open
    end = runs.run(T0 + timedelta(hours=3), 5)
    runs.check(end)
    [alarm] = alarm_rows(db_engine)
    assert alarm.closed_at == end


def test_slow_opens_past_max_duration_and_closes_when_the_task_loses_its_policy(
    store: Store, db_engine: sa.Engine
) -> None:
    """A run longer than ``max_duration`` opens ``slow``; a shorter one closes it; an open
    one closes too when the task's policy is removed."""
    spec = {"name": "slow", "command": ["true"], "every": "1h", "alerts": {"max_duration": "10s"}}
    store.sync_tasks(tasks(spec), now=T0)
    runs = Runs(db_engine)
    end = runs.run(T0 + timedelta(hours=1), 20)
    runs.check(end)
    [alarm] = alarm_rows(db_engine)
    assert (alarm.kind, alarm.closed_at) == ("slow", None)
    assert json.loads(alarm.details) == {"duration_seconds": 20.0, "threshold_seconds": 10.0}
    end = runs.run(T0 + timedelta(hours=2), 5)
    runs.check(end)
    assert alarm_rows(db_engine)[0].closed_at == end
    end = runs.run(T0 + timedelta(hours=3), 30)
    runs.check(end)
    assert [a.closed_at for a in alarm_rows(db_engine)] == [
        T0 + timedelta(hours=2, seconds=5),
        None,
    ]
    store.sync_tasks(tasks({**spec, "alerts": None}), now=end)
    runs.check(end + timedelta(seconds=1))
    assert alarm_rows(db_engine)[-1].closed_at == end + timedelta(seconds=1)


def test_slow_compares_with_the_usual_duration_once_there_are_enough_runs(
    store: Store, db_engine: sa.Engine
) -> None:
    """``slower_than_usual: 3``: a 10 s run among 1 s runs is not judged while the task has
    fewer than 20 finished runs; at 20 it opens ``slow`` with the median in its details; a
    usual run closes it."""
    spec = {
        "name": "usual", "command": ["true"], "every": "1m", "alerts": {"slower_than_usual": 3}
    }  # fmt: skip
    store.sync_tasks(tasks(spec), now=T0)
    runs = Runs(db_engine)
    for minute in range(1, 19):
        runs.run(T0 + timedelta(minutes=minute), 1)
    end = runs.run(T0 + timedelta(minutes=19), 10)  # the 19th run
    runs.check(end)
    assert alarm_rows(db_engine) == []
    end = runs.run(T0 + timedelta(minutes=20), 10)  # the 20th
    runs.check(end)
    [alarm] = alarm_rows(db_engine)
    details = json.loads(alarm.details)
    assert alarm.kind == "slow" and details["slower_than_usual"] == 3.0
    assert details["duration_seconds"] == 10.0 and 0 < details["usual_seconds"] <= 1.0
    assert details["threshold_seconds"] == pytest.approx(3 * details["usual_seconds"])
    end = runs.run(T0 + timedelta(minutes=21), 1)
    runs.check(end)
    assert alarm_rows(db_engine)[0].closed_at == end


def test_deadline_missed_opens_at_the_deadline_and_closes_on_a_late_success(
    store: Store, db_engine: sa.Engine
) -> None:
    """A 02:00 daily task with a 06:00 deadline, created the day before at noon: nothing at
    05:59 (its first judged tick is 02:00 today); at 06:00:01 with its run still going the
    alarm opens; the run's success at 06:30 closes it."""
    spec = {
        "name": "nightly",
        "command": ["true"],
        "cron": "0 2 * * *",
        "alerts": {"deadline": "06:00"},
    }
    store.sync_tasks(tasks(spec), now=T0)
    runs = Runs(db_engine)
    [run] = runs.start(utc(2026, 3, 2, 2, 0))
    runs.check(utc(2026, 3, 2, 5, 59))
    assert alarm_rows(db_engine) == []
    runs.check(utc(2026, 3, 2, 6, 0, 1))
    [alarm] = alarm_rows(db_engine)
    assert (alarm.kind, alarm.opened_at, alarm.closed_at) == (
        "deadline_missed", utc(2026, 3, 2, 6, 0, 1), None,
    )  # fmt: skip
    assert json.loads(alarm.details) == {
        "deadline": "06:00:00", "timezone": "UTC", "due_at": "2026-03-02T06:00:00+00:00",
        "last_success_at": None,
    }  # fmt: skip
    runs.end([run], utc(2026, 3, 2, 6, 30))
    runs.check(utc(2026, 3, 2, 6, 31))
    assert alarm_rows(db_engine)[0].closed_at == utc(2026, 3, 2, 6, 31)


def test_a_paused_or_disabled_task_opens_no_policy_alarm(
    store: Store, db_engine: sa.Engine
) -> None:
    """A slow run of a paused task opens nothing; resumed, the alarm opens; paused again it
    closes, as for a disabled task (Prometheus pages for neither)."""
    spec = {"name": "slow", "command": ["true"], "every": "1h", "alerts": {"max_duration": "10s"}}
    store.sync_tasks(tasks(spec), now=T0)
    runs = Runs(db_engine)
    end = runs.run(T0 + timedelta(hours=1), 20)
    store.pause("slow", reason="maintenance", by="ops", now=end)
    runs.check(end)
    assert alarm_rows(db_engine) == []
    store.resume("slow", now=end, by="ops")
    runs.check(end + timedelta(seconds=1))
    assert [(a.kind, a.closed_at) for a in alarm_rows(db_engine)] == [("slow", None)]
    store.pause("slow", reason="maintenance", by="ops", now=end)
    runs.check(end + timedelta(seconds=2))
    assert alarm_rows(db_engine)[0].closed_at == end + timedelta(seconds=2)
    store.resume("slow", now=end, by="ops")
    store.sync_tasks(tasks({**spec, "enabled": False}), now=end)
    runs.check(end + timedelta(seconds=3))
    assert len(alarm_rows(db_engine)) == 1


def test_policy_alarm_kinds_are_apart_from_the_always_on_kinds() -> None:
    """The per-policy kinds are not among the kinds every task gets a series of."""
    assert set(POLICY_ALARM_KINDS) == {"too_fast", "slow", "deadline_missed"}
    assert not set(POLICY_ALARM_KINDS) & set(ALARM_KINDS)
