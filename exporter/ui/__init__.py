"""The exporter's built-in status page: ``GET /`` and ``/ui/...``.

Server-rendered HTML with its own small stylesheet and script (no build step, nothing
fetched from elsewhere): every task with the badge ``/api/v1/status`` gives it, failing and
stuck tasks first, filtered and paged; a page per task and per run, the run's output shown
as text; the scheduler instances; the age of the data and whether the database answers. It
refreshes itself every few seconds, keeping the filter, the page and the scroll position.

Read-only, behind the JSON API's read token, unless the admin API is on: then an admin who
signs in with the admin token can run, pause, resume, cancel and stop everything, through
the admin API's client, audited as ``ui:<who>@<address>``.

Modules: :mod:`~exporter.ui.routes` (paths), :mod:`~exporter.ui.pages`,
:mod:`~exporter.ui.signin` and :mod:`~exporter.ui.actions` (handlers), the renderers
(``tasks_page``, ``task_page``, ``run_page``, ``layout``, ``messages``) over
:mod:`~exporter.ui.markup` (escaping by default), and ``access``, ``sessions``,
``forms`` and ``security`` for who may do what.
"""

from __future__ import annotations

from exporter.ui.context import UiContext
from exporter.ui.routes import add_ui_routes, is_ui_path

__all__ = ["UiContext", "add_ui_routes", "is_ui_path"]
