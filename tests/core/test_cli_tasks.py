"""``schedctl tasks add / show / remove``, ``run-now --args/--kwargs`` and ``scheduler
--module``: the runtime task commands, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from scheduler_core import Client
from tests.core.test_cli import schedctl


def migrated(url: str) -> str:
    assert schedctl("db", "upgrade", "--database-url", url).returncode == 0
    return url


def test_tasks_add_show_remove_round_trip(tmp_path: Path, sqlite_url: str) -> None:
    url = migrated(sqlite_url)
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "tasks:\n"
        "  - {name: greet, callable: 'tests.core.recorded:greet', every: 10m}\n"
        "  - {name: other, command: ['true'], cron: '0 6 * * *'}\n"
    )
    added = schedctl("tasks", "add", str(extra), "--database-url", url)
    assert added.returncode == 0, added.stderr
    assert "added 2 task(s)" in added.stdout
    again = schedctl("tasks", "add", str(extra), "--database-url", url)
    assert again.returncode == 2 and "'greet' (owned by api)" in again.stderr
    shown = json.loads(schedctl("tasks", "show", "greet", "--json", "--database-url", url).stdout)
    assert shown["source"] == "api" and shown["definition"]["every"] == 600.0
    assert shown["recent_runs"] == []
    text = schedctl("tasks", "show", "greet", "--database-url", url).stdout
    assert "source api" in text and "no runs yet" in text
    ran = schedctl("run-now", "greet", "--kwargs", '{"to": "ada"}', "--database-url", url)
    assert ran.returncode == 0 and "with the given arguments" in ran.stdout
    removed = schedctl("tasks", "remove", "other", "--database-url", url)
    assert removed.returncode == 0 and "history stays" in removed.stdout
    with Client(url) as client:
        assert [t["name"] for t in client.list_tasks()] == ["greet"]


def test_bad_input_is_named(tmp_path: Path, sqlite_url: str) -> None:
    url = migrated(sqlite_url)
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - {name: b, callable: 'x:y', every: sometimes}\n")
    added = schedctl("tasks", "add", str(bad), "--database-url", url)
    assert added.returncode == 2 and "every" in added.stderr and "sometimes" in added.stderr
    not_json = schedctl("run-now", "b", "--args", "[1,", "--database-url", url)
    assert not_json.returncode == 2 and "not JSON" in not_json.stderr
    not_list = schedctl("run-now", "b", "--args", '{"a": 1}', "--database-url", url)
    assert not_list.returncode == 2 and "--args must be a JSON list" in not_list.stderr
    missing = schedctl("tasks", "show", "nope", "--database-url", url)
    assert missing.returncode == 2 and "no task named 'nope'" in missing.stderr


def test_scheduler_syncs_modules_as_their_own_source(sqlite_url: str) -> None:
    url = migrated(sqlite_url)
    run = schedctl(
        "scheduler", "--module", "tests.core.decorated_jobs", "--database-url", url,
        "--duration", "0.3s", "--health-listen", "off",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    with Client(url) as client:
        sources = {t["name"]: t["source"] for t in client.list_tasks()}
    assert sources == {
        "hourly_report": "module:tests.core.decorated_jobs",
        "nightly-cleanup": "module:tests.core.decorated_jobs",
    }
    neither = schedctl("scheduler", "--database-url", url, "--health-listen", "off")
    assert neither.returncode == 2 and "--config FILE, --module MODULE" in neither.stderr
