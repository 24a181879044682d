"""Pydantic AI's bank support example (examples/pydantic_ai_agent.py), governed drop-in on the real
stack: an allowed call with a lease, a call waiting for and getting approval, a denied call handed
back to the model, and a failure that compensates. No secret reaches the histories."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from examples import pydantic_ai_agent as bank
from lockgate.config import Settings
from lockgate.identity import sign
from lockgate.models import ApprovalAttempt, ApprovalRequest
from lockgate.ops import halt_run, list_pending, run_status, send_verdict, wait_closed
from lockgate.plugin import LockgatePlugin
from lockgate.workflows.agent import SA_INITIATOR
from tests.support.dropin import (
    app_client,
    app_deps,
    approve,
    assert_no_secret_in_history,
    db,
    issued_secrets,
    ledger,
    pending_of,
)
from tests.support.stack import as_person, cli, person


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


def states_of(history: Any) -> list[str]:
    """The run's `LockgateState` search attribute as it was set, in order (from its history)."""
    states: list[str] = []
    for event in history.events:
        if event.HasField("upsert_workflow_search_attributes_event_attributes"):
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            if "LockgateState" in fields:
                states.append(json.loads(fields["LockgateState"].data))
    return states


async def test_a_cancelled_run_closes_halted_after_compensating(
    app: tuple[Client, str], deps: Any, settings: Settings, outside: Any
) -> None:
    """A drop-in run cancelled by its client (not an operator's halt) is halted, not failed: it
    compensates, then closes its identity as `halted`, in the ledger, the status and the state."""
    client, task_queue = app
    handle = await start(client, task_queue, 123, "John", "There is fraud on my card!")
    await pending_of(handle)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), timeout=60)
    assert not blocked(settings, 123)
    closed = [e for e in ledger(deps, handle.id) if e["kind"] == "run.closed"]
    assert [e["state"] for e in closed] == ["halted"]
    status = await run_status(client, handle.id)
    assert status.state == "halted" and "cancelled" in (status.error or "")
    states = states_of(await handle.fetch_history())
    assert states[-2:] == ["compensating", "halted"], states
    outside.assert_nothing_leaked()


# -- the app's own workflow code calling a governed plain activity ---------------------------------
# `customer_balance` and `block_card` are the bank's governed tools (bank.GOVERNANCE): as plain
# activities of these names, a workflow's `execute_activity` calls are governed as the same agent.
@activity.defn(name="customer_balance")
async def teller_balance(args: dict[str, Any]) -> str:
    return "$1.00"


@activity.defn(name="block_card")
async def teller_block(args: dict[str, Any]) -> str:
    return "not used here"


_TELLER_CALL = timedelta(seconds=30)


@workflow.defn(sandboxed=False)
class TellerWorkflow:
    """`parallel`: two balance calls at once as the run's first calls. `halt`: one call, then waits;
    halted, its cleanup code tries another call. `swallow`: halted, it returns as if it completed.
    `fail`: one call, then the app's code fails."""

    @workflow.run
    async def run(self, mode: str) -> list[str]:
        if mode == "parallel":
            return list(
                await asyncio.gather(
                    workflow.execute_activity("customer_balance", {}, start_to_close_timeout=_TELLER_CALL),
                    workflow.execute_activity("customer_balance", {}, start_to_close_timeout=_TELLER_CALL),
                )
            )
        seen = [await workflow.execute_activity("customer_balance", {}, start_to_close_timeout=_TELLER_CALL)]
        if mode == "fail":
            raise ApplicationError("the teller crashed", non_retryable=True)
        try:
            await workflow.wait_condition(lambda: False)
        except asyncio.CancelledError:
            if mode == "swallow":
                return seen  # as if nothing happened
            seen.append(await workflow.execute_activity("customer_balance", {}, start_to_close_timeout=_TELLER_CALL))
            raise
        return seen


@pytest.fixture(scope="module")
async def teller(settings: Settings, deps: Any) -> AsyncIterator[tuple[Client, str]]:
    client = await app_client(
        settings,
        plugins=[LockgatePlugin(deps=deps, services=False, govern=[bank.GOVERNANCE], start_as=lambda: person("erin"))],
    )
    task_queue = f"teller-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=task_queue, workflows=[TellerWorkflow], activities=[teller_balance, teller_block]
    ):
        yield client, task_queue


async def test_concurrent_first_calls_open_the_runs_identity_once(
    teller: tuple[Client, str], deps: Any, outside: Any
) -> None:
    """Two governed calls made at once as a run's first: one opens the run's identity, the other
    waits for it; both then run, and the run closes once."""
    client, task_queue = teller
    handle = await client.start_workflow(
        TellerWorkflow.run, "parallel", id=f"teller-{uuid.uuid4().hex[:10]}", task_queue=task_queue
    )
    assert await asyncio.wait_for(handle.result(), timeout=60) == ["$1.00", "$1.00"]
    events = ledger(deps, handle.id)
    assert [e["kind"] for e in events].count("run.opened") == 1
    # Each call decided in the workflow (`dropin.gate`) and again by its activity's attempt.
    decided = sorted({(e["step"], e["outcome"]) for e in events if e["kind"] == "decision"})
    assert decided == [(1, "allow"), (2, "allow")]
    assert len([e for e in events if e["kind"] == "tool.completed"]) == 2
    assert [e["state"] for e in events if e["kind"] == "run.closed"] == ["completed"]
    outside.assert_nothing_leaked()


async def _halted_after_its_first_call(teller: tuple[Client, str], deps: Any, mode: str) -> Any:
    """A teller run in `mode`, halted by dave (an operator) once its first call completed."""
    client, task_queue = teller
    handle = await client.start_workflow(
        TellerWorkflow.run, mode, id=f"teller-{uuid.uuid4().hex[:10]}", task_queue=task_queue
    )
    for _ in range(300):
        if any(e["kind"] == "tool.completed" for e in ledger(deps, handle.id)):
            break
        await asyncio.sleep(0.1)
    await halt_run(client, handle.id, "teller closed", session=person("dave"))
    return handle


async def test_a_call_after_a_halt_is_refused_before_its_gate(
    teller: tuple[Client, str], deps: Any, outside: Any
) -> None:
    """Once an operator halted the run, a governed call its code still makes (here: cleanup code
    catching the cancellation) is refused: no gate, no lease, no tool; the run closes halted."""
    client, _ = teller
    handle = await _halted_after_its_first_call(teller, deps, "halt")
    assert await wait_closed(client, handle.id) != "running"
    events = ledger(deps, handle.id)
    assert {(e["step"], e["outcome"]) for e in events if e["kind"] == "decision"} == {(1, "allow")}
    assert [e["step"] for e in events if e["kind"] == "tool.completed"] == [1]
    assert len([e for e in events if e["kind"] == "lease.issued"]) == 1
    assert [e["state"] for e in events if e["kind"] == "run.closed"] == ["halted"]
    status = await run_status(client, handle.id)
    assert status.state == "halted" and [s.step for s in status.steps] == [1]
    outside.assert_nothing_leaked()


async def test_a_halted_run_whose_code_swallows_the_cancellation_still_closes_halted(
    teller: tuple[Client, str], deps: Any, outside: Any
) -> None:
    """The app's code catches the halt's cancellation and returns normally: the run still closes
    halted (its record and its status), never as completed."""
    client, _ = teller
    handle = await _halted_after_its_first_call(teller, deps, "swallow")
    assert await asyncio.wait_for(handle.result(), timeout=60) == ["$1.00"]
    events = ledger(deps, handle.id)
    assert [e["state"] for e in events if e["kind"] == "run.closed"] == ["halted"]
    status = await run_status(client, handle.id)
    assert status.state == "halted" and "teller closed" in (status.error or ""), status
    outside.assert_nothing_leaked()


async def test_a_failed_run_closes_failed_with_its_own_error(
    teller: tuple[Client, str], deps: Any, outside: Any
) -> None:
    """The app's code fails after a governed call: the run closes `failed`, its record and status
    saying why in the app's words (not as a halt)."""
    client, task_queue = teller
    handle = await client.start_workflow(
        TellerWorkflow.run, "fail", id=f"teller-{uuid.uuid4().hex[:10]}", task_queue=task_queue
    )
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), timeout=60)
    (closed,) = [e for e in ledger(deps, handle.id) if e["kind"] == "run.closed"]
    assert closed["state"] == "failed" and "the teller crashed" in closed["reason"], closed
    status = await run_status(client, handle.id)
    assert status.state == "failed" and "the teller crashed" in (status.error or ""), status
    outside.assert_nothing_leaked()


async def test_an_unsigned_start_opens_as_the_initiator_its_starter_named(
    settings: Settings, deps: Any, outside: Any
) -> None:
    """With `Governance(unsigned_starts=True)`, a run nobody signed the start of opens as whoever
    its starter named in `LockgateInitiator` (recorded unverified), not as the anonymous app."""
    unsigned = bank.GOVERNANCE.model_copy(update={"unsigned_starts": True})
    client = await app_client(
        settings, plugins=[LockgatePlugin(deps=deps, services=False, govern=[unsigned], start_as=lambda: None)]
    )
    task_queue = f"teller-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=task_queue, workflows=[TellerWorkflow], activities=[teller_balance, teller_block]
    ):
        handle = await client.start_workflow(
            TellerWorkflow.run,
            "parallel",
            id=f"teller-{uuid.uuid4().hex[:10]}",
            task_queue=task_queue,
            search_attributes=TypedSearchAttributes([SearchAttributePair(SA_INITIATOR, "zed")]),
        )
        assert await asyncio.wait_for(handle.result(), timeout=60) == ["$1.00", "$1.00"]
        status = await run_status(client, handle.id)
    (opened,) = [e for e in ledger(deps, handle.id) if e["kind"] == "run.opened"]
    assert opened["initiator"] == "zed"
    assert status.initiator == "zed"
    outside.assert_nothing_leaked()
