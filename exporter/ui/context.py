"""What the status page's handlers need from the exporter, handed over once by
:func:`exporter.ui.add_ui_routes` (the exporter's app builds it; nothing here imports the app).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import sqlalchemy as sa
from aiohttp import web

from exporter.refresh import Refresher
from exporter.settings import ExporterSettings
from exporter.ui.listing import TaskOrder
from exporter.ui.sessions import SessionStore
from scheduler_core.client import Client

__all__ = ["UI_CONTEXT", "UiContext", "ui_context"]


@dataclass(frozen=True, kw_only=True)
class UiContext:
    """The exporter's pieces the page reads from, and the page's own state."""

    settings: ExporterSettings
    refresher: Refresher
    #: The exporter's read-only engine (task definitions, run history, run output).
    engine: sa.Engine
    #: Where blocking work runs (SQL reads, rendering 10,000-task pages), never on the loop.
    pool: ThreadPoolExecutor
    #: The admin API's client; None while the admin API is off (the page is read-only then).
    client: Client | None = None
    #: A secret masked wherever it would be shown (the database password).
    secret: str | None = None
    sessions: SessionStore = field(default_factory=SessionStore)
    order: TaskOrder = field(default_factory=TaskOrder)

    @property
    def actions_enabled(self) -> bool:
        return self.client is not None

    def scrub(self, text: str | None) -> str | None:
        """``text`` with the secret masked (None stays None)."""
        if text is None or not self.secret:
            return text
        return text.replace(self.secret, "***")


UI_CONTEXT = web.AppKey("status_page", UiContext)


def ui_context(request: web.Request) -> UiContext:
    """The context of ``request``'s app."""
    return request.app[UI_CONTEXT]
