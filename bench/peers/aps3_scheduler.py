"""The APScheduler 3.11 set-up every benchmark uses (runs in bench/.venv-aps3)."""

from __future__ import annotations

import os
from datetime import UTC

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler


def background_scheduler(workers: int) -> BackgroundScheduler:
    """``SQLAlchemyJobStore`` on ``BENCH_DB_URL`` and a pool of ``workers`` threads."""
    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=os.environ["BENCH_DB_URL"])},
        executors={"default": ThreadPoolExecutor(workers)},
        # Never drop a late run: the benchmark measures lateness, it does not hide it.
        job_defaults={"misfire_grace_time": None, "coalesce": False},
        timezone=UTC,
    )
