"""Fixtures of the benchmark smoke tests: databases on the suite's throwaway PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.common import Databases


@pytest.fixture(scope="module")
def dbs(pg_server: Any) -> Iterator[Databases]:
    """Databases (PostgreSQL and SQLite files) for one test module, dropped after it."""
    databases = Databases().attach(pg_server)
    try:
        yield databases
    finally:
        databases.stop()
