"""Chain-aware policies on the real stack: the run's own earlier calls decide the next one."""

from __future__ import annotations

import json
from typing import Any

from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from lockgate import errors
from tests.support.stack import Outside, as_person, cli, finish, ledger_events, pending_request, start, status_of


async def test_chain_policy_denies_a_second_refund_on_the_same_order(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    refund = {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 300}}
    handle = await start(client, worker_running, "chain-agent", {"steps": [refund, refund]})
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.TOOL_DENIED, cause
    decisions = ledger_events(deps, handle.id, "decision")
    second = [d for d in decisions if d["step"] == 2 and d["tool"] == "refunds.issue"]
    assert [(d["outcome"], d["policy_ids"]) for d in second] == [("deny", ["chain-agent.refund-once"])]
    # The recorded request holds the chain that decided it (so replay re-checks it exactly).
    chain = second[0]["request"]["state"]["chain"]
    assert chain["calls"] == {"refunds.issue": 1} and chain["touched"]["refunds.issue"] == [["Order", "A-1001"]]
    first = [d for d in decisions if d["step"] == 1]
    assert first[0]["outcome"] == "allow" and first[0]["request"]["state"]["chain"]["calls"] == {}
    # Only one refund was ever issued, and the failed run compensated it.
    rows = outside.refunds(handle.id)
    assert len(rows) == 1 and rows[0][0] == "A-1001" and rows[0][4] is not None
    assert (await status_of(handle)).state == "failed"


async def test_chain_policy_escalates_and_pending_shows_the_chain(
    client: Client, worker_running: str, env: dict[str, str]
) -> None:
    handle = await start(
        client,
        worker_running,
        "chain-agent",
        {
            "steps": [
                {"tool": "orders.lookup", "args": {"order_id": "A-1001"}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 300}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 300}},
            ]
        },
    )
    req = await pending_request(handle)
    assert (req.group, req.step, req.policy_ids) == ("finance", 3, ("chain-agent.second-order-needs-finance",))
    assert req.chain["calls"] == {"orders.lookup": 1, "refunds.issue": 1}
    assert req.chain["resources"] == ['Order::"A-1001"']
    listed = await cli(as_person(env, "alice"), "pending", "--agent", "chain-agent", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [r for r in json.loads(listed.stdout) if r["run_id"] == handle.id]
    assert rows and rows[0]["chain"] == req.chain
    await handle.cancel()
    await finish(handle)
    audit = await cli(env, "audit", handle.id)
    assert audit.returncode == 0, audit.stderr
    assert 'after orders.lookup x1, refunds.issue x1 on Order::"A-1001"' in audit.stdout


async def test_the_chain_survives_continue_as_new_and_replays(
    client: Client, worker_running: str, deps: Any, env: dict[str, str]
) -> None:
    steps = [{"tool": "qa.mark", "args": {"label": f"chain-{i}"}} for i in range(12)]
    handle = await start(client, worker_running, "long-agent", {"steps": steps})
    assert await finish(handle) is None
    runs = [wf async for wf in client.list_workflows(f'WorkflowId = "{handle.id}"')]
    assert len(runs) >= 2, f"the run continued as new ({len(runs)} histories)"
    decisions = {d["step"]: d for d in ledger_events(deps, handle.id, "decision")}
    # Every step's request carries the count of the calls before it, across histories.
    assert [decisions[s]["request"]["state"]["chain"]["calls"].get("qa.mark", 0) for s in range(1, 13)] == list(
        range(12)
    )
    replay = await cli(env, "replay", handle.id, "--json")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    (report,) = json.loads(replay.stdout)
    assert report["ok"] and report["decisions"] == 12


async def test_a_sub_agents_calls_join_the_parents_chain(client: Client, worker_running: str, deps: Any) -> None:
    child_refund = {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 200}}
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {
                    "tool": "agent.delegate",
                    "args": {
                        "agent": "script-agent",
                        "tools": ["refunds.issue", "refunds.reverse"],
                        "budget": 1000,
                        "input": {"steps": [child_refund]},
                    },
                },
                {"tool": "qa.mark", "args": {"label": "after the sub-agent"}},
            ]
        },
    )
    assert await finish(handle) is None
    (after,) = [d for d in ledger_events(deps, handle.id, "decision") if d["tool"] == "qa.mark"]
    chain = after["request"]["state"]["chain"]
    assert chain["calls"] == {"refunds.issue": 1} and chain["touched"] == {"refunds.issue": [["Order", "A-1001"]]}
