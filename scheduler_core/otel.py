"""OpenTelemetry SDK setup for the CLI entry points (the library only uses the API).

Configured only when the standard variables ask for it (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
the per-signal ``..._TRACES_ENDPOINT`` / ``..._METRICS_ENDPOINT``); exports over OTLP/HTTP.
"""

from __future__ import annotations

import os

__all__ = ["configure_otel_from_env"]


def configure_otel_from_env(service_name: str = "schedctl") -> bool:
    """Install tracer and meter providers exporting OTLP/HTTP; False when not configured."""
    env = os.environ
    wanted = any(
        env.get(k)
        for k in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        )
    )
    if not wanted or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name)})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    interval = int(env.get("OTEL_METRIC_EXPORT_INTERVAL", "15000"))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=interval)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    return True


def shutdown_otel() -> None:
    """Flush and stop the SDK providers, if any were installed."""
    from opentelemetry import metrics, trace

    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
