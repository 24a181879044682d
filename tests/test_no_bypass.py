"""No bypass: a tool activity started any other way than through its gate does not run."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from lockgate import errors
from lockgate.models import args_digest
from tests.conftest import Outside, finish, ledger_events


async def rogue(client: Client, task_queue: str, run_id: str, invocation: dict[str, Any]) -> BaseException | None:
    handle = await client.start_workflow("tests.rogue", invocation, id=run_id, task_queue=task_queue)
    return await finish(handle)


def invocation(args: dict[str, Any], grant: str, step: int = 1) -> dict[str, Any]:
    return {"step": step, "tool": "refunds.issue", "args": args, "decision_id": "forged",
            "grant": grant, "idempotency_key": f"rogue-{uuid.uuid4().hex}"}


async def test_raw_execute_activity_without_a_grant_is_refused(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    run_id = f"rogue-{uuid.uuid4().hex[:8]}"
    args = {"order_id": "A-1001", "amount_cents": 100}
    cause = await rogue(client, worker_running, run_id, invocation(args, grant="g1.e30.deadbeef"))
    assert isinstance(cause, ApplicationError) and cause.type == errors.GRANT_INVALID
    assert outside.refunds(run_id) == []
    assert ledger_events(deps, run_id, "lease.issued") == []
    assert len(ledger_events(deps, run_id, "grant.refused")) == 1
    outside.assert_nothing_leaked()


async def test_a_grant_binds_the_exact_args_and_run(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    run_id = f"rogue-{uuid.uuid4().hex[:8]}"
    allowed = {"order_id": "A-1001", "amount_cents": 100}
    # A grant genuinely signed for 1.00 on this run...
    grant = deps.signer.sign(run_id, 1, "refunds.issue", args_digest(allowed), "forged")
    # ...does not stretch to 99.00.
    cause = await rogue(client, worker_running, run_id,
                        invocation({"order_id": "A-1001", "amount_cents": 9900}, grant=grant))
    assert isinstance(cause, ApplicationError) and cause.type == errors.GRANT_INVALID
    # Nor does another run's grant work here.
    other = f"rogue-{uuid.uuid4().hex[:8]}"
    cause = await rogue(client, worker_running, other, invocation(allowed, grant=grant))
    assert isinstance(cause, ApplicationError) and cause.type == errors.GRANT_INVALID
    assert outside.refunds(run_id) == [] and outside.refunds(other) == []
    outside.assert_nothing_leaked()
