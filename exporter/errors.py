"""The one JSON error envelope of the exporter's HTTP API."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

__all__ = ["ApiError", "error_response"]

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by a handler to answer with the error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        #: More fields of the error object (the field errors of a bad task, say).
        self.extra = extra or {}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    """``{"error": {"code": ..., "message": ..., **extra}}`` with ``status``."""
    error = {"code": code or _CODES.get(status, "error"), "message": message, **(extra or {})}
    body = {"error": error}
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )
