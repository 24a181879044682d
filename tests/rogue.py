"""A workflow written by a careless (or hostile) author: it calls a tool activity directly."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

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
