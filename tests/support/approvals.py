"""Approvals as a person makes them, one bound field at a time: what the tests of the approval judge
(`approval.verify`, `halt.verify`, the deciding activity's own re-check) send."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from temporalio.client import Client, WorkflowHandle

from lockgate.identity import sign
from lockgate.models import ApprovalAttempt, ApprovalRequest, GateRequest, args_digest
from lockgate.people import Act, SignedStatement
from tests.support.stack import person

__all__ = ["approval_fields", "approval_for", "approval_judge", "recorded_request", "send_approval", "signed_as"]


async def signed_as(name: str, act: Act, fields: dict[str, Any], **kw: Any) -> SignedStatement:
    return await asyncio.to_thread(sign, person(name), act, fields, **kw)


async def approval_fields(client: Client, handle: WorkflowHandle[Any, Any], req: ApprovalRequest) -> dict[str, Any]:
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


async def send_approval(handle: WorkflowHandle[Any, Any], signed: SignedStatement) -> ApprovalAttempt:
    return await handle.execute_update("approve", signed, result_type=ApprovalAttempt, id=signed.statement.nonce)


async def recorded_request(deps: Any, run_id: str) -> GateRequest:
    """The gate request whose decision asked for approval, as the ledger recorded it."""
    for e in deps.ledger.entries(run_id):
        data = json.loads(e.data)
        if e.kind == "decision" and data.get("outcome") == "approval":
            return GateRequest.model_validate(data["request"])
    raise AssertionError("no approval decision recorded")


def approval_judge(deps: Any) -> Any:
    from lockgate.worker import build_approvals

    return build_approvals(deps)


async def approval_for(name: str, request: GateRequest, digest: str | None = None, **kw: Any) -> SignedStatement:
    return await signed_as(
        name,
        "approve",
        {
            "run_id": request.run_id,
            "decision_id": request.decision_id,
            "args_digest": digest or args_digest(request.call.args),
        },
        **kw,
    )
