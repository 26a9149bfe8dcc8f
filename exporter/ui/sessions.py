"""The status page's sessions: kept in this process's memory, never in the database.

A session id is 32 random bytes from :mod:`secrets`, sent only as an HttpOnly, SameSite=Strict
cookie; each session has its own CSRF token, compared in constant time. A visitor who has not
signed in gets an anonymous session when the sign-in form is shown (its CSRF token protects
the sign-in post); signing in replaces it with a new id, so an id seen before sign-in is
worth nothing after. Sessions end on sign-out, after ``idle`` seconds unused or ``lifetime``
seconds in all; a restart of the exporter ends them all.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = ["ANONYMOUS_IDLE", "Role", "Session", "SessionStore"]

Role = Literal["anonymous", "read", "admin"]

#: Seconds an anonymous session (a sign-in form shown) lives unused.
ANONYMOUS_IDLE: Final[float] = 15 * 60.0


@dataclass(kw_only=True)
class Session:
    """One visitor: who signed in with which token, and the CSRF token of their forms."""

    id: str
    role: Role
    #: The name given at sign-in (for the audit actor ``ui:<who>@<address>``).
    who: str
    csrf: str
    created: float
    seen: float
    #: Messages shown once, on the next page (what an action did).
    flashes: list[str] = field(default_factory=list)

    def csrf_matches(self, given: str | None) -> bool:
        """Whether ``given`` is this session's CSRF token (constant-time comparison)."""
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())

    def take_flashes(self) -> list[str]:
        shown, self.flashes = self.flashes, []
        return shown


class SessionStore:
    """Sessions by id, bounded in number; used from the event loop only (no locking)."""

    def __init__(
        self,
        *,
        idle: float = 8 * 3600.0,
        lifetime: float = 24 * 3600.0,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def new(self, role: Role, who: str = "") -> Session:
        """A new session with fresh random id and CSRF token."""
        now = self._clock()
        self._make_room(now)
        session = Session(
            id=secrets.token_urlsafe(32), role=role, who=who, csrf=secrets.token_urlsafe(32),
            created=now, seen=now,
        )  # fmt: skip
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id`` (None when unknown, ended or expired)."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[session_id]
            return None
        session.seen = now
        return session

    def end(self, session_id: str) -> None:
        """End a session (sign-out): its id is refused from now on."""
        self._sessions.pop(session_id, None)

    def _expired(self, session: Session, now: float) -> bool:
        idle = ANONYMOUS_IDLE if session.role == "anonymous" else self.idle
        return now - session.seen > idle or now - session.created > self.lifetime

    def _make_room(self, now: float) -> None:
        """Drop expired sessions, then the least recently used, to stay under the bound."""
        if len(self._sessions) < self.max_sessions:
            return
        for sid in [sid for sid, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[sid]
        while len(self._sessions) >= self.max_sessions:
            oldest = min(self._sessions.values(), key=lambda s: (s.role != "anonymous", s.seen))
            del self._sessions[oldest.id]
