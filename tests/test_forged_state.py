"""A run's state as the workflow claims it is not what the gate decides on (SCENARIOS 20, 21).

A hostile workflow registered beside lockgate's (it passes the caller check) reuses the id of a run
that really refunded an order, and asks `tool.refunds.issue` again with a run state it wrote itself:
nothing spent, no chain, no steps. The deciding activity rebuilds the run's state from its ledger
(activities/runstate.py) and decides on the stricter of both: the chain policy that allows one
refund per order fires, and a step that already ran another call is refused as a conflict. Nothing
runs, nothing is leased."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import Client

from tests.conftest import Outside, finish, ledger_events, start


def _invocation(run_id: str, step: int, amount: int) -> dict[str, Any]:
    args = {"order_id": "A-1001", "amount_cents": amount}
    return {
        "run_id": run_id,
        "step": step,
        "tool": "refunds.issue",
        "idempotency_key": f"{run_id}:{step}",
        "gate": {
            "decision_id": f"{run_id}/{step}/99",
            "run_id": run_id,
            "agent": "refund-agent",
            "initiator": "erin",
            "step": step,
            "call": {"tool": "refunds.issue", "args": args},
            # The forger's claim: a run that has done nothing yet.
            "state": {"steps_taken": 0, "spent": 0, "tainted": False, "chain": {}},
        },
    }


async def _forge(client: Client, queue: str, run_id: str, inv: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await client.execute_workflow("tests.rogue", inv, id=run_id, task_queue=queue)
    return result


async def test_a_forged_empty_state_is_decided_on_the_ledgers_record(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    run_id = f"refund-agent-{uuid.uuid4().hex[:10]}"
    handle = await start(
        client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 500}, run_id=run_id
    )
    assert await finish(handle) is None
    assert [r[1] for r in outside.refunds(run_id)] == [500]
    leases = ledger_events(deps, run_id, "lease.issued")
    refund_step = next(e["step"] for e in ledger_events(deps, run_id, "tool.completed") if e["tool"] == "refunds.issue")

    # A later step, same order: the ledger's chain says this run refunded A-1001 already.
    again = await _forge(client, worker_running, run_id, _invocation(run_id, refund_step + 5, 500))
    assert again["ran"] is False, again
    assert again["decision"]["outcome"] == "deny" and "refunds.once-per-order" in again["decision"]["policy_ids"], again

    # The refund's own step with other args (what a reset history would re-plan): a conflict.
    rewritten = await _forge(client, worker_running, run_id, _invocation(run_id, refund_step, 900))
    assert rewritten["ran"] is False, rewritten
    assert rewritten["decision"]["gate"] == "state" and rewritten["decision"]["outcome"] == "deny", rewritten
    assert "already ran refunds.issue" in rewritten["decision"]["reasons"][0]

    # Recorded as decided (with the state the gate believed), nothing else happened.
    decided = {d["decision_id"]: d for d in ledger_events(deps, run_id, "decision")}
    believed = decided[f"{run_id}/{refund_step + 5}/99"]["state"]
    assert believed["spent"] == 500 and believed["steps_taken"] >= 2
    assert [r[1] for r in outside.refunds(run_id)] == [500]
    assert ledger_events(deps, run_id, "lease.issued") == leases  # the real run's leases only
    outside.assert_nothing_leaked()
