"""OpenTelemetry: a scheduler run with OTEL_* set sends its spans and metrics over OTLP/HTTP
to a receiver on loopback, and the run row carries the span's trace id."""

from __future__ import annotations

import gzip
import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from scheduler_core.db import create_db_engine
from scheduler_core.models import task_runs
from scheduler_core.store import Store
from tests.core.test_cli import wait_for


class Receiver:
    """A minimal OTLP/HTTP receiver: decodes protobuf trace and metric exports."""

    def __init__(self) -> None:
        self.spans: list[object] = []
        self.metric_names: set[str] = set()
        self.metric_points: dict[str, list[object]] = {}
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    for rs in request.resource_spans:
                        for ss in rs.scope_spans:
                            receiver.spans.extend(ss.spans)
                elif self.path == "/v1/metrics":
                    request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    for rm in request.resource_metrics:
                        for sm in rm.scope_metrics:
                            for metric in sm.metrics:
                                receiver.metric_names.add(metric.name)
                                receiver.metric_points.setdefault(metric.name, []).append(metric)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def attributes(span: object) -> dict[str, object]:
    out = {}
    for kv in span.attributes:  # type: ignore[attr-defined]
        value = kv.value
        out[kv.key] = value.string_value or value.int_value
    return out


def start_traced_scheduler(config: Path, url: str, receiver: Receiver) -> subprocess.Popen[str]:
    """``schedctl scheduler`` on ``config`` with OTEL_* pointing at ``receiver``."""
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_SERVICE_NAME": "schedctl-test",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "scheduler_core.cli", "scheduler", "--config", str(config), "--database-url",
         url, "--health-listen", "off", "--poll-interval", "100ms", "--no-cleanup"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_otlp_receiver_gets_spans_and_metrics_of_runs(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    """Spans (one per run, trace id on the run row) and the run metrics arrive over OTLP/HTTP."""
    config = tmp_path / "tasks.yaml"
    config.write_text(
        "tasks:\n  - {name: traced, callable: 'os:getpid', every: 1s}\n  - {name: broken, command: ['false'], every: 1s}\n"
    )
    proc = start_traced_scheduler(config, sqlite_url, receiver)
    try:
        assert wait_for(
            lambda: len(receiver.spans) >= 4 and "schedctl.runs" in receiver.metric_names, 30
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    names = {s.name for s in receiver.spans}  # type: ignore[attr-defined]
    assert {"schedctl.run traced", "schedctl.run broken"} <= names
    broken = next(s for s in receiver.spans if s.name == "schedctl.run broken")  # type: ignore[attr-defined]
    assert broken.status.code == 2  # STATUS_CODE_ERROR
    assert attributes(broken)["schedctl.task"] == "broken"
    assert {"schedctl.runs", "schedctl.run.duration", "schedctl.task.next_run",
            "schedctl.task.consecutive_failures"} <= receiver.metric_names  # fmt: skip
    engine = create_db_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            trace_ids = {
                r.trace_id for r in conn.execute(sa.select(task_runs.c.trace_id)) if r.trace_id
            }
    finally:
        engine.dispose()
    received = {s.trace_id.hex() for s in receiver.spans}  # type: ignore[attr-defined]
    assert trace_ids, "no trace id stored on the run rows"
    assert trace_ids <= received, f"{len(trace_ids - received)} run(s) whose span never arrived"


def test_a_command_gets_its_run_and_span_context_in_its_environment(
    db_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    """A command sees TRACEPARENT (its run span: the run row's trace id, the span's id) and
    SCHEDCTL_RUN_ID, SCHEDCTL_TASK, SCHEDCTL_ATTEMPT and SCHEDCTL_SCHEDULED_FOR."""
    config = tmp_path / "tasks.yaml"
    config.write_text(
        "tasks:\n  - {name: env-echo, every: 1s, command: [sh, -c, 'echo $TRACEPARENT"
        " $SCHEDCTL_RUN_ID $SCHEDCTL_TASK $SCHEDCTL_ATTEMPT $SCHEDCTL_SCHEDULED_FOR']}\n"
    )
    proc = start_traced_scheduler(config, db_url, receiver)
    try:
        assert wait_for(lambda: len(receiver.spans) >= 2, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    engine = create_db_engine(db_url)
    try:
        store = Store(engine)
        with engine.connect() as conn:
            run_ids = list(conn.execute(sa.select(task_runs.c.id)).scalars())
        runs = [store.get_run(i) for i in run_ids]
    finally:
        engine.dispose()
    spans = {s.span_id.hex(): s for s in receiver.spans}  # type: ignore[attr-defined]
    checked = matched = 0
    for run in runs:
        if run["output"] is None:
            continue
        traceparent, run_id, task, attempt, scheduled_for = run["output"].split()
        version, trace_id, span_id, _flags = traceparent.split("-")
        assert version == "00" and trace_id == run["trace_id"]
        if span_id in spans:  # the run span itself (one ending as the scheduler stops may not
            span = spans[span_id]  # have been exported)
            assert span.name == "schedctl.run env-echo"  # type: ignore[attr-defined]
            assert attributes(span)["schedctl.run_id"] == run["id"]
            matched += 1
        assert (int(run_id), task, int(attempt)) == (run["id"], "env-echo", run["attempt"])
        assert datetime.fromisoformat(scheduled_for) == run["scheduled_for"]
        checked += 1
    assert checked and matched, f"{checked} run(s) kept output, {matched} span(s) matched"
