"""The pending retries of one task: every failed tick with attempts left keeps its retry.

A schedule row holds its earliest pending retry in ``retry_at`` / ``retry_scheduled_for`` /
``retry_attempt`` (the claim's due time reads ``retry_at``), and any later ones, when
several ticks failed before their retries ran, in ``retries_queued`` as JSON. Pure: no SQL;
the store reads and writes the columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

__all__ = ["PendingRetry", "Retries", "decode", "encode", "merge", "take_due"]


@dataclass(frozen=True, order=True, slots=True)
class PendingRetry:
    """Attempt ``attempt`` of the tick ``scheduled_for``, due at ``at``."""

    at: datetime
    scheduled_for: datetime
    attempt: int


@dataclass(frozen=True, slots=True)
class Retries:
    """A task's pending retries as stored: the earliest (``first``) and the rest in order."""

    first: PendingRetry | None
    queued: tuple[PendingRetry, ...] = ()

    @classmethod
    def of(cls, retries: Iterable[PendingRetry]) -> Retries:
        ordered = sorted(retries)
        return cls(ordered[0], tuple(ordered[1:])) if ordered else cls(None)

    def all(self) -> list[PendingRetry]:
        return ([self.first] if self.first is not None else []) + list(self.queued)


def encode(queued: Iterable[PendingRetry]) -> str | None:
    """``retries_queued`` for these retries (None when there are none)."""
    items = [[r.at.isoformat(), r.scheduled_for.isoformat(), r.attempt] for r in queued]
    return json.dumps(items) if items else None


def decode(stored: str | None) -> tuple[PendingRetry, ...]:
    """The retries of a stored ``retries_queued`` value, in due order."""
    if not stored:
        return ()
    return tuple(
        sorted(
            PendingRetry(datetime.fromisoformat(at), datetime.fromisoformat(tick), int(attempt))
            for at, tick, attempt in json.loads(stored)
        )
    )


def merge(current: Retries, new: Iterable[PendingRetry]) -> Retries:
    """``current`` with ``new`` retries added (a tick's attempt is pending at most once)."""
    by_key = {(r.scheduled_for, r.attempt): r for r in (*current.all(), *new)}
    return Retries.of(by_key.values())


def take_due(current: Retries, horizon: datetime) -> tuple[list[PendingRetry], Retries]:
    """The retries due by ``horizon`` (in due order), and what stays pending."""
    pending = current.all()
    due = [r for r in pending if r.at <= horizon]
    return due, Retries.of(r for r in pending if r.at > horizon)
