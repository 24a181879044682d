"""Real-stack tests of the tool activity's own checks, each in isolation (found by `make mutation`):
the invocation must be the call this activity is, a refusal is final, a call gets a lease only
under its run's open identity, a tool failure retries only when the tool says so, and a stuck
attempt's lease is revoked by the next attempt while the stuck one still holds it."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from lockgate.models import GateRequest, ToolCall, ToolInvocation
from tests import agents
from tests.support.hostile import refused_by_activity
from tests.support.stack import Outside, finish, ledger_events, ledger_kinds, start

RETRIED = "MAXIMUM_ATTEMPTS_REACHED"


def _id() -> str:
    return f"rogue-{uuid.uuid4().hex[:10]}"


def _invocation(me: str, tool: str = "qa.mark", args: dict[str, Any] | None = None, **wrong: Any) -> ToolInvocation:
    """The invocation lockgate's workflow would send for step 1 of run `me`; `wrong` sets one field
    otherwise (tool, gate_tool, gate_step, run_id, gate_run_id)."""
    agent = "refund-agent" if tool.startswith("refunds.") else "script-agent"
    call = ToolCall(tool=wrong.get("gate_tool", tool), args=args if args is not None else {"label": "rogue"})
    return ToolInvocation(
        run_id=wrong.get("run_id", me),
        step=1,
        tool=wrong.get("tool", tool),
        idempotency_key=f"{me}:1",
        gate=GateRequest(
            decision_id=f"{me}:1:1",
            run_id=wrong.get("gate_run_id", me),
            agent=agent,
            initiator="erin",
            step=wrong.get("gate_step", 1),
            call=call,
        ),
    )


@pytest.mark.parametrize(
    "wrong",
    [
        {"tool": "qa.unmark"},
        {"gate_tool": "qa.unmark"},
        {"gate_step": 2},
        {"run_id": "another-run"},
        {"gate_run_id": "another-run"},
    ],
    ids=["tool", "gate-tool", "gate-step", "run-id", "gate-run-id"],
)
async def test_an_invocation_naming_another_tool_step_or_run_is_refused_at_once(
    rogue: Any,
    deps: Any,
    wrong: dict[str, Any],
) -> None:
    """Control: `tool.<name>` runs only the call it is: its own tool, the gate request's tool and step,
    and the calling run's id, each compared alone (one field wrong, the rest right). The same
    invocation with every field right runs (qa.mark: no secret, so no identity is needed)."""
    me = _id()
    refused_by_activity(
        await rogue(me, "tool.qa.mark", _invocation(me, **wrong)), "invocation names another tool, step or run"
    )
    assert "tool.completed" not in ledger_kinds(deps, me)
    assert [e["reason"] for e in ledger_events(deps, me, "tool.refused")] == ["invocation names another tool or run"]
    ran = await rogue(me, "tool.qa.mark", _invocation(me))
    assert ran["ok"] and ran["result"]["ran"], ran
    assert [e["tool"] for e in ledger_events(deps, me, "tool.completed")] == ["qa.mark"]


async def test_a_compensation_claim_without_its_step_is_refused_at_once(rogue: Any, deps: Any) -> None:
    """Control: a refused compensation claim is final (retrying a claim the ledger does not back
    only repeats it), and recorded."""
    me = _id()
    claim = _invocation(me, "qa.unmark", {"idempotency_key": f"{me}:1"}).model_copy(update={"compensates": f"{me}:1"})
    claim = claim.model_copy(update={"gate": claim.gate.model_copy(update={"compensation": True})})
    refused_by_activity(await rogue(me, "tool.qa.unmark", claim), "no completed step 1")
    assert len(ledger_events(deps, me, "tool.refused")) == 1


async def test_a_call_without_an_open_run_identity_gets_no_lease(rogue: Any, deps: Any, outside: Outside) -> None:
    """Control: a lease is issued only under the run's own open identity. A workflow that never
    opened one (the gate allows the refund) is refused at once, nothing leased, nothing refunded."""
    me = _id()
    args = {"order_id": "A-1001", "amount_cents": 100, "reason": "rogue"}
    answer = await rogue(me, "tool.refunds.issue", _invocation(me, "refunds.issue", args))
    assert answer["ok"] is False and "has no open identity" in answer["message"], answer
    assert answer["type"] == "LeaseForbidden" and answer["retry_state"] == "NON_RETRYABLE_FAILURE", answer
    assert [e["outcome"] for e in ledger_events(deps, me, "decision")] == ["allow"]
    assert "lease.issued" not in ledger_kinds(deps, me)
    assert outside.refunds(me) == []


async def test_a_tool_failure_is_retried_only_when_the_tool_says_so(
    client: Client, worker_running: str, deps: Any
) -> None:
    """Control: `ToolError(retryable=True)` is retried (a transient failure, here twice, then the
    call goes through); a plain `ToolError` ends the step at its first attempt."""
    agents.EXPLODED.clear()
    flaky = await start(
        client,
        worker_running,
        "script-agent",
        {"steps": [{"tool": "qa.explode", "args": {"why": "transient", "retryable_times": 2}}]},
        initiator="erin",
    )
    assert await asyncio.wait_for(finish(flaky), timeout=60) is None
    assert [e["attempt"] for e in ledger_events(deps, flaky.id, "tool.failed")] == [1, 2]
    assert [e["tool"] for e in ledger_events(deps, flaky.id, "tool.completed")] == ["qa.explode"]
    final = await start(
        client,
        worker_running,
        "script-agent",
        {"steps": [{"tool": "qa.explode", "args": {"why": "final"}}]},
        initiator="erin",
    )
    assert await asyncio.wait_for(finish(final), timeout=60) is not None
    assert [e["attempt"] for e in ledger_events(deps, final.id, "tool.failed")] == [1]


async def test_the_next_attempt_revokes_the_lease_a_stuck_attempt_holds(
    client: Client, worker_running: str, deps: Any, outside: Outside, tmp_path: Path
) -> None:
    """Control: an attempt that stops heartbeating while it holds a lease (a hung or dead worker) is
    retried, and the next attempt revokes that lease first, while the stuck attempt still holds it
    (not when its thread ends, nor at the run's end)."""
    marker = tmp_path / "go"
    os.environ["LOCKGATE_TEST_PAUSE_AFTER_LEASE"] = f"refunds.issue:{marker}"
    try:
        handle = await start(
            client,
            worker_running,
            "script-agent",
            {"steps": [{"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 100}}]},
            initiator="erin",
        )
        swept: list[dict[str, Any]] = []
        for _ in range(600):  # the heartbeat timeout (10 s) and the retry's backoff
            swept = [r for r in ledger_events(deps, handle.id, "lease.revoked") if r["by"] == "next-attempt"]
            if swept:
                break
            await asyncio.sleep(0.05)
        (first,) = [json.loads(e.data) for e in deps.ledger.entries(handle.id) if e.kind == "lease.issued"][:1]
        assert [r["lease_id"] for r in swept] == [first["lease_id"]], "the next attempt did not revoke the stuck lease"
        assert deps.vault.lease_info(first["lease_id"]) is None, "the stuck attempt's lease is still alive"
    finally:
        marker.touch()
        os.environ.pop("LOCKGATE_TEST_PAUSE_AFTER_LEASE", None)
    assert await asyncio.wait_for(finish(handle), timeout=60) is None
    assert len(outside.refunds(handle.id)) == 1, "one refund, whatever the attempts"
    outside.assert_nothing_leaked()
