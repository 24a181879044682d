"""Structured logs and tracing spans for gate, lease and tool."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client

from lockgate.observability import JsonFormatter, tracing_interceptors
from tests.support.stack import finish, start


def test_json_logs_carry_run_fields() -> None:
    record = logging.LogRecord("lockgate.gate", logging.INFO, __file__, 1, "decision %s", ("x",), None)
    record.run_id, record.step, record.outcome = "run-1", 2, "allow"
    doc = json.loads(JsonFormatter().format(record))
    assert (doc["msg"], doc["run_id"], doc["step"], doc["outcome"], doc["level"]) == (
        "decision x",
        "run-1",
        2,
        "allow",
        "INFO",
    )


def test_tracing_interceptor_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCKGATE_OTEL", raising=False)
    assert tracing_interceptors() == []
    monkeypatch.setenv("LOCKGATE_OTEL", "1")
    (interceptor,) = tracing_interceptors()
    assert type(interceptor).__name__ == "TracingInterceptor"


async def test_gate_lease_and_tool_spans(client: Client, worker_running: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 130})
    assert await finish(handle) is None
    spans = [s for s in exporter.get_finished_spans() if s.attributes.get("lockgate.run_id") == handle.id]
    names = [s.name for s in spans]
    assert (
        names.count("lockgate.gate") == 2 and names.count("lockgate.lease") == 2 and names.count("lockgate.tool") == 2
    )
    tool_spans: Any = [s for s in spans if s.name == "lockgate.tool"]
    assert all(str(s.attributes["lockgate.lease_id"]).startswith("database/creds/") for s in tool_spans)
