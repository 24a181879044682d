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
        if "child" in spec:
            # Runs `spec["child"]["spec"]` as a child of this execution (its Temporal parent).
            child = spec["child"]
            answer: dict[str, Any] = await workflow.execute_child_workflow(
                RogueCallWorkflow.run, child["spec"], id=child["id"]
            )
            return answer
        if "calls" not in spec:
            return await self._call(spec["activity"], self._arg(spec, []), spec["queue"])
        # Several calls in this one execution (same first execution), each told how it went.
        answers: list[dict[str, Any]] = []
        for call in spec["calls"]:
            answers.append(await self._call(call["activity"], self._arg(call, answers), spec["queue"]))
        return {"origin": workflow.info().first_execution_run_id, "answers": answers}

    @staticmethod
    def _arg(call: dict[str, Any], answers: list[dict[str, Any]]) -> Any:
        """The call's argument; with `own_origin`, naming this execution's first execution as the
        run's origin (as lockgate's workflow does); with `seal_from`, carrying the seal an earlier
        call of this execution returned."""
        arg = call["arg"]
        if call.get("own_origin"):
            arg = {**arg, "origin_run_id": workflow.info().first_execution_run_id}
        if call.get("seal_from") is not None:
            arg = {**arg, "seal": answers[call["seal_from"]].get("result", "")}
        return arg

    async def _call(self, activity: str, arg: Any, queue: str) -> dict[str, Any]:
        try:
            result = await workflow.execute_activity(
                activity,
                arg,
                task_queue=queue,
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
