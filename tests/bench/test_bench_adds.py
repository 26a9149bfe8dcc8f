"""Smoke runs of the runtime-adds benchmark (bench/runtime_adds.py) at the SMOKE size: every
task added is stored, every HTTP create is answered 201 and stored, the scheduler reaches
its first claim on a first start and a restart. Never timings: CI machines vary."""

from __future__ import annotations

import pytest

from bench import exporter_bench, runtime_adds
from bench.common import Databases
from bench.sizes import SMOKE
from scheduler_core.config import parse_task_document

pytestmark = pytest.mark.postgres


def test_generated_task_file_is_valid_with_varied_cron_expressions() -> None:
    """The start-up file parses as a task file, its names are unique and its cron
    expressions mostly distinct, as a real file's are."""
    document = runtime_adds.task_document(2_000)
    definitions = parse_task_document(document, source="bench", check_callables=False)
    assert len({d.name for d in definitions}) == 2_000
    assert len({t["cron"] for t in document["tasks"]}) > 1_000


def test_adds_store_every_task_without_peers(dbs: Databases) -> None:
    """add_tasks stores all N (PostgreSQL and SQLite); add_task one by one stores each."""
    result = runtime_adds.adds(dbs, SMOKE, peers=False)
    assert result["n"] == SMOKE.adds_n
    postgresql = result["schedctl_add_tasks_postgresql"]
    assert postgresql["all_rows_stored"]
    assert len(postgresql["seconds_samples"]) == SMOKE.adds_repeats
    assert result["schedctl_add_tasks_sqlite"]["rows"] == SMOKE.adds_n
    for backend in ("postgresql", "sqlite"):
        one_by_one = result[f"schedctl_add_task_one_by_one_{backend}"]
        assert one_by_one["rows"] == SMOKE.adds_one_by_one
        assert one_by_one["latency"]["count"] == SMOKE.adds_one_by_one
    assert "peers" not in result  # CI never builds the peers' environments


def test_http_creates_are_all_answered_201_and_stored(dbs: Databases) -> None:
    """Every POST of the open-loop client is answered 201 and its task is in the database."""
    if exporter_bench.importable() is not None:
        pytest.skip(str(exporter_bench.importable()))
    result = runtime_adds.http_creates(dbs, SMOKE)
    assert "error" not in result, result
    requests = round(SMOKE.http_rate * SMOKE.http_seconds)
    assert result["requests"] == requests
    assert result["status_counts"] == {"201": requests}
    assert result["errors"] == {}
    assert result["created_rows"] == requests
    assert result["all_created"]
    assert result["latency_from_intended_send"]["count"] == requests
    assert result["exporter_errors_logged"] == []
    shares = result["machine_cpu_percent"]  # the machine's CPU states, steal among them
    assert {"user", "system", "idle", "steal"} <= set(shares)
    assert 99 <= sum(shares.values()) <= 101


def test_scheduler_reaches_its_first_claim_on_start_and_restart(dbs: Databases) -> None:
    """validate accepts the file; the scheduler syncs it (all created, then all unchanged)
    and claims the probe task after registering, both times."""
    result = runtime_adds.startup(dbs, SMOKE, backends=("sqlite",))
    assert result["validate"]["all_ok"]
    tasks = SMOKE.startup_tasks + 1  # and the built-in cleanup task
    for phase, word in (("first_start", "created"), ("restart", "unchanged")):
        measured = result["sqlite"][phase]
        assert "errors" not in measured, measured
        [sample] = measured["samples"]
        assert f"{tasks} {word}" in sample["sync_log"]
        assert 0 < sample["registered_s"] <= sample["first_claim_s"]
        assert 0 < sample["cpu_at_claim_s"] < 60  # the process's CPU seconds, from /proc
        assert sample["exit"] == 0
    assert len(result["targets"]) == 3  # validate, then first start and restart on SQLite
