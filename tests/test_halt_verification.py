"""Real-stack tests of `halt.verify` and `approval.verify`, each check alone (found by `make
mutation`): a run waiting for approval is halted only by a fresh halt an operator signed for exactly
this run; a refused approval whose signature verified names its person."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client

from lockgate.identity import sign
from lockgate.models import args_digest
from lockgate.people import FieldValue
from tests.agents import SCRIPT_AGENT
from tests.support.approvals import (
    approval_fields,
    approval_for,
    approval_judge,
    recorded_request,
    send_approval,
    signed_as,
)
from tests.support.stack import finish, pending_request, person, start, status_of


async def _halt(handle: Any, name: str, run_id: str, **kw: Any) -> str:
    signed = await asyncio.to_thread(sign, person(name), "halt", {"run_id": run_id, "reason": "test"}, **kw)
    return await handle.execute_update("halt", signed, result_type=str, id=signed.statement.nonce)


async def test_a_halt_counts_only_from_an_operator_fresh_and_for_this_run(client: Client, worker_running: str) -> None:
    """Control: `halt.verify` requires group `operators` (alice, finance, signs a good halt), the run
    id the halt binds (carol, an operator, halts another run), and a fresh statement (carol's halt
    signed 11 minutes ago); carol's correct halt then stops the run."""
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1002", "amount_cents": 15000})
    await pending_request(handle)
    assert (await _halt(handle, "alice", handle.id)) == "refused: alice is not in group operators"
    other = await _halt(handle, "carol", f"{handle.id}-other")
    assert other.startswith("refused:") and "run_id" in other, other
    old = await _halt(handle, "carol", handle.id, at=datetime.now(UTC) - timedelta(minutes=11))
    assert old.startswith("refused:") and "too old" in old, old
    assert (await status_of(handle)).state != "halted"
    assert await _halt(handle, "carol", handle.id) == "halting"
    await asyncio.wait_for(finish(handle), timeout=60)
    assert (await status_of(handle)).state == "halted"


async def test_a_refusal_after_the_signature_verified_names_the_verified_person(
    client: Client, worker_running: str
) -> None:
    """Control: `approval.verify` reports a refusal made after the signature checked out as verified
    (the attempt names the person, not "(unverified)"): carol, support-leads, signs a correct
    approval of a finance request."""
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1002", "amount_cents": 15000})
    req = await pending_request(handle)
    fields = await approval_fields(client, handle, req)
    attempt = await send_approval(handle, await signed_as("carol", "approve", fields))
    assert not attempt.accepted and "not in group finance" in attempt.reason, attempt
    assert attempt.approver == "carol", attempt
    await handle.cancel()
    await asyncio.wait_for(finish(handle), timeout=60)


async def test_an_approval_signed_at_or_after_the_expiry_is_refused_while_the_request_is_open(
    client: Client, worker_running: str
) -> None:
    """Control: `approval.verify` refuses a statement signed at or after the request's expiry even
    while the request is still open (script-agent asks with a short TTL; a signing time that far
    ahead is within the allowed clock skew, so only the expiry check can refuse). alice's approval
    signed now is then accepted."""
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {"steps": [{"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}}]},
    )
    req = await pending_request(handle)
    fields = await approval_fields(client, handle, req)
    for at in (req.expires_at, req.expires_at + timedelta(seconds=1)):
        late = await send_approval(handle, await signed_as("alice", "approve", fields, at=at))
        assert not late.accepted and "expired" in late.reason, late
    attempt = await send_approval(handle, await signed_as("alice", "approve", fields))
    assert attempt.accepted, attempt
    await asyncio.wait_for(finish(handle), timeout=60)


async def test_the_deciding_activity_checks_each_bound_field_and_the_expiry_edge(
    client: Client, worker_running: str, deps: Any
) -> None:
    """Control: `approved_groups` compares the run id and args digest the approval binds (the
    decision it names is this run's, with these args: only the bound field differs), and an approval
    signed exactly at the request's expiry still counts (expired is strictly after)."""
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {"steps": [{"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}}]},
        initiator="erin",
    )
    await pending_request(handle)
    request = await recorded_request(deps, handle.id)
    judge = approval_judge(deps)
    digest = args_digest(request.call.args)
    for field, value in (("run_id", f"{request.run_id}-other"), ("args_digest", "0" * 64)):
        fields: dict[str, FieldValue] = {"run_id": request.run_id, "decision_id": request.decision_id}
        fields["args_digest"] = digest
        fields[field] = value
        signed = await asyncio.to_thread(sign, person("alice"), "approve", fields)
        groups, refused = judge.approved_groups(request.model_copy(update={"approvals": (signed,)}))
        assert groups == () and f"binds {field}=" in refused[0], refused
    decided = next(
        e["at"] for e in deps.ledger.events(handle.id) if e["kind"] == "decision" and e.get("outcome") == "approval"
    )
    edge = await approval_for("alice", request, at=datetime.fromisoformat(decided) + SCRIPT_AGENT.approval_ttl)
    assert judge.approved_groups(request.model_copy(update={"approvals": (edge,)})) == (("finance",), [])
    await finish(handle)
