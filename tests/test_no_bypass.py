"""No bypass: a tool activity started by any path — here a raw `execute_activity` by a workflow
author — runs its gate first, records the decision, and does nothing the gate does not allow."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from lockgate import errors
from tests.support.stack import Outside, finish, ledger_events


def invocation(run_id: str, args: dict[str, Any], *, gate_run: str | None = None, **state: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step": 1,
        "tool": "refunds.issue",
        "idempotency_key": f"{run_id}:1",
        "gate": {
            "decision_id": f"{run_id}/1/1",
            "run_id": gate_run or run_id,
            "agent": "refund-agent",
            "initiator": "rogue",
            "step": 1,
            "call": {"tool": "refunds.issue", "args": args},
            "state": state,
        },
    }


async def rogue(client: Client, task_queue: str, run_id: str, inv: dict[str, Any]) -> Any:
    handle = await client.start_workflow("tests.rogue", inv, id=run_id, task_queue=task_queue)
    try:
        return await handle.result()
    except Exception:  # noqa: BLE001
        return await finish(handle)


async def test_a_raw_activity_call_is_gated_like_any_other(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    over_cap = f"rogue-{uuid.uuid4().hex[:8]}"
    result = await rogue(
        client, worker_running, over_cap, invocation(over_cap, {"order_id": "A-1002", "amount_cents": 150000})
    )
    assert result["ran"] is False and result["decision"]["outcome"] == "deny"
    assert "refunds.hard-cap" in result["decision"]["policy_ids"]

    needs_approval = f"rogue-{uuid.uuid4().hex[:8]}"
    result = await rogue(
        client,
        worker_running,
        needs_approval,
        invocation(needs_approval, {"order_id": "A-1002", "amount_cents": 20000}),
    )
    assert result["ran"] is False and result["decision"]["outcome"] == "approval"

    for run_id in (over_cap, needs_approval):
        assert outside.refunds(run_id) == []
        assert ledger_events(deps, run_id, "lease.issued") == []
        assert [d["outcome"] for d in ledger_events(deps, run_id, "decision")] in (["deny"], ["approval"])
    outside.assert_nothing_leaked()


async def test_an_invocation_for_another_run_is_refused(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    run_id = f"rogue-{uuid.uuid4().hex[:8]}"
    cause = await rogue(
        client,
        worker_running,
        run_id,
        invocation(run_id, {"order_id": "A-1001", "amount_cents": 100}, gate_run="someone-else"),
    )
    assert isinstance(cause, ApplicationError) and cause.type == errors.BAD_INPUT
    assert outside.refunds(run_id) == [] and ledger_events(deps, run_id, "decision") == []
    assert len(ledger_events(deps, run_id, "tool.refused")) == 1
