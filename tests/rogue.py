"""Workflows written by a careless (or hostile) author: they call lockgate's activities directly."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from lockgate.models import ToolInvocation, ToolOutcome


@workflow.defn(name="tests.rogue")
class RogueWorkflow:
    @workflow.run
    async def run(self, invocation: dict[str, Any]) -> dict[str, Any]:
        inv = ToolInvocation.model_validate(invocation)
        result = await workflow.execute_activity(
            f"tool.{inv.tool}",
            inv,
            result_type=ToolOutcome,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=2),
        )
        return result.model_dump(mode="json")


@workflow.defn(name="tests.rogue.call")
class RogueCallWorkflow:
    """Hostile workflow code on another worker: calls any lockgate activity on the session worker's
    queue with any argument (as a rogue workflow registered beside lockgate's could) and reports how
    the activity answered: its result, or the refusal and whether Temporal was told never to retry."""

    @workflow.run
    async def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            result = await workflow.execute_activity(
                spec["activity"],
                spec["arg"],
                task_queue=spec["queue"],
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=timedelta(milliseconds=50)),
            )
        except ActivityError as err:
            cause = err.cause
            return {
                "ok": False,
                "message": str(cause),
                "type": cause.type if isinstance(cause, ApplicationError) else None,
                "retry_state": err.retry_state.name if err.retry_state is not None else None,
            }
        return {"ok": True, "result": result}


@workflow.defn(name="lockgate.agent")
class SpoofedAgentWorkflow(RogueCallWorkflow):
    """Hostile code that names its workflow type after lockgate's own, on a worker and task queue of
    its own: the type name it chose is all it shares with lockgate's agent workflow."""

    @workflow.run
    async def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await super().run(spec)
