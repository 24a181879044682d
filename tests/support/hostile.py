"""What hostile callers send, and how a refusal must look: a raw start as any client with Temporal
access can send it, and the answer of an activity called by hostile workflow code (RogueCallWorkflow)."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

from lockgate import errors
from lockgate.models import RunInput
from tests.support.stack import finish

__all__ = ["REFUSED_AT_ONCE", "raw_start", "refund", "refused_at_once", "refused_by_activity"]

# Temporal's retry state of an activity failure it was told never to retry.
REFUSED_AT_ONCE = "NON_RETRYABLE_FAILURE"


def refund(order: str = "A-1001", cents: int = 500) -> dict[str, Any]:
    return {"order_id": order, "amount_cents": cents, "reason": "hostile test"}


async def raw_start(client: Client, queue: str, inp: RunInput, run_id: str) -> Any:
    """What a client with Temporal access can send: any input, any id, any reuse policy."""
    return await client.start_workflow(
        "lockgate.agent", inp, id=run_id, task_queue=queue, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE
    )


async def refused_at_once(handle: Any, needle: str) -> None:
    cause = await asyncio.wait_for(finish(handle), timeout=30)
    assert isinstance(cause, ApplicationError) and cause.type == errors.BAD_INPUT, cause
    assert needle in cause.message, cause.message


def refused_by_activity(answer: dict[str, Any], needle: str) -> None:
    assert answer["ok"] is False, answer
    assert needle in answer["message"], answer
    assert answer["type"] == "BadInput" and answer["retry_state"] == REFUSED_AT_ONCE, answer
