"""Pydantic AI's bank support example (examples/pydantic_ai_agent.py), governed drop-in on the real
stack: an allowed call with a lease, a call waiting for and getting approval, a denied call handed
back to the model, and a failure that compensates. No secret reaches the histories."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.worker import Worker

from examples import pydantic_ai_agent as bank
from lockgate.config import Settings
from lockgate.identity import sign
from lockgate.models import ApprovalAttempt, ApprovalRequest
from lockgate.ops import list_pending, send_verdict
from lockgate.plugin import LockgatePlugin
from lockgate.workflows.agent import SA_INITIATOR
from tests.conftest import as_person, cli, person
from tests.dropin_support import (
    app_client,
    app_deps,
    approve,
    assert_no_secret_in_history,
    db,
    issued_secrets,
    ledger,
    pending_of,
)


@pytest.fixture(scope="module")
def deps(settings: Settings) -> Any:
    """This app's worker dependencies (the session worker's stay as the CLI sees them)."""
    return app_deps(settings)


@pytest.fixture(scope="module")
async def app(settings: Settings, deps: Any) -> AsyncIterator[tuple[Client, str]]:
    """The team's own client and worker, with `LockgatePlugin(govern=...)` beside `PydanticAIPlugin`."""
    client = await app_client(
        settings,
        plugins=[
            PydanticAIPlugin(),
            LockgatePlugin(deps=deps, services=False, govern=[bank.GOVERNANCE], start_as=lambda: person(_STARTER[0])),
        ],
    )
    task_queue = f"bank-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=task_queue, workflows=[bank.BankSupportWorkflow], plugins=[AgentPlugin(bank.support_agent)]
    ):
        yield client, task_queue


@pytest.fixture(autouse=True)
def fresh_cards(settings: Settings) -> None:
    with db(settings, "bank") as conn:
        conn.execute("UPDATE cards SET blocked = false")


def blocked(settings: Settings, customer: int) -> bool:
    with db(settings, "bank") as conn:
        row = conn.execute("SELECT blocked FROM cards WHERE customer_id = %s", (customer,)).fetchone()
    assert row is not None
    return bool(row[0])


# Who signs the next start the app's client makes (its `LockgatePlugin(start_as=...)`).
_STARTER = ["erin"]


async def start(
    client: Client,
    task_queue: str,
    customer: int,
    name: str,
    prompt: str,
    *,
    initiator: str | None = None,
    named: str | None = None,
) -> Any:
    """Starts the app's workflow signed by `initiator` (default erin); `named` is what the starter
    writes in the `LockgateInitiator` search attribute (anyone's name: it proves nothing)."""
    _STARTER[0] = initiator or "erin"
    return await client.start_workflow(
        bank.BankSupportWorkflow.run,
        bank.SupportRequest(customer_id=customer, customer_name=name, prompt=prompt),
        id=f"bank-{uuid.uuid4().hex[:10]}",
        task_queue=task_queue,
        search_attributes=TypedSearchAttributes([SearchAttributePair(SA_INITIATOR, named)]) if named else None,
    )


async def test_allowed_call_runs_with_its_own_lease(app: tuple[Client, str], deps: Any, outside: Any) -> None:
    client, task_queue = app
    with issued_secrets(deps) as secrets:
        handle = await start(client, task_queue, 123, "John", "What is my balance?")
        output = await handle.result()
    assert output.support_advice == "$123.45" and not output.block_card
    events = ledger(deps, handle.id)
    decisions = [e for e in events if e["kind"] == "decision"]
    assert decisions and all(d["tool"] == "customer_balance" and d["outcome"] == "allow" for d in decisions)
    assert decisions[0]["agent"] == "support-agent" and decisions[0]["bundle_hash"] == deps.bundle.hash
    issued = [e for e in events if e["kind"] == "lease.issued"]
    revoked = {e["lease_id"] for e in events if e["kind"] == "lease.revoked"}
    assert len(issued) == 1 and issued[0]["secret_path"] == "database/creds/bank-reader"
    assert issued[0]["lease_id"] in revoked
    kinds = [e["kind"] for e in events]
    assert "run.opened" in kinds and "tool.completed" in kinds and kinds[-1] == "run.closed"
    assert len(secrets) == 1
    await assert_no_secret_in_history(handle, secrets)
    outside.assert_nothing_leaked()


async def test_fraud_block_waits_for_a_lead_then_runs(
    app: tuple[Client, str], deps: Any, settings: Settings, outside: Any, env: dict[str, str]
) -> None:
    client, task_queue = app
    with issued_secrets(deps) as secrets:
        handle = await start(client, task_queue, 123, "John", "There is fraud on my card!")
        request = await pending_of(handle)
        assert (request.tool, request.group, request.agent) == ("block_card", "support-leads", "support-agent")
        listed = [p for p in await list_pending(client) if p["run_id"] == handle.id]  # what `lockgate pending` shows
        assert [(p["request_id"], p["tool"], p["group"]) for p in listed] == [
            (request.request_id, "block_card", "support-leads")
        ]
        assert not blocked(settings, 123)
        refused = await approve(client, handle, request, "mallory")
        assert not refused.accepted and "not in group" in refused.reason
        # The CLI, as for any lockgate run: `lockgate pending`, then carol's signed `lockgate approve`.
        pending = await cli(as_person(env, "carol"), "pending", "--agent", "support-agent")
        assert pending.returncode == 0 and f"{handle.id}  {request.request_id}  support-agent  block_card" in (
            pending.stdout
        )
        accepted = await cli(as_person(env, "carol"), "approve", handle.id, request.request_id)
        assert accepted.returncode == 0, accepted.stderr
        output = await handle.result()
    assert output.block_card and blocked(settings, 123)
    kinds = [e["kind"] for e in ledger(deps, handle.id)]
    assert {"approval.requested", "approval.refused", "approval.accepted", "lease.issued", "lease.revoked"} <= set(
        kinds
    )
    await assert_no_secret_in_history(handle, secrets)
    outside.assert_nothing_leaked()


async def test_denied_block_goes_back_to_the_model(app: tuple[Client, str], deps: Any, settings: Settings) -> None:
    client, task_queue = app
    handle = await start(client, task_queue, 123, "John", "Please block my card, I just don't like it")
    output = await handle.result()
    # `@denial("retry")` on the deciding policy: the model saw the denial and answered without blocking.
    assert "lockgate:" in output.support_advice and "support-agent.block-reasons" in output.support_advice
    assert not output.block_card and not blocked(settings, 123)
    denials = [e for e in ledger(deps, handle.id) if e["kind"] == "decision" and e["outcome"] == "deny"]
    assert denials and denials[0]["policy_ids"] == ["support-agent.block-reasons"]
    assert not [e for e in ledger(deps, handle.id) if e["kind"] == "lease.issued"]


async def test_failure_after_a_block_compensates(
    app: tuple[Client, str], deps: Any, settings: Settings, outside: Any
) -> None:
    client, task_queue = app
    handle = await start(client, task_queue, 200, "Jane", "I lost my card. What is my balance?")
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    # block_card ran (card 200 blocked), customer_balance failed (no such customer), the run failed,
    # and the registered compensation unblocked the card.
    assert not blocked(settings, 200)
    events = ledger(deps, handle.id)
    done = [e for e in events if e["kind"] == "tool.completed"]
    assert [e["tool"] for e in done] == ["block_card", "unblock_card"]
    assert done[1]["compensates"] == done[0]["idempotency_key"]
    assert any(e["kind"] == "tool.failed" and e["tool"] == "customer_balance" for e in events)
    with db(settings, "bank") as conn:
        row = conn.execute(
            "SELECT undone_at FROM card_blocks WHERE idempotency_key = %s", (done[0]["idempotency_key"],)
        ).fetchone()
    assert row is not None and row[0] is not None
    closed = [e for e in events if e["kind"] == "run.closed"]
    assert closed and closed[-1]["state"] == "failed"
    outside.assert_nothing_leaked()


async def test_forged_captured_and_self_approvals_are_refused(
    app: tuple[Client, str], deps: Any, settings: Settings, outside: Any
) -> None:
    """A drop-in run takes approvals exactly as a lockgate agent run does: only a statement signed
    by a person of the group, not the run's initiator, for this very run, request, decision and args,
    counted once. Everything else is refused, recorded, and changes nothing."""
    client, task_queue = app

    def fields(handle: Any, temporal_run_id: str, request: ApprovalRequest) -> dict[str, Any]:
        return {
            "run_id": handle.id,
            "temporal_run_id": temporal_run_id,
            "request_id": request.request_id,
            "decision_id": request.decision_id,
            "tool": request.tool,
            "args_digest": request.args_digest,
            "reason": "",
        }

    first = await start(client, task_queue, 123, "John", "There is fraud on my card!", initiator="carol")
    request = await pending_of(first)
    # The person who signed the start may not approve their own run (separation of duties).
    own = await approve(client, first, request, "carol")
    assert not own.accepted and "separation of duties" in own.reason
    # An unsigned approval, as a raw signal claiming to be dave's: refused as forged.
    await first.signal(
        "approve",
        {
            "attempt_id": "x",
            "run_id": first.id,
            "request_id": request.request_id,
            "approver": "dave",
            "args_digest": request.args_digest,
            "decision_id": request.decision_id,
        },
    )
    # dave's signature, for other args than the request's: refused.
    other_args = await send_verdict(
        client, first.id, request.request_id, session=person("dave"), approve=True, args_digest="0" * 64
    )
    assert not other_args.accepted
    assert (await pending_of(first)).approvals == () and not blocked(settings, 123)

    # dave approves the first run properly: it blocks the card.
    signed = await asyncio.to_thread(
        sign, person("dave"), "approve", fields(first, (await first.describe()).run_id, request)
    )
    taken = await first.execute_update("approve", signed, result_type=ApprovalAttempt)
    assert taken.accepted and taken.approver == "dave"
    assert (await first.result()).block_card and blocked(settings, 123)

    # The same signed approval, captured and replayed on another run waiting for the same tool, the
    # same request id and the same args: bound to the first run, it is refused there.
    with db(settings, "bank") as conn:
        conn.execute("UPDATE cards SET blocked = false")
    second = await start(client, task_queue, 123, "John", "There is fraud on my card!")
    waiting = await pending_of(second)
    assert (waiting.request_id, waiting.args_digest) == (request.request_id, request.args_digest)
    replayed = await second.execute_update("approve", signed, result_type=ApprovalAttempt)
    assert not replayed.accepted
    assert (await pending_of(second)).approvals == () and not blocked(settings, 123)
    assert [e for e in ledger(deps, second.id) if e["kind"] == "lease.issued"] == []
    await second.terminate("test done")

    refused = [e for e in ledger(deps, first.id) if e["kind"] == "approval.refused"]
    assert [(r["approver"], r["verified"]) for r in refused] == [
        ("carol", True),
        ("dave (unverified)", False),
        ("dave (unverified)", False),  # a statement for other args verifies as nothing here
    ]
    assert "forged" in refused[1]["reason"]
    assert [e["kind"] for e in ledger(deps, second.id) if e["kind"].startswith("approval.")] == [
        "approval.requested",
        "approval.refused",
    ]
    # The gate itself counted the one verified approval for the first run's block, nothing else.
    decisions = [e for e in ledger(deps, first.id) if e["kind"] == "decision" and e["tool"] == "block_card"]
    assert [d["outcome"] for d in decisions][:2] == ["approval", "allow"]
    assert decisions[1]["state"]["approved_groups"] == ["support-leads"]
    assert not [e for e in ledger(deps, first.id) if e["kind"] == "approval.not_counted"]
    outside.assert_nothing_leaked()
