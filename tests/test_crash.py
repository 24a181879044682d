"""Worker SIGKILL at chosen points (scenarios 1 and 2), with a worker in a subprocess."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from tests.support.stack import ROOT, Outside, finish, ledger_events, start, status_of, wait_file


class WorkerProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **extra: str) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "worker.py")],
                env={**self.env, **extra},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def crash_env(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    return {
        "env": {**env, "LOCKGATE_TASK_QUEUE": queue, "LOCKGATE_REAP_INTERVAL": "3600"},
        "queue": queue,
        "marker": str(tmp_path / "go"),
        "log": tmp_path / "worker.log",
    }


async def crash_and_recover(client: Client, crash: dict[str, Any], hook: str) -> Any:
    """Runs a refund whose refunds.issue step the first worker dies in; a second worker finishes it."""
    first, second = WorkerProcess(crash["env"], crash["log"]), WorkerProcess(crash["env"], crash["log"])
    first.start(**{hook: f"refunds.issue:{crash['marker']}"})
    try:
        handle = await start(client, crash["queue"], "refund-agent", {"order_id": "A-1001", "amount_cents": 650})
        await wait_file(crash["marker"] + ".reached")
        await asyncio.sleep(1.5)  # the heartbeat carrying the lease id reaches the server
        first.kill()
        second.start()
        assert await finish(handle) is None, crash["log"].read_text()[-3000:]
        assert (await status_of(handle)).state == "completed"  # queried while a worker is up
        return handle
    finally:
        first.stop()
        second.stop()


async def test_sigkill_while_holding_a_lease(
    client: Client, worker_running: str, deps: Any, outside: Outside, crash_env: dict[str, Any]
) -> None:
    handle = await crash_and_recover(client, crash_env, "LOCKGATE_TEST_PAUSE_AFTER_LEASE")
    issued = [e for e in ledger_events(deps, handle.id, "lease.issued") if e["tool"] == "refunds.issue"]
    assert len(issued) == 2 and [e["attempt"] for e in issued] == [1, 2]
    revoked = {e["lease_id"]: e["by"] for e in ledger_events(deps, handle.id, "lease.revoked")}
    # The dead attempt's lease was revoked by the next attempt, not left to expire.
    assert revoked[issued[0]["lease_id"]] == "next-attempt"
    assert revoked[issued[1]["lease_id"]] == "tool"
    assert len(outside.refunds(handle.id)) == 1
    outside.assert_nothing_leaked()


async def test_sigkill_after_the_side_effect_refunds_exactly_once(
    client: Client, worker_running: str, deps: Any, outside: Outside, crash_env: dict[str, Any]
) -> None:
    handle = await crash_and_recover(client, crash_env, "LOCKGATE_TEST_PAUSE_AFTER_EFFECT")
    rows = outside.refunds(handle.id)
    assert len(rows) == 1 and rows[0][:3] == ("A-1001", 650, f"{handle.id}:2")
    assert len(ledger_events(deps, handle.id, "lease.issued")) == 3  # lookup + two attempts
    outside.assert_nothing_leaked()
