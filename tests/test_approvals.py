"""Human approval gates over signals (scenarios 9, 10, 11 and the pending list)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from lockgate import errors
from lockgate.ops import list_pending, send_verdict
from tests.support.stack import (
    Outside,
    as_person,
    cli,
    finish,
    ledger_events,
    pending_request,
    person,
    start,
    status_of,
)


async def test_every_refusal_path_changes_nothing_and_is_recorded(
    client: Client, worker_running: str, deps: Any, outside: Outside, env: dict[str, str]
) -> None:
    # script-agent is owned by bob (finance); the run is initiated by alice (finance).
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}},
            ]
        },
        initiator="alice",
    )
    req = await pending_request(handle)
    assert (req.group, req.quorum, req.tool) == ("finance", 1, "refunds.issue")
    assert (await status_of(handle)).state == "awaiting_approval"

    refusals = [
        dict(approver="mallory", why="not in group finance"),
        dict(approver="carol", why="not in group finance"),
        dict(approver="alice", why="separation of duties"),  # the initiator
        dict(approver="bob", why="separation of duties"),  # the agent's owner
    ]
    for r in refusals:
        attempt = await send_verdict(client, handle.id, req.request_id, session=person(r["approver"]), approve=True)
        assert not attempt.accepted and r["why"] in attempt.reason, (r, attempt)
    # Another user of the group, but for different args than the request's.
    wrong = await send_verdict(
        client, handle.id, req.request_id, session=person("bob"), approve=True, args_digest="0" * 64
    )
    assert not wrong.accepted
    unknown = await send_verdict(client, handle.id, "99.1", session=person("alice"), approve=True)
    assert not unknown.accepted and "no pending approval request" in unknown.reason

    # Nothing changed: still waiting, no refund, no lease for the gated step.
    status = await status_of(handle)
    assert status.state == "awaiting_approval" and status.pending_approvals[0].approvals == ()
    assert outside.refunds(handle.id) == [] and ledger_events(deps, handle.id, "lease.issued") == []
    refused = ledger_events(deps, handle.id, "approval.refused")
    assert len(refused) == 6 and {r["approver"].removesuffix(" (unverified)") for r in refused} == {
        "mallory",
        "carol",
        "alice",
        "bob",
    }
    # Signed by who they say, but not allowed: verified people refused. A statement for other args,
    # or for no pending request, verifies as nothing here.
    assert [r["verified"] for r in refused] == [True, True, True, True, False, False]

    # Late: the request expires (8 s for script-agent) and the step is denied.
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.APPROVAL_EXPIRED
    assert outside.refunds(handle.id) == []
    assert len(ledger_events(deps, handle.id, "approval.expired")) == 1
    outside.assert_nothing_leaked()
    # After the run ended, a late approval is refused (exit 2) and still recorded.
    late = await cli(as_person(env, "bob"), "approve", handle.id, req.request_id)
    assert late.returncode == 2 and "not running" in late.stderr
    assert len(ledger_events(deps, handle.id, "approval.refused")) == 7


async def test_cli_approve_refused_exits_2_and_accepted_exits_0(
    client: Client, worker_running: str, env: dict[str, str], outside: Outside
) -> None:
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1002", "amount_cents": 15000})
    req = await pending_request(handle)
    refused = await cli(as_person(env, "mallory"), "approve", handle.id, req.request_id)
    # mallory may not even read the request (reading payloads is a role): refused before she can sign.
    assert refused.returncode == 2 and "payload withheld: requires group auditors" in refused.stderr
    ok = await cli(as_person(env, "alice"), "approve", handle.id, req.request_id, "--reason", "checked the photos")
    assert ok.returncode == 0, ok.stderr
    assert await finish(handle) is None
    rows = outside.refunds(handle.id)
    assert [(r[0], r[1]) for r in rows] == [("A-1002", 15000)]
    status = await status_of(handle)
    # The step ran on a re-evaluation with finance's approval in context.
    assert status.steps[-1].decision_id.endswith("/3") and status.steps[-1].outcome == "allow"


async def test_rejection_denies_the_step_with_the_reason(
    client: Client, worker_running: str, env: dict[str, str], outside: Outside
) -> None:
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1002", "amount_cents": 12000})
    req = await pending_request(handle)
    result = await cli(as_person(env, "bob"), "reject", handle.id, req.request_id, "--reason", "duplicate claim")
    assert result.returncode == 0, result.stderr
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.APPROVAL_REJECTED
    assert "duplicate claim" in cause.message and "bob" in cause.message
    assert outside.refunds(handle.id) == []


async def test_quorum_counts_distinct_approvers(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 100})
    assert await finish(handle) is None
    close = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "accounts.close", "args": {"customer_id": "C-501", "reason": "customer asked"}},
            ]
        },
        initiator="erin",
    )
    req = await pending_request(close)
    assert (req.group, req.quorum) == ("support-leads", 2)
    first = await send_verdict(client, close.id, req.request_id, session=person("carol"), approve=True)
    again = await send_verdict(client, close.id, req.request_id, session=person("carol"), approve=True)
    assert first.accepted and not again.accepted and "already counted" in again.reason
    status = await status_of(close)
    assert status.state == "awaiting_approval" and status.pending_approvals[0].approvals == ("carol",)
    second = await send_verdict(client, close.id, req.request_id, session=person("dave"), approve=True)
    assert second.accepted
    assert await finish(close) is None
    with outside.pg() as conn:
        found = conn.execute("SELECT closed_at FROM customers WHERE id = 'C-501'").fetchone()
        assert found is not None
        closed = found[0]
        conn.execute("UPDATE customers SET closed_at = NULL WHERE id = 'C-501'")  # leave the seed as it was
    assert closed is not None
    outside.assert_nothing_leaked()


async def test_expiry_denies_and_compensates_earlier_side_effects(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 400}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 30000}},
            ]
        },
        initiator="erin",
    )
    await pending_request(handle)
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.APPROVAL_EXPIRED
    rows = outside.refunds(handle.id)
    assert len(rows) == 1 and rows[0][:2] == ("A-1001", 400) and rows[0][4] is not None  # reversed
    status = await status_of(handle)
    assert status.state == "failed" and [c.tool for c in status.compensations] == ["refunds.reverse"]
    outside.assert_nothing_leaked()


async def test_pending_lists_exactly_the_waiting_requests(
    client: Client, worker_running: str, env: dict[str, str]
) -> None:
    handles = [
        await start(client, worker_running, "refund-agent", {"order_id": "A-1002", "amount_cents": 11000 + i})
        for i in range(3)
    ]
    for h in handles:
        await pending_request(h)
    ours = {h.id for h in handles}
    rows: list[dict[str, Any]] = []
    for _ in range(100):  # visibility is eventually consistent
        rows = [r for r in await list_pending(client, "refund-agent") if r["run_id"] in ours]
        if len(rows) == 3:
            break
        await asyncio.sleep(0.1)
    assert {r["run_id"] for r in rows} == ours
    row = rows[0]
    assert set(row) >= {
        "run_id",
        "request_id",
        "agent",
        "tool",
        "args_digest",
        "args",
        "group",
        "quorum",
        "approvals",
        "requested_at",
        "expires_at",
    }
    assert row["tool"] == "refunds.issue" and row["group"] == "finance" and row["args"]["order_id"] == "A-1002"
    result = await cli(env, "pending", "--agent", "refund-agent", "--json")
    assert result.returncode == 0
    assert ours <= {r["run_id"] for r in json.loads(result.stdout)}
    # Approve one; it leaves the list.
    approve = next(h for h in handles if h.id == row["run_id"])
    await send_verdict(client, approve.id, row["request_id"], session=person("alice"), approve=True)
    assert await finish(approve) is None
    left: set[str] = set()
    for _ in range(100):
        left = {r["run_id"] for r in await list_pending(client, "refund-agent")} & ours
        if left == ours - {approve.id}:
            break
        await asyncio.sleep(0.1)
    assert left == ours - {approve.id}
    for h in handles:
        if h.id != approve.id:
            await h.cancel()
            await finish(h)
