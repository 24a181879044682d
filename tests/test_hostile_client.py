"""Authority only narrows (SCENARIOS 20, 21): a client that reaches Temporal directly, a CLI user and
a malicious planner or script attack a run; each test asserts that the attacked run, identity, ledger
record and side effect are untouched, and that the attempt was refused and recorded."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from lockgate.activities.freeze import FreezeStore
from lockgate.identity import sign
from lockgate.models import (
    ApprovalAttempt,
    GateRequest,
    GateState,
    ParentLink,
    RunCarry,
    RunIdentity,
    RunInput,
    RunOpen,
    RunStatus,
    SagaEntry,
    ToolCall,
    ToolInvocation,
)
from lockgate.worker import build_governance
from tests import agents
from tests.support.hostile import raw_start, refund, refused_at_once
from tests.support.stack import (
    Outside,
    as_person,
    cli,
    finish,
    ledger_events,
    ledger_kinds,
    pending_request,
    person,
    start,
    status_of,
    wait_file,
)
from tests.support.vault import read_data


# -- run ids ---------------------------------------------------------------------------------------
async def test_reusing_a_finished_runs_id_is_refused_and_its_record_untouched(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    victim = await start(client, worker_running, "refund-agent", refund(), initiator="erin")
    assert await finish(victim) is None
    before = [(e.seq, e.kind) for e in deps.ledger.entries(victim.id)]
    refunds_before = outside.refunds(victim.id)
    again = await raw_start(
        client, worker_running, RunInput(agent="refund-agent", input=refund(), initiator="erin"), victim.id
    )
    await refused_at_once(again, "already belongs to an earlier run")
    # Nothing of the new run happened: no refund, no lease, and the first run's record is as it was.
    assert outside.refunds(victim.id) == refunds_before
    after = [(e.seq, e.kind) for e in deps.ledger.entries(victim.id)]
    assert after[: len(before)] == before
    assert [k for _, k in after[len(before) :]] == ["run.refused"]
    outside.assert_nothing_leaked()


async def test_an_id_over_a_terminated_runs_open_identity_cannot_use_or_revoke_it(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    victim = await start(client, worker_running, "refund-agent", refund("A-1002", 25000), initiator="erin")
    await pending_request(victim)  # its identity is open, waiting for finance
    accessor = (await status_of(victim)).identity_accessor
    assert accessor and outside.token_alive(accessor)
    await victim.terminate("hostile test: leave the identity for the reaper")
    intruder = await raw_start(
        client, worker_running, RunInput(agent="refund-agent", input=refund(), initiator="erin"), victim.id
    )
    await refused_at_once(intruder, "already belongs to an earlier run")
    # The intruder neither used nor revoked the victim's identity: it is still the reaper's to close.
    assert outside.token_alive(accessor)
    assert "run.closed" not in ledger_kinds(deps, victim.id)
    assert outside.refunds(victim.id) == []


async def test_invalid_run_ids_fail_at_once(client: Client, worker_running: str, env: dict[str, str]) -> None:
    for bad in ("line\nbreak", "a/b", "..", "x" * 100):
        handle = await raw_start(
            client, worker_running, RunInput(agent="refund-agent", input=refund(), initiator="erin"), bad
        )
        await refused_at_once(handle, "invalid run id")
    result = await cli(
        as_person(env, "erin"), "run", "refund-agent", "--id", "runs/../other", "--input", json.dumps(refund())
    )
    assert result.returncode == 2 and "invalid run id" in result.stderr


# -- engine-only input -----------------------------------------------------------------------------
async def test_a_forged_parent_link_is_refused(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    victim = await start(client, worker_running, "refund-agent", refund("A-1002", 25000), initiator="erin")
    await pending_request(victim)
    victim_status = await status_of(victim)
    link = ParentLink(
        run_id=victim.id,
        agent="refund-agent",
        vault_policy="lockgate-agent-incident-agent",  # another agent's Vault policy
        boundary=("refunds.issue",),
        budget=10**9,  # a bigger budget than anyone has
        deadline_at=datetime.now(UTC) + timedelta(days=30),
    )
    forged = await raw_start(
        client,
        worker_running,
        RunInput(
            agent="script-agent",
            input={"steps": [{"tool": "refunds.issue", "args": refund()}]},
            initiator="erin",
            parent=link,
        ),
        f"{victim.id}.7",
    )
    await refused_at_once(forged, "parent link is accepted only from the parent run itself")
    assert outside.refunds(forged.id) == []
    assert ledger_events(deps, forged.id, "lease.issued") == []
    # The victim is untouched and still waiting.
    assert (await status_of(victim)).identity_accessor == victim_status.identity_accessor
    assert outside.token_alive(victim_status.identity_accessor or "")
    await victim.terminate("done")


async def test_a_forged_carry_is_refused(client: Client, worker_running: str, deps: Any, outside: Outside) -> None:
    victim = await start(client, worker_running, "refund-agent", refund("A-1002", 25000), initiator="erin")
    await pending_request(victim)
    status = await status_of(victim)
    carry = RunCarry(
        identity=RunIdentity(
            accessor=status.identity_accessor or "",
            policies=("lockgate-agent-refund-agent",),
            expires_at=datetime.now(UTC) + timedelta(days=1),
        ),
        deadline_at=datetime.now(UTC) + timedelta(days=30),
        step=0,
        evaluations=0,
        spent=0,
        tainted=False,
        steps=(),
        compensated=(),
        done=(),
        # A "compensation" that is a forward tool: would run past the kill switch.
        saga=(SagaEntry(step=1, tool="refunds.issue", args=refund()),),
        call_times={},
        generation=5,
    )
    for seal in ("", "vault:v1:forged"):
        forged = await raw_start(
            client,
            worker_running,
            RunInput(agent="refund-agent", input=refund(), initiator="erin", carry=carry, carry_seal=seal),
            f"carry-{uuid.uuid4().hex[:8]}",
        )
        await refused_at_once(forged, "a carry is accepted only from a continue-as-new")
        assert outside.refunds(forged.id) == []
        assert "run.refused" in ledger_kinds(deps, forged.id)
    assert outside.token_alive(status.identity_accessor or "")
    await victim.terminate("done")


async def test_a_sub_agent_identity_never_outlives_its_parent_whatever_ttl_is_asked(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    """The workflow asks `run.open` for a sub-agent TTL that ends with its parent's deadline; the
    activity caps it at what the parent's identity has left, whatever is asked. A hostile caller
    (under the sub-agent's id and execution, while the sub-agent waits for an approval) asks for 30
    days with a link exactly as the parent's gate allowed it: the identity it gets ends with its
    parent's. Once the sub-agent has closed, its identity never opens again."""
    parent = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {
                    "tool": "agent.delegate",
                    "args": {
                        "agent": "script-agent",
                        "tools": ["refunds.issue"],
                        "budget": 25000,
                        "input": {
                            "steps": [{"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}}]
                        },
                    },
                },
            ]
        },
        initiator="erin",
    )
    child = f"{parent.id}.1"
    child_handle = client.get_workflow_handle(child)
    for _ in range(300):  # the parent starts its sub-agent at its first step
        if ledger_events(deps, child, "run.opened"):
            break
        await asyncio.sleep(0.1)
    await pending_request(child_handle)  # the sub-agent waits for finance, its identity open
    accessor = ""
    try:
        record = deps.vault.read_run(parent.id)
        assert record is not None
        parent_expires = datetime.fromisoformat(record["expires_at"])
        (opened,) = ledger_events(deps, child, "run.opened")
        link = ParentLink(
            run_id=parent.id,
            agent="script-agent",
            vault_policy=record["policies"],
            boundary=("refunds.issue",),
            budget=25000,
            deadline_at=parent_expires,
        )
        ask = RunOpen(
            run_id=child,
            agent="script-agent",
            initiator="erin",
            ttl_seconds=30 * 24 * 3600,
            origin_run_id=opened["origin_run_id"],
            parent_run_id=parent.id,
            parent=link,
        )
        # Called as code with a worker's access calls it: in process, with the Temporal facts it
        # chooses (the finished sub-agent's id and first execution). Through Temporal, the caller
        # check now refuses a first execution that is not the caller's (test_foreign_callers.py),
        # and a run id opened once is never opened again by another execution: the cap is what
        # is left when those are bypassed.
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, workflow_id=child, workflow_run_id=opened["origin_run_id"])
        identity = await asyncio.to_thread(env.run, build_governance(deps).open_run, ask)
        accessor = identity.accessor
        assert identity.expires_at <= parent_expires + timedelta(seconds=2)
        # Vault's own word on the token: it dies with the parent's, not in 30 days.
        looked = outside.vault.adapter.post("/v1/auth/token/lookup-accessor", json={"accessor": accessor})
        left = (parent_expires - datetime.now(UTC)).total_seconds()
        assert 0 < looked["data"]["ttl"] <= left + 2, (looked["data"]["ttl"], left)
    finally:
        if accessor:
            deps.vault.close_run(child, accessor)
        await parent.cancel()
    await finish(parent)
    # The sub-agent is closed now (halted with its parent): asked again, its identity stays shut.
    for _ in range(100):
        if ledger_events(deps, child, "run.closed"):
            break
        await asyncio.sleep(0.1)
    with pytest.raises(ApplicationError, match="this run is closed"):
        await asyncio.to_thread(env.run, build_governance(deps).open_run, ask)
    outside.assert_nothing_leaked()


# -- compensation ----------------------------------------------------------------------------------
async def test_a_compensation_claim_is_checked_against_the_ledger(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    """Hostile workflow code (registered on the worker) claims compensations: a forward tool while the
    agent is frozen, and a real compensation tool aimed at another run's refund."""
    victim = await start(client, worker_running, "refund-agent", refund(), initiator="erin")
    assert await finish(victim) is None
    (victim_refund,) = outside.refunds(victim.id)
    deps.freezes.set("refund-agent", True, by="test", reason="hostile test")
    try:
        for tool, args, compensates, needle in (
            ("refunds.issue", refund(), f"{victim.id}:2", "compensates no tool"),
            ("refunds.reverse", {"idempotency_key": f"{victim.id}:2"}, f"{victim.id}:2", "another run"),
        ):
            run_id = f"rogue-{uuid.uuid4().hex[:8]}"
            inv = ToolInvocation(
                run_id=run_id,
                step=1,
                tool=tool,
                idempotency_key=f"{run_id}:1",
                compensates=compensates,
                gate=GateRequest(
                    decision_id=f"{run_id}/1/1",
                    run_id=run_id,
                    agent="refund-agent",
                    initiator="erin",
                    step=1,
                    call=ToolCall(tool=tool, args=args),
                    state=GateState(),
                    compensation=True,
                ),
            )
            handle = await client.start_workflow(
                "tests.rogue", inv.model_dump(mode="json"), id=run_id, task_queue=worker_running
            )
            with pytest.raises(Exception) as err:
                await asyncio.wait_for(handle.result(), timeout=30)
            cause = err.value.__cause__
            assert cause is not None, err.value
            assert needle in str(cause.__cause__), err.value
            assert ledger_events(deps, run_id, "tool.refused")[0]["reason"].find(needle) >= 0
    finally:
        # Anyone with database access can write an unfreeze row: unsigned, it lifts nothing.
        deps.freezes.set("refund-agent", False, by="mallory", reason="let me through")
        await asyncio.sleep(FreezeStore.CACHE_SECONDS + 0.1)
        assert deps.freezes.is_frozen("refund-agent")
        signed = sign(person("carol"), "unfreeze", {"scope": "refund-agent", "reason": "hostile test done"})
        deps.freezes.set(
            "refund-agent", False, by="carol", reason="hostile test done", evidence=signed.model_dump_json()
        )
        await asyncio.sleep(FreezeStore.CACHE_SECONDS + 0.1)
        assert not deps.freezes.is_frozen("refund-agent")
    assert outside.refunds(victim.id) == [victim_refund]  # still not reversed, no second refund
    outside.assert_nothing_leaked()


async def test_an_unfreeze_signed_by_someone_not_allowed_to_unfreeze_lifts_nothing(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    """Rows written straight into the kill switch's table, each with a valid signature by a real
    person: by alice (finance, not an operator), and by carol (an operator) for another scope or for
    a freeze. None lifts the freeze: a run stays held, and each refusal is recorded. Then carol's
    own unfreeze of this scope lifts it and the run completes."""
    scope = "script-agent"
    deps.freezes.set(scope, True, by="carol", reason="hostile unfreeze test")
    try:
        handle = await start(
            client,
            worker_running,
            scope,
            {"steps": [{"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 400}}]},
            initiator="erin",
        )
        for _ in range(200):
            if (await status_of(handle)).state == "frozen":
                break
            await asyncio.sleep(0.1)
        forged = [
            ("alice", sign(person("alice"), "unfreeze", {"scope": scope, "reason": "not mine to lift"})),
            ("carol", sign(person("carol"), "unfreeze", {"scope": "refund-agent", "reason": "another scope"})),
            ("carol", sign(person("carol"), "freeze", {"scope": scope, "reason": "a freeze, not an unfreeze"})),
        ]
        for by, statement in forged:
            deps.freezes.set(scope, False, by=by, reason="let me through", evidence=statement.model_dump_json())
            await asyncio.sleep(FreezeStore.CACHE_SECONDS + 0.1)
            assert deps.freezes.is_frozen(scope), by
            await handle.signal("unfreeze")  # as the CLI's unfreeze wakes frozen runs
            await asyncio.sleep(0.5)
            assert (await status_of(handle)).state == "frozen", by
        assert outside.refunds(handle.id) == []
        refused = [json.loads(e.data) for e in deps.ledger.entries(f"scope:{scope}") if e.kind == "unfreeze.refused"]
        assert [r["by"] for r in refused[-3:]] == ["alice", "carol", "carol"]
    finally:
        signed = sign(person("carol"), "unfreeze", {"scope": scope, "reason": "hostile unfreeze test done"})
        deps.freezes.set(scope, False, by="carol", reason="done", evidence=signed.model_dump_json())
        await asyncio.sleep(FreezeStore.CACHE_SECONDS + 0.1)
        assert not deps.freezes.is_frozen(scope)
    await handle.signal("unfreeze")
    assert await finish(handle) is None
    assert [r[1] for r in outside.refunds(handle.id)] == [400]
    outside.assert_nothing_leaked()


async def test_a_script_cannot_reverse_another_runs_refund(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    victim = await start(client, worker_running, "refund-agent", refund(), initiator="erin")
    assert await finish(victim) is None
    attacker = await start(
        client,
        worker_running,
        "script-agent",
        {"steps": [{"tool": "refunds.reverse", "args": {"idempotency_key": f"{victim.id}:2"}}]},
        initiator="erin",
    )
    cause = await finish(attacker)
    assert isinstance(cause, ApplicationError) and "is not a step of run" in cause.message
    assert all(row[4] is None for row in outside.refunds(victim.id)), "the victim's refund was reversed"


async def test_a_sub_agent_compensates_what_it_may_not_call_forward(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    """A sub-agent may issue refunds but not reverse them: when it fails, its refund is reversed
    anyway (a compensation is allowed wherever its forward tool was)."""
    parent = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {
                    "tool": "agent.delegate",
                    "args": {
                        "agent": "script-agent",
                        "tools": ["refunds.issue", "qa.explode"],
                        "budget": 5000,
                        "input": {
                            "steps": [
                                {"tool": "refunds.issue", "args": {"order_id": "A-1003", "amount_cents": 700}},
                                {"tool": "qa.explode", "args": {"why": "after the refund"}},
                            ]
                        },
                    },
                }
            ]
        },
        initiator="erin",
    )
    cause = await finish(parent)
    assert isinstance(cause, ApplicationError) and "after the refund" in cause.message
    child = f"{parent.id}.1"
    ((_, amount, _, _, reversed_at),) = outside.refunds(child)
    assert amount == 700 and reversed_at is not None
    comp = [d for d in ledger_events(deps, child, "decision") if d["tool"] == "refunds.reverse"]
    assert comp and comp[-1]["outcome"] == "allow"
    outside.assert_nothing_leaked()


async def test_a_failed_compensation_stays_outstanding_until_the_reaper_runs_it(
    client: Client, worker_running: str, deps: Any, env: dict[str, str]
) -> None:
    from lockgate import worker

    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "qa.mark", "args": {"label": "stuck", "fail_undo": True}},
                {"tool": "qa.explode", "args": {"why": "fail after the mark"}},
            ]
        },
        initiator="erin",
    )
    agents.UNDONE.clear()
    await finish(handle)
    assert "compensation.outstanding" in ledger_kinds(deps, handle.id)
    listed = await cli(env, "compensations", "--json")
    assert listed.returncode == 1, listed.stdout + listed.stderr
    mine = [r for r in json.loads(listed.stdout) if r["run_id"] == handle.id]
    assert [(r["step"], r["compensation"]) for r in mine] == [(1, "qa.unmark")]
    audit = await cli(env, "audit", handle.id)
    assert "COMPENSATION OUTSTANDING: qa.unmark for step 1" in audit.stdout
    # Still failing: the reaper retries, records the failure, and keeps it outstanding.
    reaper = worker.build_reaper(deps)
    await reaper.reap_once(client)
    assert agents.UNDONE == []
    mark = agents.MARKS[f"{handle.id}:1"]
    mark["fail_undo"] = False  # the downstream system recovers
    # Backoff: not retried again right away...
    await reaper.reap_once(client)
    assert agents.UNDONE == []
    # ...but once its backoff (and the reapers' claim window) has passed, it runs and is resolved.
    events = ledger_events(deps, handle.id, "reaper.compensation")
    assert events and events[-1]["ok"] is False
    reaper.clock = lambda: time.time() + 3600
    await reaper.reap_once(client)
    assert agents.UNDONE == ["stuck"]
    assert "compensation.resolved" in ledger_kinds(deps, handle.id)
    listed = await cli(env, "compensations", "--json")
    assert not [r for r in json.loads(listed.stdout) if r["run_id"] == handle.id]


async def test_halt_waits_for_the_in_flight_tool_before_compensating(
    client: Client, worker_running: str, outside: Outside, tmp_path: Path
) -> None:
    marker = tmp_path / "go"
    os.environ["LOCKGATE_TEST_PAUSE_AFTER_LEASE"] = f"refunds.issue:{marker}"
    try:
        handle = await start(client, worker_running, "refund-agent", refund("A-1003", 900), initiator="erin")
        await wait_file(f"{marker}.reached", timeout=15)  # the refund started
        await handle.cancel()
        await asyncio.sleep(1.0)  # without the fence, compensation would run now (and find nothing)
        marker.touch()  # the forward tool goes on and refunds
        await finish(handle)
    finally:
        os.environ.pop("LOCKGATE_TEST_PAUSE_AFTER_LEASE", None)
    ((_, amount, _, _, reversed_at),) = outside.refunds(handle.id)
    assert amount == 900 and reversed_at is not None, "the refund made after the halt was not compensated"
    assert (await status_of(handle)).state == "halted"
    outside.assert_nothing_leaked()


# -- approvals (SCENARIO 22) ---------------------------------------------------------------------
def approval_of(handle: Any, req: Any, temporal_run_id: str, who: str = "alice") -> Any:
    """A valid signed approval of `req`, exactly as `lockgate approve` makes it."""
    return sign(
        person(who),
        "approve",
        {
            "run_id": handle.id,
            "temporal_run_id": temporal_run_id,
            "request_id": req.request_id,
            "decision_id": req.decision_id,
            "tool": req.tool,
            "args_digest": req.args_digest,
            "reason": "",
        },
    )


async def attempt_of(handle: Any, name: str, payload: Any) -> ApprovalAttempt:
    return await handle.execute_update(name, payload, result_type=ApprovalAttempt)


async def test_a_captured_approval_does_not_count_for_another_run(
    client: Client, worker_running: str, deps: Any
) -> None:
    first = await start(client, worker_running, "refund-agent", refund("A-1002", 25000), initiator="erin")
    second = await start(client, worker_running, "refund-agent", refund("A-1002", 25000), initiator="erin")
    req1, req2 = await pending_request(first), await pending_request(second)
    assert req1.args_digest == req2.args_digest  # same args: only the binding tells them apart
    captured = approval_of(first, req1, (await first.describe()).run_id)
    attempt = await attempt_of(second, "approve", captured)
    assert (not attempt.accepted and "request_id" in attempt.reason) or "run_id" in attempt.reason, attempt.reason
    assert (await second.query("status", result_type=RunStatus)).state == "awaiting_approval"
    refused = ledger_events(deps, second.id, "approval.refused")
    assert refused and refused[-1]["verified"] is False
    # The same statement is good for the run it was made for, and counts there once.
    ok = await attempt_of(first, "approve", captured)
    assert ok.accepted and ok.approver == "alice"
    assert await finish(first) is None
    await second.terminate("done")


async def test_a_raw_signal_claiming_to_be_alice_is_refused_and_recorded(
    client: Client, worker_running: str, deps: Any, env: dict[str, str]
) -> None:
    handle = await start(client, worker_running, "refund-agent", refund("A-1002", 25000), initiator="erin")
    req = await pending_request(handle)
    temporal_run_id = (await handle.describe()).run_id
    genuine = approval_of(handle, req, temporal_run_id)
    # Round 1's plain claim, a statement signed by mallory but saying alice, and alice's statement
    # with the args digest altered: all refused, none counted.
    plain = {"attempt_id": "x", "request_id": req.request_id, "approver": "alice", "args_digest": req.args_digest}
    stmt = genuine.statement.model_copy(update={"person": "alice"})
    by_mallory = sign(person("mallory"), "approve", dict(stmt.fields))
    as_alice = by_mallory.model_copy(update={"statement": by_mallory.statement.model_copy(update={"person": "alice"})})
    altered = genuine.model_copy(
        update={
            "statement": genuine.statement.model_copy(
                update={"fields": {**genuine.statement.fields, "args_digest": "0" * 64}}
            )
        }
    )
    for payload in (plain, as_alice.model_dump(mode="json"), altered.model_dump(mode="json")):
        await handle.signal("approve", payload)
    refused: list[dict[str, Any]] = []
    for _ in range(100):
        refused = ledger_events(deps, handle.id, "approval.refused")
        if len(refused) >= 3:
            break
        await asyncio.sleep(0.1)
    assert len(refused) == 3 and all(r["verified"] is False for r in refused)
    assert "forged: not a signed statement" in refused[0]["reason"]
    assert (await status_of(handle)).state == "awaiting_approval"
    audit = await cli(env, "audit", handle.id)
    assert audit.stdout.count("REFUSED approve attempt by alice (unverified)") >= 2
    await handle.terminate("done")


async def test_initiator_owner_outsiders_and_doubles_never_count(
    client: Client, worker_running: str, deps: Any
) -> None:
    # script-agent's owner is bob (finance); alice starts the run herself.
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {"steps": [{"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 30000}}]},
        initiator="alice",
    )
    req = await pending_request(handle)
    temporal_run_id = (await handle.describe()).run_id
    for who, needle in (("alice", "separation of duties"), ("bob", "separation of duties"), ("carol", "not in group")):
        attempt = await attempt_of(handle, "approve", approval_of(handle, req, temporal_run_id, who))
        assert not attempt.accepted and needle in attempt.reason, (who, attempt.reason)
    assert (await status_of(handle)).state == "awaiting_approval"
    await handle.terminate("done")


async def test_removed_from_the_group_before_approving_is_refused(
    client: Client, worker_running: str, outside: Outside
) -> None:
    handle = await start(client, worker_running, "refund-agent", refund("A-1002", 25000), initiator="erin")
    req = await pending_request(handle)
    temporal_run_id = (await handle.describe()).run_id
    group = read_data(outside.vault, "identity/group/name/finance")
    bob_id = read_data(outside.vault, "identity/entity/name/bob")["id"]
    outside.vault.write_data(
        "identity/group/name/finance",
        data={"member_entity_ids": [m for m in group["member_entity_ids"] if m != bob_id]},
    )
    try:
        attempt = await attempt_of(handle, "approve", approval_of(handle, req, temporal_run_id, "bob"))
        assert not attempt.accepted and "not in group finance" in attempt.reason
    finally:
        outside.vault.write_data("identity/group/name/finance", data={"member_entity_ids": group["member_entity_ids"]})
    await handle.terminate("done")


# -- CLI input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        '{"order_id": "A-1001", "amount_cents": 1e3}',
        '{"order_id": "A-1001", "amount_cents": true}',
        '{"order_id": "A-1001", "amount_cents": "500"}',
    ],
)
async def test_cli_input_is_validated_strictly(env: dict[str, str], bad: str) -> None:
    result = await cli(as_person(env, "erin"), "run", "refund-agent", "--input", bad)
    assert result.returncode == 2 and "amount_cents" in result.stderr


async def test_control_characters_are_shown_escaped(client: Client, worker_running: str, env: dict[str, str]) -> None:
    evil = "ok\x1b[2K\r\u202etampered\nFAKE LINE"
    handle = await start(client, worker_running, "refund-agent", {**refund(), "reason": evil}, initiator="erin")
    await finish(handle)
    for args in (("audit", handle.id), ("audit", handle.id, "--format", "md"), ("status", handle.id)):
        out = (await cli(env, *args)).stdout
        assert "\x1b" not in out and "\u202e" not in out and "\r" not in out, args
        assert "FAKE LINE" not in [line.strip() for line in out.splitlines()], args
