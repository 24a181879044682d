"""Real-stack tests that each hold one control in isolation, found by `make mutation`: a mutant that
switched the control off survived every test meant to guard it, because another check refused the
same attempt first. Here every attempt passes all checks but the one named in its docstring."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from temporalio.client import Client

from lockgate.models import GateRequest
from tests.agents import SCRIPT_AGENT
from tests.support.approvals import (
    approval_fields,
    approval_for,
    approval_judge,
    recorded_request,
    send_approval,
    signed_as,
)
from tests.support.stack import finish, pending_request, start, status_of


@pytest.mark.parametrize("field", ["run_id", "temporal_run_id", "decision_id", "tool", "args_digest"])
async def test_an_approval_binding_one_wrong_field_is_refused(client: Client, worker_running: str, field: str) -> None:
    """Control: `approval.verify` compares each field the approval binds (run, Temporal run, decision,
    tool, args digest). alice (finance, neither initiator nor owner) passes every other check: the
    same approval with that one field right is accepted."""
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1002", "amount_cents": 15000})
    req = await pending_request(handle)
    fields = await approval_fields(client, handle, req)
    wrong = {**fields, field: "0" * 64 if field == "args_digest" else f"{fields[field]}-other"}
    refused = await send_approval(handle, await signed_as("alice", "approve", wrong))
    assert not refused.accepted and field in refused.reason, refused
    assert (await status_of(handle)).pending_approvals[0].approvals == ()
    accepted = await send_approval(handle, await signed_as("alice", "approve", fields))
    assert accepted.accepted, accepted
    assert await finish(handle) is None


async def test_the_deciding_activity_counts_only_approvals_of_this_exact_call(
    client: Client, worker_running: str, deps: Any
) -> None:
    """Control: `approved_groups` (the gate's own re-check, whatever the workflow hands it) counts an
    approval only for the decision's step and args, from a group member who did not start or own the
    run, given before the request expired. Each refused approval below fails exactly one of those."""
    handle = await start(
        client,
        worker_running,
        "script-agent",  # owned by bob (finance)
        {"steps": [{"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}}]},
        initiator="erin",
    )
    await pending_request(handle)
    request = await recorded_request(deps, handle.id)
    judge = approval_judge(deps)

    good = await approval_for("alice", request)
    assert judge.approved_groups(request.model_copy(update={"approvals": (good,)})) == (("finance",), [])

    # Other args than the decision's, though the approval binds them (only the decision check refuses).
    other_args = request.call.model_copy(update={"args": {**request.call.args, "amount_cents": 1}})
    other = request.model_copy(update={"call": other_args})
    signed = await approval_for("alice", other)
    groups, refused = judge.approved_groups(other.model_copy(update={"approvals": (signed,)}))
    assert groups == () and "other args" in refused[0]

    # Another step than the decision's.
    later = request.model_copy(update={"step": request.step + 1, "approvals": (good,)})
    groups, refused = judge.approved_groups(later)
    assert groups == () and "no approval request of this step" in refused[0]

    # The agent's owner (bob, finance).
    owner = await approval_for("bob", request)
    groups, refused = judge.approved_groups(request.model_copy(update={"approvals": (owner,)}))
    assert groups == () and "initiated or owns" in refused[0]

    # Not in the group asked (carol: support-leads).
    outsider = await approval_for("carol", request)
    groups, refused = judge.approved_groups(request.model_copy(update={"approvals": (outsider,)}))
    assert groups == () and "not in group finance" in refused[0]

    # Signed after the request expired (script-agent's approval TTL), though recent enough to verify.
    decided = next(
        e["at"] for e in deps.ledger.events(handle.id) if e["kind"] == "decision" and e.get("outcome") == "approval"
    )
    late = await approval_for(
        "alice", request, at=datetime.fromisoformat(decided) + SCRIPT_AGENT.approval_ttl + timedelta(seconds=1)
    )
    groups, refused = judge.approved_groups(request.model_copy(update={"approvals": (late,)}))
    assert groups == () and "expired" in refused[0]
    await finish(handle)


async def test_the_initiator_alone_is_refused_by_the_deciding_activity(
    client: Client, worker_running: str, deps: Any
) -> None:
    """Control: separation of duties in `approved_groups`, the initiator's half (alice started the
    run; refund-agent's owner is no person), isolated from the owner's half."""
    handle = await start(
        client, worker_running, "refund-agent", {"order_id": "A-1002", "amount_cents": 15000}, initiator="alice"
    )
    await pending_request(handle)
    request = await recorded_request(deps, handle.id)
    mine = await approval_for("alice", request)
    groups, refused = approval_judge(deps).approved_groups(request.model_copy(update={"approvals": (mine,)}))
    assert groups == () and "initiated or owns" in refused[0]
    other = await approval_for("bob", request)
    assert approval_judge(deps).approved_groups(request.model_copy(update={"approvals": (other,)})) == (
        ("finance",),
        [],
    )
    await handle.terminate()


# -- leases: revoked the moment the call ends -------------------------------------------------------
async def test_a_calls_lease_is_revoked_while_the_run_is_still_alive(
    client: Client, worker_running: str, deps: Any, outside: Any
) -> None:
    """Control: the tool activity revokes its own lease when the call ends, not the run's identity
    at run end. Checked while the run waits for approval at its next step, identity alive."""
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 100}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}},
            ]
        },
        initiator="erin",
    )
    await pending_request(handle)
    status = await status_of(handle)
    assert status.identity_accessor and outside.token_alive(status.identity_accessor)
    (issued,) = [json.loads(e.data) for e in deps.ledger.entries(handle.id) if e.kind == "lease.issued"]
    lease = issued["lease_id"]
    assert deps.vault.lease_info(lease) is None, "the finished call's lease is still alive"
    assert lease not in outside.live_leases()
    revoked = [json.loads(e.data) for e in deps.ledger.entries(handle.id) if e.kind == "lease.revoked"]
    assert [(r["lease_id"], r["by"]) for r in revoked] == [(lease, "tool")]
    assert outside.token_alive(status.identity_accessor), "the run's identity must still be alive"
    await handle.terminate()
    deps.vault.close_run(handle.id, status.identity_accessor)


# -- compensation claims: only for a completed forward step of this run ------------------------------
async def _rogue(client: Client, queue: str, run_id: str, tool: str, args: dict[str, Any], key: str) -> str:
    """A hostile workflow's compensation claim, sent straight to the tool activity; why it failed."""
    from lockgate.models import GateState, ToolCall, ToolInvocation

    inv = ToolInvocation(
        run_id=run_id,
        step=9,
        tool=tool,
        idempotency_key=f"{run_id}:9",
        compensates=key,
        gate=GateRequest(
            decision_id=f"{run_id}/9/1",
            run_id=run_id,
            agent="refund-agent",
            initiator="erin",
            step=9,
            call=ToolCall(tool=tool, args=args),
            state=GateState(),
            compensation=True,
        ),
    )
    handle = await client.start_workflow("tests.rogue", inv.model_dump(mode="json"), id=run_id, task_queue=queue)
    with pytest.raises(Exception) as err:
        await asyncio.wait_for(handle.result(), timeout=30)
    cause = err.value.__cause__
    assert cause is not None, err.value
    return str(cause.__cause__)


async def test_a_compensation_claim_for_a_step_that_raised_needs_its_allowing_decision(
    client: Client, worker_running: str, deps: Any
) -> None:
    """A forward call that raised may have acted before it did, so its compensation runs too; the
    claim then holds only where the run's ledger shows that step raised in a tool this one
    compensates *and* the gate allowed that very tool at that step. Each claim below lacks one."""
    import uuid

    def run_with(failed: dict[str, Any] | None, decision: dict[str, Any] | None) -> str:
        run_id = f"rogue-{uuid.uuid4().hex[:8]}"
        if decision is not None:
            deps.ledger.append(f"decision:{run_id}/1", run_id, "decision", {"decision_id": f"{run_id}/1", **decision})
        if failed is not None:
            deps.ledger.append(f"tool.failed:{run_id}:1:1", run_id, "tool.failed", {"attempt": 1, **failed})
        return run_id

    raised = {"tool": "refunds.issue", "step": 1, "error": "ToolFailed: the bank timed out"}
    allowed = {"tool": "refunds.issue", "step": 1, "outcome": "allow"}
    refused = [
        run_with(raised, None),  # raised, but no decision of the gate backs it
        run_with(raised, {**allowed, "outcome": "deny"}),  # the gate denied it: it never ran
        run_with(raised, {**allowed, "tool": "orders.lookup"}),  # the gate allowed another tool
        run_with(raised, {**allowed, "step": 2}),  # ... at another step
        run_with({**raised, "tool": "orders.lookup"}, {**allowed, "tool": "orders.lookup"}),  # not a forward tool
        run_with({**raised, "step": 2}, allowed),  # another step raised
        run_with(None, allowed),  # allowed, but nothing says it ran
    ]
    for run_id in refused:
        why = await _rogue(
            client, worker_running, run_id, "refunds.reverse", {"idempotency_key": f"{run_id}:1"}, f"{run_id}:1"
        )
        assert "no completed step 1 of a tool refunds.reverse" in why, (run_id, why)
    backed = run_with(raised, allowed)
    passed = await _rogue(
        client, worker_running, backed, "refunds.reverse", {"idempotency_key": f"{backed}:1"}, f"{backed}:1"
    )
    assert "compensat" not in passed and "no open identity" in passed, passed


async def test_a_compensation_claim_needs_a_completed_forward_step_of_this_run(
    client: Client, worker_running: str, deps: Any
) -> None:
    """Control: `_check_compensation`, each condition alone. The ledger of the claiming run is written
    so that every claim below fails exactly one condition: the engine's exact args, a numeric step, a
    `tool.completed` entry of that step, by a tool this one compensates, that is not itself a
    compensation. The claim that meets them all gets past the check (and then has no lease)."""
    import uuid

    def run_with(events: list[dict[str, Any]]) -> str:
        run_id = f"rogue-{uuid.uuid4().hex[:8]}"
        for n, data in enumerate(events):
            deps.ledger.append(f"tool.completed:{run_id}:{n}", run_id, "tool.completed", data)
        return run_id

    def done(run_id: str, **over: Any) -> dict[str, Any]:
        return {"tool": "refunds.issue", "step": 1, "idempotency_key": f"{run_id}:1", "compensates": None, **over}

    cases: list[tuple[str, str]] = []
    run_id = run_with([])
    cases.append(
        (
            await _rogue(
                client,
                worker_running,
                run_id,
                "refunds.reverse",
                {"idempotency_key": f"{run_id}:1", "x": 1},
                f"{run_id}:1",
            ),
            "compensation args",
        )
    )
    run_id = run_with([])
    cases.append(
        (
            await _rogue(
                client, worker_running, run_id, "refunds.reverse", {"idempotency_key": f"{run_id}:x"}, f"{run_id}:x"
            ),
            "another run",
        )
    )
    run_id = run_with([])
    cases.append(
        (
            await _rogue(
                client, worker_running, run_id, "refunds.reverse", {"idempotency_key": f"{run_id}:1"}, f"{run_id}:1"
            ),
            "no completed step",
        )
    )
    for over in ({"tool": "orders.lookup"}, {"compensates": "elsewhere:1"}, {"idempotency_key": "other:1"}):
        run_id = f"rogue-{uuid.uuid4().hex[:8]}"
        deps.ledger.append(f"tool.completed:{run_id}:0", run_id, "tool.completed", done(run_id, **over))
        key = f"{run_id}:1"
        cases.append(
            (
                await _rogue(client, worker_running, run_id, "refunds.reverse", {"idempotency_key": key}, key),
                "no completed step",
            )
        )
    run_id = f"rogue-{uuid.uuid4().hex[:8]}"
    deps.ledger.append(f"tool.completed:{run_id}:0", run_id, "tool.completed", done(run_id))
    key = f"{run_id}:1"
    passed = await _rogue(client, worker_running, run_id, "refunds.reverse", {"idempotency_key": key}, key)
    for why, needle in cases:
        assert needle in why, (needle, why)
    assert "compensat" not in passed and "no open identity" in passed, passed
