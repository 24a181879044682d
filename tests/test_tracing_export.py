"""Traces exported when configured (issue 29.4): with LOCKGATE_OTEL=1 and OTEL_EXPORTER_OTLP_ENDPOINT,
a governed run's workflow, activity and lockgate spans reach an OTLP/HTTP collector (a receiver of
this test's own, reading what the real exporter posts)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from temporalio.client import Client

from lockgate import worker
from lockgate.config import Settings
from lockgate.observability import setup_tracing, tracing_interceptors
from tests.support.stack import finish, start


@contextlib.contextmanager
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    posts: list[tuple[str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            posts.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", posts
    finally:
        server.shutdown()
        server.server_close()


def test_tracing_is_off_unless_asked(settings: Settings) -> None:
    assert setup_tracing(settings.model_copy(update={"otel": False})) is None
    assert tracing_interceptors(settings.model_copy(update={"otel": False})) == []


async def test_a_governed_run_is_traced_to_the_otlp_endpoint(settings: Settings, deps: Any) -> None:
    with collector() as (endpoint, posts):
        traced = settings.model_copy(update={"otel": True, "otel_endpoint": endpoint, "otel_service": "lockgate-test"})
        provider = setup_tracing(traced, set_global=False)  # other tests own the global one
        assert provider is not None
        (interceptor,) = tracing_interceptors(traced)
        base = await worker.connect(traced, deps.vault)
        # The interceptor on the client traces starts; a worker on that client traces its side too.
        config = base.config()
        config["interceptors"] = [interceptor]
        client = Client(**config)
        queue = f"traced-{uuid.uuid4().hex[:8]}"
        async with worker.build_worker(client, deps, task_queue=queue):
            handle = await start(client, queue, "refund-agent", {"order_id": "A-1001", "amount_cents": 120})
            assert await finish(handle) is None
        await asyncio.to_thread(provider.force_flush)
        await asyncio.to_thread(provider.shutdown)
    paths = {p for p, _ in posts}
    assert paths == {"/v1/traces"}, paths
    body = b"".join(b for _, b in posts)
    for name in (b"StartWorkflow:lockgate.agent", b"RunWorkflow:lockgate.agent", b"RunActivity:", b"lockgate-test"):
        assert name in body, name
