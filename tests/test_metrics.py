"""Metrics (issue 29): a worker configured with `LOCKGATE_METRICS_ADDRESS` serves temporalio's runtime
metrics and lockgate's own on one Prometheus endpoint. Scraped here after a real governed run."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from typing import Any

from lockgate import worker
from lockgate.config import Settings
from lockgate.devstack import free_port
from tests.support.stack import finish, start


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        return str(response.read().decode())


async def test_a_governed_run_shows_on_the_prometheus_endpoint(settings: Settings, deps: Any) -> None:
    address = f"127.0.0.1:{free_port()}"
    client = await worker.connect(settings, deps.vault, runtime=worker.metrics_runtime(address))
    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    async with worker.build_worker(client, deps, task_queue=queue):
        handle = await start(client, queue, "refund-agent", {"order_id": "A-1001", "amount_cents": 150})
        assert await finish(handle) is None
        text = ""
        for _ in range(50):  # the exporter publishes on its own schedule
            text = await asyncio.to_thread(_scrape, address)
            if "lockgate_leases_revoked" in text:
                break
            await asyncio.sleep(0.2)
    lines = text.splitlines()
    decisions = [line for line in lines if line.startswith("lockgate_decisions")]
    assert any(
        'outcome="allow"' in line and 'gate="policy"' in line and 'phase="gate"' in line for line in decisions
    ), decisions
    assert any(line.startswith("lockgate_gate_latency") for line in lines)
    assert any(line.startswith("lockgate_leases_issued") and 'tool="refunds.issue"' in line for line in lines)
    assert any(line.startswith("lockgate_leases_revoked") and 'tool="refunds.issue"' in line for line in lines)
    # temporalio's own runtime metrics on the same endpoint.
    assert any(line.startswith("temporal_") for line in lines)


def test_a_malformed_setting_is_one_clear_line() -> None:
    import pytest

    from lockgate.config import load_settings
    from lockgate.errors import UserError

    with pytest.raises(UserError, match="invalid setting LOCKGATE_DRAIN_SECONDS"):
        load_settings({"LOCKGATE_DRAIN_SECONDS": "soon", "LOCKGATE_STATE_DIR": "/nonexistent"})
