"""The scheduler's liveness endpoint: 200 ``{"status":"healthy"}``, 503 while draining."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["HealthServer", "parse_listen"]

log = logging.getLogger(__name__)


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8090`` for IPv6) → (host, port); ValueError naming the value."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {value!r} must look like 127.0.0.1:8090")
    return host.strip("[]") or "127.0.0.1", int(port_text)


def serve_in_background(server: ThreadingHTTPServer, *, name: str) -> threading.Thread:
    """Start ``server.serve_forever`` in a daemon thread named ``name``."""
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return thread


class HealthServer:
    """A tiny HTTP server in a daemon thread; a taken port is logged, not fatal."""

    def __init__(self, listen: str, *, is_draining: Callable[[], bool]) -> None:
        self.host, self.port = parse_listen(listen)
        self._is_draining = is_draining
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str | None:
        if self._server is None:
            return None
        return f"http://{self.host}:{self._server.server_address[1]}/health"

    def start(self) -> bool:
        is_draining = self._is_draining

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/health":
                    self._send(
                        404, {"error": {"code": "not_found", "message": f"no route {self.path}"}}
                    )
                elif is_draining():
                    self._send(503, {"status": "shutting_down"})
                else:
                    self._send(200, {"status": "healthy"})

            def _send(self, code: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            log.error(
                "health endpoint not started: cannot listen on %s:%d (%s); scheduling continues",
                self.host,
                self.port,
                exc.strerror or exc,
            )
            return False
        self._server.daemon_threads = True
        self._thread = serve_in_background(self._server, name="schedctl-health")
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
