"""Structured logs and (optional) OpenTelemetry tracing.

Logs: `LOCKGATE_LOG_FORMAT=json` prints one JSON object per line with run_id / step / tool /
outcome fields where the message has them. Tracing: with the `otel` extra installed, spans named
`lockgate.gate` and `lockgate.lease` / `lockgate.tool` wrap those steps, and the worker adds
temporalio's TracingInterceptor (LOCKGATE_OTEL=1) so spans follow workflows and activities.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from lockgate.config import Settings, load_settings

__all__ = ["FIELDS", "setup_logging", "setup_tracing", "span", "tracing_interceptors"]

FIELDS = ("run_id", "step", "tool", "outcome", "gate", "decision_id", "lease_id", "policies")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            if hasattr(record, name):
                doc[name] = getattr(record, name)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(settings: Settings | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    try:
        json_logs = (settings or load_settings()).log_format == "json"
    except Exception:  # noqa: BLE001 - a malformed setting is reported by whoever loads them next
        json_logs = False
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # hvac/urllib3 debug output could include request bodies; keep them quiet.
    for noisy in ("urllib3", "hvac", "temporalio.activity", "temporalio.workflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


try:  # the `otel` extra
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - tracing is optional
    _trace = None  # type: ignore[assignment]


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A span when OpenTelemetry is installed; nothing otherwise. Never put a secret in attributes."""
    if _trace is None:
        yield
        return
    with _trace.get_tracer("lockgate").start_as_current_span(name) as current:
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(
                    f"lockgate.{key}", value if isinstance(value, (str, int, float, bool)) else str(value)
                )
        yield


_provider: Any = None


def setup_tracing(settings: Settings, exporter: Any = None, *, set_global: bool = True) -> Any:
    """With `LOCKGATE_OTEL=1` and the `otel` extra: a TracerProvider that exports every span (the
    workflows' and activities' from temporalio's TracingInterceptor, lockgate's own `lockgate.*`)
    over OTLP/HTTP to `OTEL_EXPORTER_OTLP_ENDPOINT` when set (the SDK reads the other standard
    `OTEL_EXPORTER_OTLP_*` variables: headers, timeout), else to the console; `exporter` overrides
    both (tests). It becomes the process's global provider unless one was set before (or
    `set_global` is False: tests). Returns it
    (flush it at exit: `shutdown()`), or None when tracing is off."""
    global _provider
    if not settings.otel:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        logging.getLogger("lockgate.worker").warning("LOCKGATE_OTEL=1 but opentelemetry-sdk is not installed")
        return None
    if exporter is None and settings.otel_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            logging.getLogger("lockgate.worker").warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed (pip install 'lockgate[otel]')"
            )
        else:
            exporter = OTLPSpanExporter(endpoint=f"{settings.otel_endpoint.rstrip('/')}/v1/traces")
    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service}))
    provider.add_span_processor(BatchSpanProcessor(exporter or ConsoleSpanExporter()))
    if _trace is not None and set_global:
        _trace.set_tracer_provider(provider)  # the first provider a process sets stays global
    _provider = provider
    return provider


def tracing_interceptors(settings: Settings | None = None) -> list[Any]:
    """temporalio's TracingInterceptor, when asked for (LOCKGATE_OTEL=1) and installed; with the
    provider `setup_tracing` made, else the global one."""
    if not (settings or load_settings()).otel:
        return []
    try:
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError:
        logging.getLogger("lockgate.worker").warning("LOCKGATE_OTEL=1 but opentelemetry is not installed")
        return []
    return [TracingInterceptor(_provider.get_tracer("lockgate") if _provider is not None else None)]
