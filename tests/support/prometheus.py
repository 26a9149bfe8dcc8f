"""A real, throwaway Prometheus and Alertmanager for tests: loopback, free ports, temp data
dirs, bounded waits.

:class:`ManagedProcess` is the generic part (start a binary, wait until an HTTP URL answers,
stop it, keep its log for failure messages); :class:`PrometheusServer` and
:class:`AlertmanagerServer` build on it. :class:`WebhookReceiver` is the other end of an
Alertmanager webhook: it records every notification it is sent.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import yaml

__all__ = [
    "AlertmanagerServer",
    "ManagedProcess",
    "PrometheusServer",
    "WebhookReceiver",
    "free_port",
    "wait_until",
]

PROMETHEUS_BIN = "/usr/bin/prometheus"
ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def http_get(url: str, *, timeout: float = 5.0, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return bytes(response.read())


class ManagedProcess:
    """One child process with a temp directory, a log file and an HTTP readiness URL."""

    def __init__(self, name: str, *, ready_url: str, start_timeout: float = 30.0) -> None:
        self.name = name
        self.ready_url = ready_url
        self.start_timeout = start_timeout
        self.tmp = Path(tempfile.mkdtemp(prefix=f"schedctl-{name}-"))
        self.log_path = self.tmp / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def launch(self, argv: Sequence[str]) -> None:
        """Start ``argv`` and wait until ``ready_url`` answers 200 (or the process dies)."""
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp
            )

        deadline = time.monotonic() + self.start_timeout
        problem = f"{self.name} did not become ready within {self.start_timeout:g}s"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                problem = f"{self.name} exited with status {self._process.returncode}"
                break
            try:
                http_get(self.ready_url, timeout=2.0)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"{problem}\n--- {self.name} log ---\n{tail}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Terminate (then kill) the process and remove the temp directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)


class _LoopbackServer:
    """A Prometheus-family binary on a free loopback port, with a config file in its temp dir."""

    def __init__(self, name: str, binary: str, config: Mapping[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(name, ready_url=f"{self.url}/-/ready")
        self.binary = binary
        self.config_path = self.process.tmp / f"{name}.yml"
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))

    def argv(self) -> list[str]:
        """The binary's own flags beyond its config file and listen address."""
        raise NotImplementedError

    def start(self) -> Self:
        listen = f"--web.listen-address=127.0.0.1:{self.port}"
        self.process.launch(
            [self.binary, f"--config.file={self.config_path}", listen, *self.argv()]
        )
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PrometheusServer(_LoopbackServer):
    """Prometheus scraping ``scrape_configs`` every second, with optional rule files.

    ``scrape_configs`` are Prometheus' own scrape_config mappings (``job_name``,
    ``static_configs``, ...); ``scrape_interval`` defaults to 1s for each.
    """

    def __init__(
        self,
        scrape_configs: Sequence[dict[str, Any]],
        *,
        rule_files: Sequence[Path] = (),
        alertmanagers: Sequence[str] = (),
        evaluation_interval: str = "1s",
        binary: str = PROMETHEUS_BIN,
    ) -> None:
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": evaluation_interval},
            "scrape_configs": [{"scrape_interval": "1s", **sc} for sc in scrape_configs],
        }
        if alertmanagers:
            config["alerting"] = {
                "alertmanagers": [
                    {"static_configs": [{"targets": [_host_port(url) for url in alertmanagers]}]}
                ]
            }
        super().__init__("prometheus", binary, config)
        if rule_files:
            rules_dir = self.process.tmp / "rules"
            rules_dir.mkdir()
            copied = []
            for i, path in enumerate(rule_files):
                target = rules_dir / f"{i:02d}-{Path(path).name}"
                shutil.copyfile(path, target)
                copied.append(str(target))
            config["rule_files"] = copied
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def argv(self) -> list[str]:
        return [
            f"--storage.tsdb.path={self.process.tmp / 'data'}", "--web.enable-lifecycle",
            "--log.level=warn",
        ]  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data`` (raise on an error status)."""
        query = urllib.parse.urlencode(params)
        try:
            raw = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=10.0)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(
                f"Prometheus {path} failed: {exc.read().decode(errors='replace')}"
            ) from None
        document = json.loads(raw)
        if document.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} failed: {document}")
        return document["data"]

    def query(self, expr: str, *, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result vector (``[{"metric": {...}, "value": [ts, "v"]}, ...]``).

        ``at`` (Unix seconds) evaluates the query at that moment instead of now.
        """
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def query_values(self, expr: str, by: str) -> dict[str, float]:
        """Instant query as {value of label ``by``: float value}."""
        return {r["metric"].get(by, ""): float(r["value"][1]) for r in self.query(expr)}

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts of every alerting rule, pending or firing, as Prometheus sees them now."""
        return list(self.api("alerts")["alerts"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def wait_for_scrapes(self, count: int, *, timeout: float = 30.0) -> None:
        """Wait until at least ``count`` targets report a successful last scrape."""

        def healthy() -> bool:
            targets = [t for t in self.targets() if t["health"] == "up"]
            return len(targets) >= count

        wait_until(healthy, timeout=timeout, what=f"{count} healthy scrape target(s)")

    def wait_for(self, expr: str, *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns a non-empty result."""
        result: list[dict[str, Any]] = wait_until(
            lambda: self.query(expr), timeout=timeout, what=f"query {expr!r}"
        )
        return result


class AlertmanagerServer(_LoopbackServer):
    """Alertmanager on loopback with ``config`` (its YAML config as a mapping), clustering off."""

    def __init__(self, config: Mapping[str, Any], *, binary: str = ALERTMANAGER_BIN) -> None:
        super().__init__("alertmanager", binary, config)

    def argv(self) -> list[str]:
        return [
            f"--storage.path={self.process.tmp / 'data'}",
            # An empty address turns the gossip cluster off: no port beyond the web one.
            "--cluster.listen-address=",
            "--log.level=debug",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds now (``GET /api/v2/alerts``)."""
        return list(json.loads(http_get(f"{self.url}/api/v2/alerts", timeout=10.0)))


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every JSON notification POSTed to it.

    Point an Alertmanager ``webhook_configs`` entry at :attr:`url`; :meth:`notifications`
    returns the payloads received so far, in arrival order, each with ``received_at`` (Unix
    seconds) added.
    """

    def __init__(self, path: str = "/alerts") -> None:
        self._lock = threading.Lock()
        self._payloads: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    payload = json.loads(body)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                payload["received_at"] = time.time()
                with receiver._lock:
                    receiver._payloads.append(payload)
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the payloads are the record; request lines would only be noise

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{path}"
        self._thread: threading.Thread | None = None

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def notifications(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(payload) for payload in self._payloads]


def _host_port(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    return parsed.netloc or url
