"""A module whose functions declare their own schedules with ``@task`` (for the tests)."""

from __future__ import annotations

from scheduler_core import task
from tests.core.recorded import greet


@task(every="1h", retries=1)
def hourly_report() -> None:
    greet("hourly-report")


@task(name="nightly-cleanup", cron="0 3 * * *", timeout="5m")
def cleanup() -> None:
    greet("nightly-cleanup")
