"""Issue 18's acceptance on real parts: two `schedctl scheduler` processes on a throwaway
PostgreSQL and one `schedctl exporter` with the admin API on; 1,000 tasks are created over
HTTP while the schedulers run, then some are changed, removed and run now over HTTP.

One scenario runs for the whole module (about 25 s); each test checks one promise against
the run rows (``scheduler_task_runs``), the audit events and what the task callable itself
recorded. The callable is :func:`scheduler_core.testing.record_call`: in the scheduler
processes it appends each call (args, kwargs, pid, wall time) as a JSON line to a file of this
test, so an execution the run table does not show would still be seen.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler_core.db import create_db_engine
from scheduler_core.models import audit_events, instances, task_runs
from scheduler_core.testing import RECORD_CALLS_ENV, read_recorded_calls
from tests.core.test_multi_instance import SCHEDCTL, assert_contiguous, start_instances, stop_all
from tests.exporter.test_admin_api import ADMIN, READ, call
from tests.support.pgserver import PostgresServer
from tests.support.prometheus import ManagedProcess, free_port, wait_until

# The timeout is a backstop: every wait below has its own, much shorter, deadline.
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(150)]

RECORD = "scheduler_core.testing:record_call"
INSTANCE_IDS = ("node-a", "node-b")
#: The schedulers' claim look-ahead (passed as --look-ahead; README: "ticks are claimed up to
#: --look-ahead (500 ms) before they are due"): a tick claimed before a change or a removal
#: committed may still run, but none due later than this after the change was answered.
LOOK_AHEAD = timedelta(milliseconds=500)
#: The promise under test: a first run starts within this of its due time.
START_BOUND = timedelta(seconds=1)
#: The schedulers read the database's clock through an offset measured to half a round trip:
#: by this process's clock a call may start this much before its time (as in
#: tests/reliability/test_clock.py).
CLOCK_ERROR_S = 0.01
#: How far ahead of its creation request a one-time task is due.
ONCE_LEAD = timedelta(seconds=3)
#: How far ahead a doomed one-time task is due: it is removed right after its creation.
DOOMED_LEAD = timedelta(seconds=9)
#: After the changes, how long the schedulers keep running before they are stopped.
OBSERVE_AFTER_CHANGES = timedelta(seconds=6)
OLD_EVERY, NEW_EVERY = timedelta(seconds=2), timedelta(milliseconds=1500)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# 1,000 tasks, all created over HTTP while both schedulers run.
ONCE = [f"once-{i:03d}" for i in range(880)]  # at: 3 s after its request
DOOMED = [f"doomed-{i:02d}" for i in range(50)]  # at: 9 s ahead, removed at once
STEADY = [f"steady-{i:02d}" for i in range(30)]  # every 1s, kept
REMOVED = [f"removed-{i:02d}" for i in range(20)]  # every 1s, removed while running
RETIMED = [f"retimed-{i}" for i in range(10)]  # every 2s, changed to every 1500ms
RUN_NOW_LATER = [f"run-now-later-{i}" for i in range(5)]  # at: tomorrow; two run-nows each
RUN_NOW_EVERY = [f"run-now-every-{i}" for i in range(5)]  # every 1s; one run-now each
EVERY_SECOND = STEADY + REMOVED + RUN_NOW_EVERY


def overrides(name: str) -> dict[str, Any]:
    """The run-now body for ``name``: arguments its own runs never get."""
    return {"args": ["override", name, len(name)], "kwargs": {"run_now": True, "of": name}}


@dataclass
class Request:
    """One admin API request: when it was sent and answered (local clock), and its status."""

    sent: datetime
    answered: datetime
    status: int


@dataclass
class Sent:
    """What the scenario asked of the admin API, by task name."""

    created: dict[str, Request]
    due: dict[str, datetime]  # the `at` of each one-time task
    removed: dict[str, Request]
    patched: dict[str, Request]
    run_now: dict[str, Request]  # with overrides
    plain_run_now: dict[str, Request]  # without a body, after the first one ran
    claimed_tick: dict[str, datetime]  # RUN_NOW_EVERY: the tick claimed ahead when asked


@dataclass
class Scenario:
    """Everything the tests check, read once the processes have stopped."""

    sent: Sent
    runs: list[sa.Row]
    audits: list[sa.Row]
    records: list[dict[str, Any]]
    stop_sent: datetime
    scheduler_pids: dict[str, int]
    by_task: dict[str, list[sa.Row]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        grouped: dict[str, list[sa.Row]] = defaultdict(list)
        for run in sorted(self.runs, key=lambda r: (r.scheduled_for, r.attempt)):
            grouped[run.task_name].append(run)
        self.by_task = dict(grouped)

    def scheduled(self, name: str) -> list[sa.Row]:
        return [r for r in self.by_task.get(name, []) if r.trigger == "schedule"]

    def manual(self, name: str) -> list[sa.Row]:
        return [r for r in self.by_task.get(name, []) if r.trigger == "manual"]

    def audit_times(self, name: str, action: str) -> list[datetime]:
        return [a.at for a in self.audits if a.task_name == name and a.action == action]

    def audit_times_of(self, action: str) -> list[datetime]:
        return [a.at for a in self.audits if a.action == action]

    def audit_at(self, name: str, action: str) -> datetime:
        [at] = self.audit_times(name, action)
        return at

    def calls(self, name: str) -> list[dict[str, Any]]:
        """The recorded calls of ``name`` with its own arguments (each task's are [name])."""
        return [c for c in self.records if c["args"] == [name] and c["kwargs"] == {}]

    def override_calls(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.records if c["args"] == overrides(name)["args"]]


def now() -> datetime:
    return datetime.now(UTC)


def micros(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def next_tick(after: datetime, every: timedelta) -> datetime:
    """The first tick strictly after ``after`` of the epoch-anchored grid of ``every``."""
    step = every // timedelta(microseconds=1)
    return EPOCH + timedelta(microseconds=(micros(after) // step + 1) * step)


def on_grid(at: datetime, every: timedelta) -> bool:
    return micros(at) % (every // timedelta(microseconds=1)) == 0


def assert_contiguous_on(ticks: list[datetime], every: timedelta, name: str) -> None:
    gaps = [(a, b) for a, b in itertools.pairwise(ticks) if b - a != every]
    assert not gaps, f"{name}: ticks not every {every}: {gaps[:3]}"


# ----------------------------------------------------------------------------------------------
# The scenario


def task_body(name: str, due: dict[str, datetime]) -> dict[str, Any]:
    """The POST body of task ``name``, sent now; a one-time task's `at` goes into ``due``."""
    body: dict[str, Any] = {"name": name, "callable": RECORD, "args": [name]}
    if name in RETIMED:
        return {**body, "every": "2s"}
    if name in EVERY_SECOND:
        return {**body, "every": "1s"}
    lead = ONCE_LEAD if name in ONCE else DOOMED_LEAD if name in DOOMED else timedelta(days=1)
    due[name] = now() + lead
    return {**body, "at": due[name].isoformat()}


class Admin:
    """The admin API of the exporter at ``base``, driven from a bounded thread pool."""

    def __init__(self, base: str, pool: ThreadPoolExecutor) -> None:
        self.base = base
        self.pool = pool
        self.due: dict[str, datetime] = {}

    def send(self, method: str, path: str, body: Any = None) -> Request:
        sent = now()
        reply = call(self.base, method, path, body, token=ADMIN)
        return Request(sent, now(), reply.status)

    def create(self, name: str) -> Request:
        sent = now()
        reply = call(self.base, "POST", "/api/v1/tasks", task_body(name, self.due), token=ADMIN)
        return Request(sent, now(), reply.status)

    def delete(self, name: str) -> Request:
        return self.send("DELETE", f"/api/v1/tasks/{name}")

    def each(
        self, names: Sequence[str], work: Callable[[str], Request], expect: int
    ) -> dict[str, Request]:
        """``work(name)`` for every name, concurrently; each must answer ``expect``."""
        answers = dict(zip(names, self.pool.map(work, names), strict=True))
        wrong = {n: r.status for n, r in answers.items() if r.status != expect}
        assert not wrong, f"expected {expect}, got {dict(list(wrong.items())[:5])}"
        return answers


def start_exporter(url: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    exporter = ManagedProcess("exporter", ready_url=f"{base}/health")
    exporter.launch(
        [*SCHEDCTL, "exporter", "--database-url", url, "--listen", f"127.0.0.1:{port}",
         "--token", READ, "--enable-admin-api", "--admin-token", ADMIN,
         "--refresh-interval", "30s"]
    )  # fmt: skip
    return exporter, base


def finished_runs(
    engine: sa.Engine, names: Sequence[str], *, at_least: int, trigger: str = "schedule"
) -> bool:
    """Whether each of ``names`` has at least ``at_least`` finished runs of ``trigger``."""
    query = (
        sa.select(task_runs.c.task_name, sa.func.count())
        .where(
            task_runs.c.task_name.in_(names),
            task_runs.c.trigger == trigger,
            task_runs.c.status != "running",
        )
        .group_by(task_runs.c.task_name)
    )
    with engine.connect() as conn:
        found = dict(conn.execute(query).all())
    return all(found.get(n, 0) >= at_least for n in names)


def claimed_ahead(engine: sa.Engine, names: Sequence[str]) -> dict[str, datetime] | None:
    """Each of ``names``' tick claimed ahead (its run row in, its time not come), or None
    unless every one of them has one."""
    query = (
        sa.select(task_runs.c.task_name, sa.func.min(task_runs.c.scheduled_for))
        .where(
            task_runs.c.task_name.in_(names),
            task_runs.c.status == "running",
            task_runs.c.trigger == "schedule",
            task_runs.c.scheduled_for > sa.func.clock_timestamp(),
        )
        .group_by(task_runs.c.task_name)
    )
    with engine.connect() as conn:
        found = dict(conn.execute(query).all())
    return found if set(found) == set(names) else None


def drive(engine: sa.Engine, base: str) -> Sent:
    """Create the 1,000 tasks, then change, remove and run some; returns what was sent."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        admin = Admin(base, pool)
        created = admin.each([*RETIMED, *EVERY_SECOND, *RUN_NOW_LATER, *DOOMED], admin.create, 201)
        # The doomed one-time tasks go at once, long before their time.
        removed = admin.each(DOOMED, admin.delete, 204)
        created |= admin.each(ONCE, admin.create, 201)
        # Each task to change or remove has run (twice) before it is changed or removed.
        wait_until(
            lambda: finished_runs(engine, [*RETIMED, *REMOVED], at_least=2),
            timeout=15,
            what="two runs of each task to change or remove",
        )
        patched = admin.each(
            RETIMED, lambda n: admin.send("PATCH", f"/api/v1/tasks/{n}", {"every": "1500ms"}), 200
        )
        removed |= admin.each(REMOVED, admin.delete, 204)

        def run_now(name: str) -> Request:
            return admin.send("POST", f"/api/v1/tasks/{name}/run-now", overrides(name))

        asked = admin.each(RUN_NOW_LATER, run_now, 202)
        claimed = wait_until(
            lambda: claimed_ahead(engine, RUN_NOW_EVERY),
            timeout=5,
            interval=0.01,
            what="the next tick of the every-second run-now tasks claimed ahead",
        )
        asked |= admin.each(RUN_NOW_EVERY, run_now, 202)
        wait_until(
            lambda: finished_runs(engine, RUN_NOW_LATER, at_least=1, trigger="manual"),
            timeout=10,
            what="the first run-now of each one-time task",
        )
        plain = admin.each(
            RUN_NOW_LATER, lambda n: admin.send("POST", f"/api/v1/tasks/{n}/run-now"), 202
        )
    return Sent(created, admin.due, removed, patched, asked, plain, claimed)


def wait_for_the_end(engine: sa.Engine, sent: Sent) -> None:
    """Until every one-time task and every run-now ran, the doomed tasks' time passed, and
    the changed tasks ran a while after the change."""
    wait_until(
        lambda: finished_runs(engine, ONCE, at_least=1),
        timeout=20,
        what="a run of every one-time task",
    )
    wait_until(
        lambda: (
            finished_runs(engine, RUN_NOW_LATER, at_least=2, trigger="manual")
            and finished_runs(engine, RUN_NOW_EVERY, at_least=1, trigger="manual")
        ),
        timeout=10,
        what="every run-now finished",
    )
    changed = max(r.answered for r in [*sent.patched.values(), *sent.removed.values()])
    until = max(
        changed + OBSERVE_AFTER_CHANGES,
        max(sent.due[n] for n in DOOMED) + START_BOUND + LOOK_AHEAD,
    )
    remaining = (until - now()).total_seconds()
    assert remaining < 20, f"the scenario would run {remaining:.1f} s more"
    time.sleep(max(0.0, remaining))


def both_running(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(instances.c.instance_id, instances.c.state)).all())
    return all(states.get(i) == "running" for i in INSTANCE_IDS)


def run_scenario(url: str, tmp: Path) -> Scenario:
    record_file = tmp / "calls.jsonl"
    config = tmp / "tasks.yaml"
    config.write_text("tasks: []\n")
    engine = create_db_engine(url)
    with pytest.MonkeyPatch.context() as patch:  # the scheduler processes inherit it
        patch.setenv(RECORD_CALLS_ENV, str(record_file))
        exporter, base = start_exporter(url)
        procs = start_instances(
            config, url, list(INSTANCE_IDS), "--no-cleanup", "--look-ahead", "500ms"
        )
    try:
        wait_until(lambda: both_running(engine), timeout=30, what="both schedulers running")
        sent = drive(engine, base)
        wait_for_the_end(engine, sent)
        stop_sent = now()
    finally:
        output = stop_all(procs)
        exporter_log = exporter.log_tail()
        exporter.stop()
        try:
            with engine.connect() as conn:
                runs = list(conn.execute(sa.select(task_runs).order_by(task_runs.c.id)))
                audits = list(conn.execute(sa.select(audit_events).order_by(audit_events.c.id)))
        finally:
            engine.dispose()
    assert all(p.returncode == 0 for p in procs), f"{output}\n--- exporter ---\n{exporter_log}"
    return Scenario(
        sent=sent, runs=runs, audits=audits, records=read_recorded_calls(record_file),
        stop_sent=stop_sent,
        scheduler_pids={i: p.pid for i, p in zip(INSTANCE_IDS, procs, strict=True)},
    )  # fmt: skip


@pytest.fixture(scope="module")
def scenario(
    pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    from tests.conftest import TEMPLATE_DB

    name = pg_server.create_database(template=TEMPLATE_DB)
    try:
        yield run_scenario(pg_server.url(name), tmp_path_factory.mktemp("runtime-schedules"))
    finally:
        pg_server.drop_database(name)


# ----------------------------------------------------------------------------------------------
# The promises


def test_each_first_run_starts_within_a_second_of_its_due_time(scenario: Scenario) -> None:
    """Every task created over HTTP runs its first tick (the first one due after its
    creation) and starts it at most 1 s after it was due, by its run row and by the callable."""
    assert len(scenario.sent.created) == len(scenario.audit_times_of("add")) == 1000
    due = {n: scenario.sent.due[n] for n in ONCE}
    for name in EVERY_SECOND:
        due[name] = next_tick(scenario.audit_at(name, "add"), timedelta(seconds=1))
    for name in RETIMED:
        due[name] = next_tick(scenario.audit_at(name, "add"), OLD_EVERY)
    assert len(due) == 945
    late: list[str] = []
    for name, at in due.items():
        scheduled = scenario.scheduled(name)
        assert scheduled, f"{name}: never ran"
        first = scheduled[0]
        assert first.scheduled_for == at, f"{name}: first tick {first.scheduled_for}, not {at}"
        assert first.status == "success", f"{name}: {first.status} {first.error_message}"
        delay = first.started_at - at
        assert delay >= timedelta(0), f"{name}: started {-delay} before its time"
        if delay > START_BOUND:
            late.append(f"{name}: {delay.total_seconds():.3f} s")
    assert not late, f"{len(late)} first run(s) late: {late[:10]}"
    for name in ONCE:
        # Its creation answered well before it was due (the scenario's own precondition).
        assert scenario.sent.created[name].answered < scenario.sent.due[name] - LOOK_AHEAD
        # The callable itself ran within the bound too: a one-time task has one call.
        [called] = scenario.calls(name)
        delay_s = called["t"] - scenario.sent.due[name].timestamp()
        assert -CLOCK_ERROR_S <= delay_s <= START_BOUND.total_seconds(), f"{name}: {delay_s:.4f} s"


def test_an_interval_change_takes_effect_at_the_next_tick(scenario: Scenario) -> None:
    """After `every: 2s` is changed to `every: 1500ms` over HTTP, the first tick of the new
    grid after the change and every one after it run, with none skipped; only a tick claimed
    before the change (due within the look-ahead) may still be on the old grid."""
    for name in RETIMED:
        changed = scenario.audit_at(name, "update")
        request = scenario.sent.patched[name]
        assert request.sent <= changed <= request.answered
        runs = scenario.scheduled(name)
        assert all(r.status == "success" for r in runs), [(r.scheduled_for, r.status) for r in runs]
        ticks = [r.scheduled_for for r in runs]
        before = [t for t in ticks if t <= changed]
        after = [t for t in ticks if t > changed]
        assert len(before) >= 2 and all(on_grid(t, OLD_EVERY) for t in before), (name, before)
        assert_contiguous_on(before, OLD_EVERY, name)
        first_new = next_tick(changed, NEW_EVERY)
        new = [t for t in after if t >= first_new and on_grid(t, NEW_EVERY)]
        assert len(new) >= 3, f"{name}: only {len(new)} ticks after the change: {after}"
        assert new[0] == first_new, f"{name}: first new tick {new[0]}, expected {first_new}"
        assert_contiguous_on(new, NEW_EVERY, name)
        # It kept its new schedule until the schedulers were stopped.
        assert new[-1] >= scenario.stop_sent - NEW_EVERY - START_BOUND, (name, new[-1])
        # Anything else is at most one old tick, claimed before the change committed.
        claimed = [t for t in after if t not in new]
        assert len(claimed) <= 1, f"{name}: old-grid ticks after the change {claimed}"
        for tick in claimed:
            assert on_grid(tick, OLD_EVERY) and tick <= request.answered + LOOK_AHEAD, tick


def test_removed_tasks_never_run_again(scenario: Scenario) -> None:
    """After a DELETE answers, the task never runs again: no run of it is due more than the
    look-ahead after the answer and no call of it starts later; a one-time task removed
    before its time never runs at all."""
    for name in REMOVED:
        request = scenario.sent.removed[name]
        ticks = [r.scheduled_for for r in scenario.by_task[name]]
        assert len([t for t in ticks if t <= request.sent]) >= 2, f"{name}: {ticks}"
        late = [t for t in ticks if t > request.answered + LOOK_AHEAD]
        assert not late, f"{name}: ran for {late}; its removal answered at {request.answered}"
        # At most the one tick claimed ahead before the removal committed.
        assert len([t for t in ticks if t > scenario.audit_at(name, "remove")]) <= 1, ticks
        limit = (request.answered + LOOK_AHEAD + START_BOUND).timestamp()
        calls = [c["t"] for c in scenario.calls(name) if c["t"] > limit]
        assert not calls, f"{name}: called at {calls}; its removal answered at {request.answered}"
        # The schedulers ran on long enough after the removal for a run to show.
        assert scenario.stop_sent - request.answered >= OBSERVE_AFTER_CHANGES
    for name in DOOMED:
        answered = scenario.sent.removed[name].answered
        assert answered < scenario.sent.due[name] - LOOK_AHEAD - START_BOUND, name
        assert name not in scenario.by_task, f"{name}: ran after its removal"
        assert not scenario.calls(name), f"{name}: called after its removal"
    assert scenario.stop_sent > max(scenario.sent.due[n] for n in DOOMED) + START_BOUND
    removes = [a.task_name for a in scenario.audits if a.action == "remove"]
    assert sorted(removes) == sorted(REMOVED + DOOMED)


def test_no_tick_runs_twice_and_both_instances_run(scenario: Scenario) -> None:
    """Across the two scheduler processes no (task, tick, attempt) has two run rows, each
    successful run is exactly one call of the callable, the every-second tasks ran every
    tick, and both instances ran a share of the runs."""
    keys = Counter((r.task_name, r.scheduled_for, r.attempt) for r in scenario.runs)
    assert [k for k, n in keys.items() if n > 1] == []
    # A tick claimed ahead when SIGTERM came may be cancelled before it starts. (The
    # run-now of RUN_NOW_EVERY is checked, with its known bug, by its own test below.)
    unexpected = [
        (r.task_name, r.scheduled_for, r.status, r.error_message)
        for r in scenario.runs
        if r.status != "success"
        and not (r.status == "cancelled" and r.scheduled_for >= scenario.stop_sent)
        and not (r.task_name in RUN_NOW_EVERY and r.trigger == "manual")
    ]
    assert not unexpected, unexpected[:5]
    for name in [*ONCE, *EVERY_SECOND, *RETIMED]:
        succeeded = [r for r in scenario.scheduled(name) if r.status == "success"]
        assert len(scenario.calls(name)) == len(succeeded), (
            f"{name}: {len(scenario.calls(name))} calls for {len(succeeded)} successful runs"
        )
    for name in [*STEADY, *RUN_NOW_EVERY]:
        ticks = [r.scheduled_for for r in scenario.scheduled(name) if r.status == "success"]
        assert_contiguous(ticks, task=name)
        assert ticks[-1] >= scenario.stop_sent - 2 * START_BOUND, (name, ticks[-1])
    assert sum(r.status == "success" for r in scenario.runs) == len(scenario.records)
    per_instance = Counter(r.instance_id for r in scenario.runs if r.status == "success")
    assert set(per_instance) == set(INSTANCE_IDS), per_instance
    assert min(per_instance.values()) >= 100, per_instance
    assert {c["pid"] for c in scenario.records} == set(scenario.scheduler_pids.values())


def test_run_now_with_overrides_runs_once_with_those_arguments(scenario: Scenario) -> None:
    """A run-now with `{"args": [...], "kwargs": {...}}` gives exactly one `manual` run whose
    call got exactly those arguments; a later run-now without a body gets the task's own."""
    for name in RUN_NOW_LATER:
        asked, plain = scenario.audit_times(name, "run-now")
        runs = scenario.by_task[name]
        assert [(r.trigger, r.scheduled_for, r.status) for r in runs] == [
            ("manual", asked, "success"),
            ("manual", plain, "success"),
        ], f"{name}: {[(r.trigger, r.status, r.error_message) for r in runs]}"
        assert runs[0].started_at - asked <= START_BOUND + LOOK_AHEAD, (name, runs[0].started_at)
        [with_overrides] = scenario.override_calls(name)
        assert with_overrides["kwargs"] == overrides(name)["kwargs"]
        [own] = scenario.calls(name)
        assert own["t"] > with_overrides["t"] and own["t"] >= plain.timestamp() - CLOCK_ERROR_S
    others = [c for c in scenario.records if c["kwargs"] and c["args"][1] not in RUN_NOW_EVERY]
    assert len(others) == len(RUN_NOW_LATER)


def test_run_now_while_the_next_tick_is_claimed_ahead_runs_once(scenario: Scenario) -> None:
    """A run-now with overrides asked while the task's next tick is claimed ahead (not started,
    waiting for its time) still runs once, with those arguments."""
    for name in RUN_NOW_EVERY:
        tick = scenario.sent.claimed_tick[name]
        if scenario.sent.run_now[name].answered >= tick:
            pytest.skip(f"{name}: the run-now answered after the claimed tick {tick} was due")
        manual = scenario.manual(name)
        assert [(r.status, r.error_message) for r in manual] == [("success", None)], name
        [with_overrides] = scenario.override_calls(name)
        assert with_overrides["kwargs"] == overrides(name)["kwargs"]
