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
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

__all__ = ["FIELDS", "setup_logging", "span", "tracing_interceptors"]

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


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("LOCKGATE_LOG_FORMAT", "text") == "json":
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


def tracing_interceptors() -> list[Any]:
    """temporalio's TracingInterceptor, when asked for (LOCKGATE_OTEL=1) and installed."""
    if os.environ.get("LOCKGATE_OTEL") != "1":
        return []
    try:
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError:
        logging.getLogger("lockgate.worker").warning("LOCKGATE_OTEL=1 but opentelemetry is not installed")
        return []
    return [TracingInterceptor()]
