"""Real-stack tests that each hold one control in isolation, found by `make mutation`: a mutant that
switched the control off survived every test meant to guard it, because another check refused the
same attempt first. Here every attempt passes all checks but the one named in its docstring."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle

from lockgate.identity import sign
from lockgate.models import ApprovalAttempt, ApprovalRequest, GateRequest, args_digest
from lockgate.people import SignedStatement
from tests.conftest import finish, pending_request, person, start, status_of


async def _signed(name: str, act: str, fields: dict[str, Any], **kw: Any) -> SignedStatement:
    return await asyncio.to_thread(sign, person(name), act, fields, **kw)  # type: ignore[arg-type]


async def _fields(client: Client, handle: WorkflowHandle[Any, Any], req: ApprovalRequest) -> dict[str, Any]:
    """Everything a correct approval of `req` binds."""
    desc = await client.get_workflow_handle(handle.id).describe()
    return {
        "run_id": handle.id,
        "temporal_run_id": desc.run_id,
        "request_id": req.request_id,
        "decision_id": req.decision_id,
        "tool": req.tool,
        "args_digest": req.args_digest,
        "reason": "",
    }


async def _send(handle: WorkflowHandle[Any, Any], signed: SignedStatement) -> ApprovalAttempt:
    return await handle.execute_update("approve", signed, result_type=ApprovalAttempt, id=signed.statement.nonce)


@pytest.mark.parametrize("field", ["run_id", "temporal_run_id", "decision_id", "tool", "args_digest"])
async def test_an_approval_binding_one_wrong_field_is_refused(
    client: Client, worker_running: str, field: str
) -> None:
    """Control: `approval.verify` compares each field the approval binds (run, Temporal run, decision,
    tool, args digest). alice (finance, neither initiator nor owner) passes every other check: the
    same approval with that one field right is accepted."""
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1002", "amount_cents": 15000})
    req = await pending_request(handle)
    fields = await _fields(client, handle, req)
    wrong = {**fields, field: "0" * 64 if field == "args_digest" else f"{fields[field]}-other"}
    refused = await _send(handle, await _signed("alice", "approve", wrong))
    assert not refused.accepted and field in refused.reason, refused
    assert (await status_of(handle)).pending_approvals[0].approvals == ()
    accepted = await _send(handle, await _signed("alice", "approve", fields))
    assert accepted.accepted, accepted
    assert await finish(handle) is None


async def _recorded_request(deps: Any, run_id: str) -> GateRequest:
    """The gate request whose decision asked for approval, as the ledger recorded it."""
    for e in deps.ledger.entries(run_id):
        data = json.loads(e.data)
        if e.kind == "decision" and data.get("outcome") == "approval":
            return GateRequest.model_validate(data["request"])
    raise AssertionError("no approval decision recorded")


def _judge(deps: Any) -> Any:
    from lockgate.worker import build_approvals

    judge = build_approvals(deps)
    assert judge is not None
    return judge


async def _approval_for(name: str, request: GateRequest, digest: str | None = None, **kw: Any) -> SignedStatement:
    return await _signed(
        name,
        "approve",
        {
            "run_id": request.run_id,
            "decision_id": request.decision_id,
            "args_digest": digest or args_digest(request.call.args),
        },
        **kw,
    )


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
    request = await _recorded_request(deps, handle.id)
    judge = _judge(deps)

    good = await _approval_for("alice", request)
    assert judge.approved_groups(request.model_copy(update={"approvals": (good,)})) == (("finance",), [])

    # Other args than the decision's, though the approval binds them (only the decision check refuses).
    other_args = request.call.model_copy(update={"args": {**request.call.args, "amount_cents": 1}})
    other = request.model_copy(update={"call": other_args})
    signed = await _approval_for("alice", other)
    groups, refused = judge.approved_groups(other.model_copy(update={"approvals": (signed,)}))
    assert groups == () and "other args" in refused[0]

    # Another step than the decision's.
    later = request.model_copy(update={"step": request.step + 1, "approvals": (good,)})
    groups, refused = judge.approved_groups(later)
    assert groups == () and "no approval request of this step" in refused[0]

    # The agent's owner (bob, finance).
    owner = await _approval_for("bob", request)
    groups, refused = judge.approved_groups(request.model_copy(update={"approvals": (owner,)}))
    assert groups == () and "initiated or owns" in refused[0]

    # Not in the group asked (carol: support-leads).
    outsider = await _approval_for("carol", request)
    groups, refused = judge.approved_groups(request.model_copy(update={"approvals": (outsider,)}))
    assert groups == () and "not in group finance" in refused[0]

    # Signed after the request expired (script-agent: 3 s), though recent enough to verify.
    decided = next(
        e["at"] for e in deps.ledger.events(handle.id) if e["kind"] == "decision" and e.get("outcome") == "approval"
    )
    late = await _approval_for("alice", request, at=datetime.fromisoformat(decided) + timedelta(seconds=4))
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
    request = await _recorded_request(deps, handle.id)
    mine = await _approval_for("alice", request)
    groups, refused = _judge(deps).approved_groups(request.model_copy(update={"approvals": (mine,)}))
    assert groups == () and "initiated or owns" in refused[0]
    other = await _approval_for("bob", request)
    assert _judge(deps).approved_groups(request.model_copy(update={"approvals": (other,)})) == (("finance",), [])
    await handle.terminate()
