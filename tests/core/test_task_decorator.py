"""``@task`` declares a function's schedule; a module's tasks sync as that module's source,
and the embedded ``Scheduler.from_url`` runs them in this process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler_core import Client, Scheduler, task
from scheduler_core.decorator import tasks_of_module
from scheduler_core.errors import ConfigError
from scheduler_core.models import schedules
from tests.core import recorded

MODULE = "tests.core.decorated_jobs"


def test_decorated_functions_are_tasks_of_their_module() -> None:
    found = {d.name: d for d in tasks_of_module(MODULE)}
    assert set(found) == {"hourly_report", "nightly-cleanup"}
    assert found["hourly_report"].action.to_dict() == {"callable": f"{MODULE}:hourly_report"}
    assert found["hourly_report"].policies.retries.max == 1
    assert found["nightly-cleanup"].policies.timeout == 300.0


def test_a_bad_decorator_fails_naming_the_field_and_value() -> None:
    with pytest.raises(ConfigError) as caught:

        @task(every="often")
        def broken() -> None: ...

    [issue] = caught.value.issues
    assert (issue.field, issue.value) == ("every", "often")
    with pytest.raises(TypeError, match="module-level"):

        @task(every="1m")
        def nested() -> None: ...


def test_from_url_syncs_the_module_as_its_own_source(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    scheduler = Scheduler.from_url(
        url, modules=[MODULE], tasks=[{"name": "inline", "command": ["true"], "every": "1h"}]
    )
    try:
        with scheduler.engine.connect() as conn:
            sources = dict(conn.execute(sa.select(schedules.c.name, schedules.c.source)).all())
    finally:
        scheduler.stop()
    assert sources == {
        "hourly_report": f"module:{MODULE}",
        "nightly-cleanup": f"module:{MODULE}",
        "inline": "embedded",
    }


def test_embedded_scheduler_runs_a_task_added_while_it_runs(tmp_path: Path) -> None:
    recorded.reset()
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Scheduler.from_url(url, poll_interval=0.05) as scheduler, scheduler.client() as client:
        client.run_now(
            client.add_task(
                {
                    "name": "now",
                    "callable": "tests.core.recorded:greet",
                    "args": ["hi"],
                    "at": "2099-01-01T00:00:00+00:00",
                }
            )
        )
        deadline = time.monotonic() + 10
        while not recorded.CALLS and time.monotonic() < deadline:
            time.sleep(0.02)
    assert recorded.CALLS == [(("hi",), {})]
    with Client(url) as client:
        [run] = client.list_runs(task="now")
    assert (run["status"], run["trigger"]) == ("success", "manual")
