"""Where the status page lives: ``/`` (the tasks page) and everything under ``/ui/``.

These paths authenticate themselves (:mod:`exporter.ui.access`: sessions from a sign-in
form, since a browser cannot send the API's bearer header), so the exporter's bearer-token
middleware lets them through (:func:`is_ui_path`). The action routes exist only while the
admin API is on.
"""

from __future__ import annotations

from aiohttp import web

from exporter.ui.actions import confirm_page, do_action
from exporter.ui.context import UI_CONTEXT, UiContext
from exporter.ui.pages import run_page, task_page, tasks_page
from exporter.ui.security import secured
from exporter.ui.signin import sign_in, sign_in_form, sign_out
from exporter.ui.static import STATIC_PREFIX, serve_asset

__all__ = ["UI_PREFIX", "add_ui_routes", "is_ui_path"]

UI_PREFIX = "/ui/"


def is_ui_path(path: str) -> bool:
    """Whether ``path`` belongs to the status page (which checks access itself)."""
    return path == "/" or path.startswith(UI_PREFIX)


def add_ui_routes(app: web.Application, context: UiContext) -> None:
    """Serve the status page on ``app``; its actions too when ``context`` has a client."""
    app[UI_CONTEXT] = context
    router = app.router
    router.add_get("/", secured(tasks_page))
    # Task names may hold any character, slashes included: the whole rest of the path.
    router.add_get("/ui/tasks/{name:.+}", secured(task_page))
    router.add_get(r"/ui/runs/{run_id:\d+}", secured(run_page))
    router.add_get(STATIC_PREFIX + "{name}", secured(serve_asset))
    router.add_get("/ui/sign-in", secured(sign_in_form))
    router.add_post("/ui/sign-in", secured(sign_in))
    router.add_post("/ui/sign-out", secured(sign_out))
    if context.actions_enabled:
        router.add_get("/ui/confirm/{action}", secured(confirm_page))
        router.add_post("/ui/actions/{action}", secured(do_action))
