"""Example task callables used by ``schedctl demo`` and ``examples/tasks.yaml``."""

from __future__ import annotations

import asyncio
import random
import time

__all__ = ["always_fails", "flaky_sync", "refresh_cache", "send_report", "slow_export"]


def refresh_cache() -> None:
    """A quick sync job."""
    time.sleep(random.uniform(0.05, 0.3))


async def send_report() -> None:
    """An async job."""
    await asyncio.sleep(random.uniform(0.1, 0.5))


def flaky_sync(failure_rate: float = 0.5) -> None:
    """Fails about ``failure_rate`` of the time, like a sync against an unreliable API."""
    time.sleep(random.uniform(0.05, 0.2))
    if random.random() < failure_rate:
        raise ConnectionError("upstream API answered 503 Service Unavailable")


def slow_export(seconds: float = 20.0) -> None:
    """A long job, past its max_runtime: shows up as stuck while it runs."""
    time.sleep(seconds)


def always_fails() -> None:
    """A job that fails every time (to see the failure alarm and alert)."""
    raise RuntimeError("credentials for the report mailbox were rejected")
