"""Every history of the session replays with the current code, and every decision recorded in the
ledger re-evaluates the same against its recorded bundle (scenario 18). The test makes the runs it
needs first (allowed, approved, denied, compensated), so it holds wherever it runs in the session;
run last, it also replays every history the session produced before it."""

from __future__ import annotations

import json
import re
from typing import Any

from temporalio.client import Client

from lockgate.ops import send_verdict
from tests.support.stack import AGENT_MODULES, cli, finish, pending_request, person, start


async def _runs(client: Client, queue: str) -> dict[str, int]:
    """Finished runs of each kind, with the number of gate decisions each must have recorded."""
    made: dict[str, int] = {}
    allowed = await start(client, queue, "refund-agent", {"order_id": "A-1001", "amount_cents": 500})
    assert await finish(allowed) is None
    made[allowed.id] = 2  # at least: orders.lookup, refunds.issue
    approved = await start(client, queue, "refund-agent", {"order_id": "A-1002", "amount_cents": 25000})
    req = await pending_request(approved)
    assert (await send_verdict(client, approved.id, req.request_id, session=person("alice"), approve=True)).accepted
    assert await finish(approved) is None
    made[approved.id] = 2  # at least: the lookup, the refund asking for approval
    denied = await start(client, queue, "refund-agent", {"order_id": "A-1003", "amount_cents": 150000})
    await finish(denied)
    made[denied.id] = 1  # at least: the refund over the hard cap
    compensated = await start(
        client,
        queue,
        "script-agent",
        {
            "steps": [
                {"tool": "qa.mark", "args": {"label": "replayed"}},
                {"tool": "qa.explode", "args": {"why": "replayed"}},
            ]
        },
    )
    assert await finish(compensated) is not None  # failed, qa.mark compensated
    made[compensated.id] = 2
    return made


async def test_replay_all_histories_of_the_session(
    client: Client, env: dict[str, str], worker_running: str, deps: object
) -> None:
    mine = await _runs(client, worker_running)
    # The drop-in apps' modules too: their runs replay with the apps' own workflows (issue 33.1).
    result = await cli({**env, "LOCKGATE_AGENT_MODULES": AGENT_MODULES}, "replay", "--all", "--json", timeout=600)
    # Temporal's core logs a workflow task it fails to stdout: the spoofed `lockgate.agent`
    # histories of test_foreign_callers.py (hostile code under lockgate's type name) replay with
    # such warnings before the JSON.
    start_of_json = re.search(r"^\[", result.stdout, re.M)
    assert start_of_json is not None, result.stdout[-2000:] + result.stderr[-2000:]
    reports = json.loads(result.stdout[start_of_json.start() :])
    # Histories written by hostile code (forged, or foreign under lockgate's type name) are not
    # lockgate's to replay.
    bad = [r for r in reports if not r["ok"] and not r["run_id"].startswith(("forged-", "foreign-"))]
    assert bad == [], json.dumps(bad, indent=1)[:4000]
    # Every governed run is covered: a skip is only a workflow type no loaded module declares
    # (the tests' own throwaway apps), and says so.
    skipped = [r for r in reports if r["skipped"]]
    assert all("no Governance loaded here declares it" in r["skipped"] for r in skipped), skipped
    replayed_types = {r["workflow_type"] for r in reports if not r["skipped"]}
    assert not {"BankSupportWorkflow", "CustomerServiceWorkflow"} & {r["workflow_type"] for r in skipped}
    assert "lockgate.agent" in replayed_types
    by_id: dict[str, Any] = {r["run_id"]: r for r in reports}
    for run_id, decisions in mine.items():
        assert run_id in by_id, f"{run_id} was not replayed"
        assert by_id[run_id]["ok"] and by_id[run_id]["decisions"] >= decisions, by_id[run_id]
    assert len(reports) >= len(mine) and sum(r["decisions"] for r in reports) >= sum(mine.values())
