"""Infrastructure faults: Vault unresponsive (scenario 5), Temporal restarted (scenario 6)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from lockgate.config import load_settings
from lockgate.devstack import DevStack, free_port
from lockgate.identity import login_userpass
from lockgate.models import ApprovalRequest
from lockgate.ops import send_verdict
from tests.support.stack import Outside, finish, ledger_events, start, status_of


async def test_vault_unresponsive_no_tool_runs_without_its_lease(
    client: Client,
    worker_running: str,
    deps: Any,
    outside: Outside,
    stack: DevStack,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "go"
    monkeypatch.setenv("LOCKGATE_TEST_PAUSE_AFTER_EFFECT", f"orders.lookup:{marker}")
    bao = stack._pids()["vault"]
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 450})
    for _ in range(200):
        if Path(f"{marker}.reached").exists():
            break
        await asyncio.sleep(0.05)
    os.kill(bao, signal.SIGSTOP)
    try:
        marker.touch()  # the lookup finishes its query, then cannot revoke: Vault is frozen
        await asyncio.sleep(12)
        # Fail closed: the refund step cannot get a lease, so it has not run.
        assert outside.refunds(handle.id) == []
        assert not [e for e in ledger_events(deps, handle.id, "lease.issued") if e["tool"] == "refunds.issue"]
        assert (await status_of(handle)).state == "running"
    finally:
        os.kill(bao, signal.SIGCONT)
    assert await finish(handle) is None
    assert len(outside.refunds(handle.id)) == 1
    outside.assert_nothing_leaked(within=20)


async def test_temporal_restart_while_waiting_for_approval(tmp_path: Path, policy_dir: Path) -> None:
    from lockgate import worker

    stack = DevStack(
        tmp_path / "state", temporal_port=free_port(), ui_port=free_port(), vault_port=free_port(), ui=False
    )
    try:
        stack.up()
        env = {
            **stack.env(),
            "LOCKGATE_POLICY_DIR": str(policy_dir),
            "LOCKGATE_STATE_DIR": str(stack.state_dir),
            "LOCKGATE_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
            "LOCKGATE_TASK_QUEUE": f"restart-{uuid.uuid4().hex[:6]}",
        }
        settings = load_settings(env)
        deps = worker.build_deps(settings)
        client = await worker.connect(settings)
        async with worker.build_worker(client, deps):
            # People of this stack's own Vault.
            erin = login_userpass(stack.vault_addr, "erin", env["LOCKGATE_DEV_PASSWORD"])
            alice = login_userpass(stack.vault_addr, "alice", env["LOCKGATE_DEV_PASSWORD"])
            handle = await start(
                client, settings.task_queue, "refund-agent", {"order_id": "A-1002", "amount_cents": 22000}, session=erin
            )
            for _ in range(200):
                if await handle.query("pending_approvals", result_type=list[ApprovalRequest]):
                    break
                await asyncio.sleep(0.05)
            old_pid = stack._pids()["temporal"]
            stack._stop_pid(old_pid)
            assert not stack.status()["temporal"]["healthy"]
            stack.up()  # same db file, same port
            assert stack._pids()["temporal"] != old_pid
            deadline = time.monotonic() + 60
            while True:
                try:
                    pending = await handle.query("pending_approvals", result_type=list[ApprovalRequest])
                    break
                except Exception:  # noqa: BLE001 - the worker is reconnecting
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.5)
            assert len(pending) == 1
            attempt = await send_verdict(client, handle.id, pending[0].request_id, session=alice, approve=True)
            assert attempt.accepted
            assert await finish(handle) is None
            assert (await status_of(handle)).state == "completed"
    finally:
        stack.down()
