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


async def test_a_refused_caller_is_counted(settings: Settings, deps: Any) -> None:
    """A workflow that is not lockgate's calls a lockgate activity: refused, and counted as a caller
    refusal on the endpoint (what an operator alerts on)."""
    from datetime import UTC, datetime

    from temporalio.worker import Worker

    from lockgate import names
    from lockgate.models import AuditEvent
    from tests.rogue import RogueCallWorkflow

    address = f"127.0.0.1:{free_port()}"
    client = await worker.connect(settings, deps.vault, runtime=worker.metrics_runtime(address))
    queue, foreign = f"metrics-{uuid.uuid4().hex[:8]}", f"foreign-{uuid.uuid4().hex[:8]}"
    run_id = f"foreign-{uuid.uuid4().hex[:8]}"
    event = AuditEvent(event_key=f"x:{run_id}", run_id=run_id, kind="note", data={}, at=datetime.now(UTC))
    spec = {"activity": names.AUDIT_RECORD, "arg": event.model_dump(mode="json"), "queue": queue}
    async with (
        worker.build_worker(client, deps, task_queue=queue),
        Worker(client, task_queue=foreign, workflows=[RogueCallWorkflow]),
    ):
        answer = await client.execute_workflow(RogueCallWorkflow.run, spec, id=run_id, task_queue=foreign)
        assert answer["ok"] is False and answer["retry_state"] == "NON_RETRYABLE_FAILURE", answer
        refused: list[str] = []
        for _ in range(50):  # the exporter publishes on its own schedule
            text = await asyncio.to_thread(_scrape, address)
            refused = [line for line in text.splitlines() if line.startswith("lockgate_calls_refused")]
            if refused:
                break
            await asyncio.sleep(0.2)
    assert any(f'activity="{names.AUDIT_RECORD}"' in line and 'why="caller"' in line for line in refused), refused


def test_a_malformed_setting_is_one_clear_line() -> None:
    import pytest

    from lockgate.config import load_settings
    from lockgate.errors import UserError

    with pytest.raises(UserError, match="invalid setting LOCKGATE_DRAIN_SECONDS"):
        load_settings({"LOCKGATE_DRAIN_SECONDS": "soon", "LOCKGATE_STATE_DIR": "/nonexistent"})


REFUND = {"order_id": "A-1002", "amount_cents": 25000}  # over the autonomy limit: finance approves


def _families(text: str) -> set[str]:
    """The metric names a scrape has samples of (`name{labels} value` or `name value`)."""
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def _value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith((f"{name} ", f"{name}{{")):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_cluster_state_gauges_and_approval_wait_in_a_real_run(settings: Settings, deps: Any) -> None:
    from lockgate.metrics import StateGauges
    from lockgate.ops import send_verdict
    from tests.support.stack import pending_request, person

    address = f"127.0.0.1:{free_port()}"
    runtime = worker.metrics_runtime(address)
    client = await worker.connect(settings, deps.vault, runtime=runtime)
    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    secrets = [t.secret for t in deps.agents.tools() if t.secret]
    gauges = StateGauges(runtime.metric_meter, client, deps.vault, secrets)
    async with worker.build_worker(client, deps, task_queue=queue):
        handle = await start(client, queue, "refund-agent", REFUND)
        req = await pending_request(handle)
        seen: dict[str, int] = {}
        for _ in range(50):  # visibility is eventually consistent
            seen = await gauges.collect_once()
            if seen.get("pending", 0) >= 1:
                break
            await asyncio.sleep(0.2)
        assert seen["pending"] >= 1 and "compensating" in seen, seen
        assert any(k.startswith("leases:database/creds/") for k in seen), seen
        await send_verdict(client, handle.id, req.request_id, session=person("alice"), approve=True, reason="ok")
        assert await finish(handle) is None
        text = ""
        for _ in range(50):
            text = await asyncio.to_thread(_scrape, address)
            if "lockgate_approval_wait" in text and "lockgate_pending_approvals" in text:
                break
            await asyncio.sleep(0.2)
    pending = _value(text, "lockgate_pending_approvals")
    assert pending is not None and pending >= 1
    assert _value(text, "lockgate_compensations_outstanding") is not None
    assert any(
        line.startswith("lockgate_leases_outstanding{") and 'secret="database/creds/' in line
        for line in text.splitlines()
    )
    waits = [line for line in text.splitlines() if line.startswith("lockgate_approval_wait_count")]
    assert any('outcome="approved"' in line and float(line.rsplit(" ", 1)[1]) >= 1 for line in waits), waits
    # The Grafana dashboard queries only metrics this real scrape has.
    missing = _dashboard_metrics() - _families(text)
    assert not missing, f"deploy/grafana/lockgate.json queries metrics no worker exported: {sorted(missing)}"


def _dashboard_metrics() -> set[str]:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parent.parent / "deploy/grafana/lockgate.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = {n for e in exprs for n in re.findall(r"\b((?:lockgate|temporal)_[a-z_]+)\b", e)}
    assert len(exprs) >= 8 and len(names) >= 10, exprs
    return names
