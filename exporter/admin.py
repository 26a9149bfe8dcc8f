"""The admin API: create, change, remove and drive tasks over HTTP, off by default.

On with ``--enable-admin-api`` and an admin token distinct from the read token. Every write
needs ``Authorization: Bearer <admin token>`` (none: 401; the read token: 403), takes JSON
only (else 415) within the body limit, and becomes an audit event with its actor and the
request id (``X-Request-Id``, generated when not sent, always echoed). The writes go
through :class:`scheduler_core.Client`: the same validation, ownership and audit as the
Python client and the CLI. Blocking SQL runs in the API thread pool, never on the loop.

Routes (JSON in, JSON out; the table with status codes is in docs/admin-api.md):

- ``POST /api/v1/tasks``, ``GET/PATCH/DELETE /api/v1/tasks/{name}``
- ``POST /api/v1/tasks/{name}/run-now | pause | resume``
- ``GET /api/v1/runs/{id}``, ``POST /api/v1/runs/{id}/cancel``, ``POST /api/v1/emergency-stop``
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from aiohttp import web

from exporter.database import describe_db_error
from exporter.errors import ApiError
from scheduler_core.client import Client
from scheduler_core.config import TASK_KEYS
from scheduler_core.errors import ConfigError, RunLookupError, TaskConflictError, TaskLookupError
from scheduler_core.store.controls import audit_context

__all__ = ["ACTOR_HEADER", "REQUEST_ID_HEADER", "add_admin_routes", "is_write"]

T = TypeVar("T")

ACTOR_HEADER = "X-Schedctl-Actor"
REQUEST_ID_HEADER = "X-Request-Id"
_CLIENT = web.AppKey("admin_client", Client)
_POOL = web.AppKey("admin_pool", ThreadPoolExecutor)
_REQUEST_ID = web.RequestKey("request_id", str)
#: Keys a PATCH may change: everything of the task file but the name and the action kind.
_PATCHABLE = frozenset(TASK_KEYS) - {"name", "callable", "command"}
_SAFE = re.compile(r"[^A-Za-z0-9_.@:+-]")


def is_write(request: web.Request) -> bool:
    """Whether ``request`` changes something (needs the admin token)."""
    return request.method not in ("GET", "HEAD", "OPTIONS")


def add_admin_routes(app: web.Application, client: Client, pool: ThreadPoolExecutor) -> None:
    """Register the admin routes on ``app``, writing through ``client``."""
    app[_CLIENT] = client
    app[_POOL] = pool
    router = app.router
    router.add_post("/api/v1/tasks", _create_task)
    router.add_post("/api/v1/emergency-stop", _emergency_stop)
    router.add_post(r"/api/v1/runs/{run_id:\d+}/cancel", _cancel_run)
    # Actions before the plain name: a task name may contain slashes.
    router.add_post("/api/v1/tasks/{name:.+}/run-now", _run_now)
    router.add_post("/api/v1/tasks/{name:.+}/pause", _pause)
    router.add_post("/api/v1/tasks/{name:.+}/resume", _resume)
    router.add_get("/api/v1/tasks/{name:.+}", _get_task)
    router.add_patch("/api/v1/tasks/{name:.+}", _update_task)
    router.add_delete("/api/v1/tasks/{name:.+}", _delete_task)


def request_id(request: web.Request) -> str:
    """The caller's ``X-Request-Id`` (cleaned, at most 64 characters) or a new one."""
    given = _SAFE.sub("", request.headers.get(REQUEST_ID_HEADER, ""))[:64]
    return given or uuid.uuid4().hex


def _actor(request: web.Request) -> str:
    named = _SAFE.sub("", request.headers.get(ACTOR_HEADER, ""))[:100] or "admin"
    return f"api:{named}@{request.remote or 'unknown'}"


async def _call(request: web.Request, work: Callable[[Client], T]) -> T:
    """``work`` with the request's actor, in the pool, audited with the request id."""
    client = request.app[_CLIENT].as_actor(_actor(request))
    rid = request[_REQUEST_ID] = request_id(request)

    def run() -> T:
        with audit_context(request_id=rid):
            return work(client)

    try:
        return await asyncio.get_running_loop().run_in_executor(request.app[_POOL], run)
    except ConfigError as exc:
        issues = [
            {"task": i.task, "field": i.field, "value": _jsonable(i.value), "message": i.message}
            for i in exc.issues
        ]
        raise ApiError(400, str(exc), code="invalid_task", extra={"issues": issues}) from None
    except TaskConflictError as exc:
        raise ApiError(409, str(exc), code="conflict", extra={"owners": exc.owners}) from None
    except TaskLookupError as exc:
        raise ApiError(404, str(exc), code="unknown_task") from None
    except RunLookupError as exc:
        raise ApiError(404, str(exc), code="unknown_run") from None
    except ValueError as exc:
        raise ApiError(400, str(exc), code="bad_request") from None
    except sa.exc.OperationalError as exc:
        # The database went away (a restart, a failover): say so, password scrubbed. A
        # connection it dropped is replaced for the next request (scheduler_core.pool_ping).
        reason = describe_db_error(exc, client.engine.url)
        raise ApiError(503, f"the database is unavailable: {reason}") from None


async def _body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The JSON object sent (``{}`` for an empty optional body); 415 for another type."""
    if not request.can_read_body:
        if required:
            raise ApiError(400, "a JSON object body is required", code="bad_request")
        return {}
    if request.content_type != "application/json":
        shown = request.content_type or "none"
        raise ApiError(415, f"send JSON (Content-Type: application/json), not {shown}")
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}", code="bad_request") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def _text(body: Mapping[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{field}: a non-empty string is required, got {value!r}"[:300])
    return value


def _reply(request: web.Request, document: Any, *, status: int = 200) -> web.Response:
    headers = {REQUEST_ID_HEADER: request.get(_REQUEST_ID, "")}
    text = json.dumps(document, default=_jsonable)
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool | list | dict) or value is None:
        return value
    return repr(value)


async def _create_task(request: web.Request) -> web.Response:
    body = await _body(request)
    task = await _call(request, lambda c: c.create_task(body))
    return _reply(request, task, status=201)


async def _get_task(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return _reply(request, await _call(request, lambda c: c.get_task(name)))


async def _update_task(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await _body(request)
    unknown = sorted(set(body) - _PATCHABLE)
    if unknown:
        raise ApiError(400, f"{unknown[0]}: cannot be changed (changeable: {sorted(_PATCHABLE)})")

    def update(client: Client) -> dict[str, Any]:
        client.update_task(name, **body)
        return client.get_task(name)

    return _reply(request, await _call(request, update))


async def _delete_task(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await _call(request, lambda c: c.remove_task(name))
    return web.Response(status=204, headers={REQUEST_ID_HEADER: request[_REQUEST_ID]})


async def _run_now(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await _body(request, required=False)
    unknown = sorted(set(body) - {"args", "kwargs"})
    if unknown:
        raise ApiError(400, f"{unknown[0]}: unknown (a run-now takes args and kwargs)")
    await _call(request, lambda c: c.run_now(name, body.get("args"), body.get("kwargs")))
    return _reply(request, {"task": name, "run_now": "requested"}, status=202)


async def _pause(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    reason = _text(await _body(request), "reason")
    await _call(request, lambda c: c.pause(name, reason))
    return _reply(request, {"task": name, "paused": True, "reason": reason})


async def _resume(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await _body(request, required=False)
    await _call(request, lambda c: c.resume(name))
    return _reply(request, {"task": name, "paused": False})


async def _cancel_run(request: web.Request) -> web.Response:
    run_id = int(request.match_info["run_id"])
    reason = _text(await _body(request), "reason")
    status = await _call(request, lambda c: c.cancel(run_id, reason))
    return _reply(request, {"run_id": run_id, "status": status}, status=202)


async def _emergency_stop(request: web.Request) -> web.Response:
    reason = _text(await _body(request), "reason")
    paused, cancelled = await _call(request, lambda c: c.emergency_stop(reason))
    return _reply(request, {"paused": paused, "cancelled": cancelled})
