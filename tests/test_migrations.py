"""The migrations create exactly the SQL model, and the schema check names both revisions."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from scheduler_core.db import check_schema, create_db_engine, head_revision, upgrade_schema
from scheduler_core.errors import SchemaVersionError
from scheduler_core.models import metadata


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
