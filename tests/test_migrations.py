"""The migrations create exactly the SQL model, the schema check names both revisions, and
the histogram-columns migration carries stored counts both ways."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import scheduler_core
from scheduler_core.db import (
    check_schema,
    create_db_engine,
    current_revision,
    head_revision,
    upgrade_schema,
)
from scheduler_core.errors import SchemaVersionError
from scheduler_core.models import (
    DURATION_HISTOGRAM,
    START_DELAY_HISTOGRAM,
    TERMINAL_STATUSES,
    metadata,
    schedules,
)

MIGRATIONS = Path(scheduler_core.__file__).parent / "migrations"


def test_migrated_schema_matches_models(db_engine: sa.Engine) -> None:
    """After `db upgrade` the database has exactly the tables, columns and indexes in models.py."""
    with db_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    check_schema(db_engine)


def test_unmigrated_database_is_refused_naming_revisions(tmp_path) -> None:
    """A database never migrated is refused with the found and the needed revision."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SchemaVersionError) as info:
        check_schema(engine)
    assert "none" in str(info.value) and head_revision() in str(info.value)
    engine.dispose()


def test_newer_schema_is_refused(tmp_path) -> None:
    """A database stamped with a revision this schedctl does not know is refused."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'newer.db'}")
    upgrade_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaVersionError) as info:
        check_schema(engine)
    assert "9999" in str(info.value) and "upgrade schedctl" in str(info.value)
    engine.dispose()


def test_schema_head_is_the_newest_migration() -> None:
    """The revision schedctl checks for (a constant, see ``SCHEMA_HEAD``) is Alembic's head
    of ``migrations/versions``: a new migration must move it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def test_schema_check_reads_what_alembic_stamped(blank_engine: sa.Engine) -> None:
    """``current_revision`` reads the version table as Alembic does: none before the first
    migration, each revision after upgrading to it, and the check passes only at the head."""
    assert current_revision(blank_engine) is None
    for revision in ("0001", "0002", head_revision()):
        upgrade_schema(blank_engine, revision)
        with blank_engine.connect() as conn:
            stamped = MigrationContext.configure(conn).get_current_revision()
        assert current_revision(blank_engine) == stamped == revision
    check_schema(blank_engine)


def test_running_processes_never_import_alembic(tmp_path) -> None:
    """The scheduler and the exporter check the schema without importing Alembic (and Mako
    and Pygments with it): ~11 MB of resident memory in every process."""
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    engine = create_db_engine(url)
    upgrade_schema(engine)
    engine.dispose()
    code = (
        "import sys\n"
        "import exporter.app, exporter.cli, scheduler_core.cli, scheduler_core.runtime\n"
        "from scheduler_core.db import check_schema, create_db_engine\n"
        f"check_schema(create_db_engine({url!r}))\n"
        "print(sorted(m for m in ('alembic', 'mako', 'pygments') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def blank_engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[sa.Engine]:
    """An empty database, never migrated, on each backend."""
    if request.param == "sqlite":
        engine = create_db_engine(f"sqlite:///{tmp_path / 'blank.db'}")
        yield engine
        engine.dispose()
        return
    server = request.getfixturevalue("pg_server")
    name = server.create_database()
    engine = create_db_engine(server.url(name))
    try:
        yield engine
    finally:
        engine.dispose()
        server.drop_database(name)


def _downgrade(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def _schedule_0002(name: str, duration: str, delay: str) -> dict[str, Any]:
    """A scheduler_schedules row as revision 0002 stores it."""
    now = datetime(2026, 3, 1, tzinfo=UTC)
    return {
        "name": name, "definition": "{}", "definition_hash": "x", "schedule_type": "every",
        "schedule_expr": "every 1m", "timezone": "UTC", "action_kind": "command",
        "enabled": True, "paused": False, "fire_count": 0, "consecutive_failures": 0,
        **{f"runs_{s}_total": 0 for s in TERMINAL_STATUSES}, "missed_runs_total": 0,
        "duration_histogram": duration, "start_delay_histogram": delay,
        "created_at": now, "updated_at": now,
    }  # fmt: skip


def test_histogram_columns_migration_keeps_counts_both_ways(blank_engine: sa.Engine) -> None:
    """0003 moves stored JSON histogram counts into bucket columns (bad JSON reads as zeros)
    and its downgrade writes the same counts back as JSON."""
    durations = [i % 4 for i in range(21)]
    delays = [7, *([0] * 14), 2]
    upgrade_schema(blank_engine, "0002")
    old = sa.Table("scheduler_schedules", sa.MetaData(), autoload_with=blank_engine)
    counted = _schedule_0002(
        "counted",
        json.dumps({"buckets": durations, "sum": 123.456, "count": sum(durations)}),
        json.dumps({"buckets": delays, "sum": 0.5, "count": 9}),
    )
    with blank_engine.begin() as conn:
        conn.execute(
            old.insert(),
            [
                counted,
                _schedule_0002("empty", "{}", "{}"),
                _schedule_0002("malformed", "{not json", '{"buckets": [1, 2], "sum": 3}'),
                _schedule_0002("foreign", "[1, 2]", '"text"'),
            ],
        )
    upgrade_schema(blank_engine)
    with blank_engine.connect() as conn:
        rows = {r.name: r._mapping for r in conn.execute(sa.select(schedules))}
    assert DURATION_HISTOGRAM.read(rows["counted"]).buckets == tuple(durations)
    assert DURATION_HISTOGRAM.read(rows["counted"]).sum == pytest.approx(123.456)
    assert START_DELAY_HISTOGRAM.read(rows["counted"]).buckets == tuple(delays)
    assert START_DELAY_HISTOGRAM.read(rows["counted"]).sum == pytest.approx(0.5)
    for name in ("empty", "malformed", "foreign"):
        for columns in (DURATION_HISTOGRAM, START_DELAY_HISTOGRAM):
            hist = columns.read(rows[name])
            assert hist.count == 0 and hist.sum == 0.0, name

    _downgrade(blank_engine, "0002")
    with blank_engine.connect() as conn:
        back = {r.name: r for r in conn.execute(sa.select(old))}
    duration = json.loads(back["counted"].duration_histogram)
    assert duration["buckets"] == durations and duration["count"] == sum(durations)
    assert duration["sum"] == pytest.approx(123.456)
    delay = json.loads(back["counted"].start_delay_histogram)
    assert delay == {"buckets": delays, "sum": pytest.approx(0.5), "count": 9}
    assert json.loads(back["empty"].duration_histogram) == {
        "buckets": [0] * 21, "sum": 0, "count": 0
    }  # fmt: skip
    after = sa.Table("scheduler_schedules", sa.MetaData(), autoload_with=blank_engine)
    assert sorted(_shape(after)) == sorted(_shape(old))


def _shape(table: sa.Table) -> list[tuple[str, bool, bool]]:
    """Each column's name, nullability and whether it has a server default."""
    return [(c.name, bool(c.nullable), c.server_default is not None) for c in table.columns]
