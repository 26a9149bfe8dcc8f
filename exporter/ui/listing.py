"""Which tasks the tasks page shows: the order (failing and stuck first), the filter (badge,
name) and the page. Pure: it reads a snapshot, never the database, and knows no HTML.

The order of a snapshot is computed once and kept until the next snapshot, so a page of
10,000 tasks costs one filter pass and a slice per request.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from scheduler_core.store.snapshot import BADGES, Badge, Snapshot, TaskSnapshot

__all__ = [
    "BADGE_ORDER",
    "PAGE_SIZE",
    "Listing",
    "ListingQuery",
    "TaskOrder",
    "parse_listing_query",
]

#: Tasks shown per page.
PAGE_SIZE: Final[int] = 100
#: Longest name filter kept (characters).
MAX_NAME_FILTER: Final[int] = 200
#: How the table sorts badges: what needs a person first, then what is fine.
BADGE_ORDER: Final[tuple[Badge, ...]] = (
    "stuck",
    "failing",
    "late",
    "running",
    "ok",
    "paused",
    "disabled",
)
_RANK: Final[Mapping[str, int]] = {badge: rank for rank, badge in enumerate(BADGE_ORDER)}
assert set(BADGE_ORDER) == set(BADGES), "every badge needs a place in the table's order"


@dataclass(frozen=True, kw_only=True)
class ListingQuery:
    """What the visitor asked for: a badge (None: all), a name filter and a page (from 1)."""

    badge: Badge | None = None
    name: str = ""
    page: int = 1


def parse_listing_query(params: Mapping[str, str]) -> ListingQuery:
    """The query from ``?badge=&q=&page=``; unknown or malformed values fall back to the
    defaults (a page never answers 400 to a hand-edited URL)."""
    given = params.get("badge") or ""
    badge = next((b for b in BADGES if b == given), None)
    name = (params.get("q") or "").strip()[:MAX_NAME_FILTER]
    try:
        page = max(1, int(params.get("page") or 1))
    except ValueError:
        page = 1
    return ListingQuery(badge=badge, name=name, page=page)


@dataclass(frozen=True, kw_only=True)
class Listing:
    """One page of the filtered, ordered tasks."""

    tasks: Sequence[TaskSnapshot]
    #: Tasks matching the filter, on every page.
    matching: int
    page: int
    pages: int
    #: Index (from 0) of the first task shown among the matching ones.
    first: int


class TaskOrder:
    """The table's order of each snapshot's tasks, computed once per snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._ordered: tuple[TaskSnapshot, ...] = ()

    def ordered(self, snapshot: Snapshot) -> tuple[TaskSnapshot, ...]:
        """``snapshot``'s tasks by badge (:data:`BADGE_ORDER`), then open alarms, then name."""
        with self._lock:
            if self._snapshot is snapshot:
                return self._ordered
        ordered = tuple(
            sorted(snapshot.tasks, key=lambda t: (_RANK[t.badge], not t.open_alarms, t.name))
        )
        with self._lock:
            self._snapshot, self._ordered = snapshot, ordered
        return ordered

    def page(self, snapshot: Snapshot, query: ListingQuery) -> Listing:
        """The tasks of ``query``'s page (the last page when it asks for one beyond)."""
        tasks: Sequence[TaskSnapshot] = self.ordered(snapshot)
        if query.badge is not None:
            tasks = [t for t in tasks if t.badge == query.badge]
        if query.name:
            wanted = query.name.casefold()
            tasks = [t for t in tasks if wanted in t.name.casefold()]
        pages = max(1, -(-len(tasks) // PAGE_SIZE))
        page = min(query.page, pages)
        first = (page - 1) * PAGE_SIZE
        return Listing(
            tasks=tasks[first : first + PAGE_SIZE],
            matching=len(tasks),
            page=page,
            pages=pages,
            first=first,
        )
