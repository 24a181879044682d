"""The worker interceptor that governs an existing app's tool calls (installed by `LockgatePlugin`).

Workflow side (`start_activity`): a Pydantic AI tool activity (`agent__{agent}__toolset__{id}__call_tool`
and the MCP / dynamic-toolset variants), a governed plain activity, or the activity of an OpenAI
Agents `activity_as_tool` call is held until `RunGovernor.call` has gated it (and waited for its
approval); the activity then starts with the call's gate request in a header. Activity side
(`execute_activity`): every attempt of a governed activity is gated again, leased, run with the
secret in `current_secret()`, revoked and recorded (`DropinActivities.execute`). Plain OpenAI
function tools never become activities: `lockgate.dropin.openai_agents` governs them in the runner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import weakref
from collections.abc import Sequence
from typing import Any

from temporalio import activity, workflow
from temporalio.converter import default as default_converter
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from lockgate import names
from lockgate.dropin.activity import DropinActivities, bind_named
from lockgate.dropin.governor import Denied, RunGovernor
from lockgate.dropin.models import HEADER, DropinCall, jsonable, plain_args
from lockgate.dropin.openai_agents import (
    install_runner,
    mcp_call_result,
    mcp_denied_result,
    mcp_list_result,
    openai_mcp_activity,
    take_pending_call,
)
from lockgate.dropin.pydantic_ai import lockgate_tool, mcp_activity, model_activity
from lockgate.dropin.spec import Governance
from lockgate.dropin.start import start_digest, start_from_headers
from lockgate.errors import BAD_INPUT
from lockgate.mcp.spec import MCPServer
from lockgate.spec import Agent

__all__ = ["DropinIndex", "DropinInterceptor", "governor_of"]

_PYDANTIC_AI_TOOL = re.compile(
    r"^agent__(?P<agent>.+?)__(?P<kind>toolset|mcp_server|dynamic_toolset)__(?P<toolset>.+)__call_tool$"
)
_OWN_WORKFLOWS = frozenset({names.WORKFLOW_AGENT})

# The governor of each running execution, for code that is not handed the interceptor (the OpenAI
# runner). Weak: an evicted workflow's governor goes with it.
_GOVERNORS: weakref.WeakValueDictionary[str, RunGovernor] = weakref.WeakValueDictionary()


def governor_of() -> RunGovernor | None:
    """The governor of the workflow execution running now (None outside one, or ungoverned)."""
    if not workflow.in_workflow():
        return None
    return _GOVERNORS.get(workflow.info().run_id)


class DropinIndex:
    """Who is who across a worker's `Governance` declarations."""

    def __init__(self, governances: Sequence[Governance]) -> None:
        self.governances = tuple(governances)
        self._agents: dict[str, Agent] = {}
        self._activities: dict[str, Agent] = {}
        self._mcp: dict[str, MCPServer] = {}
        for gov in self.governances:
            for server in gov.mcp:
                if self._mcp.setdefault(server.name, server) != server:
                    raise ValueError(f"MCP server {server.name!r} is declared twice, differently")
            for name in gov.agents:
                agent = gov.agent(name)
                assert agent is not None
                if name in self._agents and self._agents[name] != agent:
                    raise ValueError(f"agent {name!r} is governed by two different declarations")
                self._agents[name] = agent
            for tool in gov.tools:
                self._activities.setdefault(tool, gov.default_agent)

    def agent(self, framework_name: str) -> Agent | None:
        return self._agents.get(framework_name)

    def mcp_server(self, toolset_id: str) -> MCPServer | None:
        """The declared MCP server of a Pydantic AI MCP toolset id (None: not governed as MCP)."""
        return self._mcp.get(toolset_id)

    def mcp_servers(self) -> list[MCPServer]:
        return list(self._mcp.values())

    def mcp_agent(self, server_name: str) -> Agent | None:
        """The agent an OpenAI Agents MCP server's calls are governed as: the first agent of the
        declaration naming that server (its activities do not say which agent calls)."""
        gov = next((g for g in self.governances if any(s.name == server_name for s in g.mcp)), None)
        return gov.default_agent if gov is not None else None

    def model_endpoint(self, framework_name: str) -> str:
        """The declared model endpoint of a framework agent (its `Governance(model_endpoint=...)`)."""
        return next((g.model_endpoint for g in self.governances if framework_name in g.agents), "default")

    def tool_of(self, kind: str, toolset_id: str, name: str) -> str:
        """The lockgate tool a Pydantic AI tool call is gated as: `<server>.<tool>` for a declared
        MCP server's toolset, else the tool's own name."""
        server = self._mcp.get(toolset_id) if kind == "mcp_server" else None
        return lockgate_tool(server, name) if server is not None else name

    def activity_agent(self, activity_type: str) -> Agent | None:
        """The agent a plain activity of this type is governed as (its declaration's first agent)."""
        return self._activities.get(activity_type)

    def governs(self, activity_type: str) -> bool:
        """Whether an activity of this type is a governed tool (it then serves only governed runs)."""
        match = _PYDANTIC_AI_TOOL.match(activity_type)
        if match is not None:
            return self.agent(match["agent"]) is not None
        openai_mcp = openai_mcp_activity(activity_type)
        if openai_mcp is not None and self.mcp_agent(openai_mcp[0]) is not None:
            return True
        return self.activity_agent(activity_type) is not None

    def summarize(self, tool: str, result: Any) -> str:
        """What the ledger records of one result of `tool`: as its `Govern(summary=...)` declares."""
        meta = next((g.tools[tool] for g in self.governances if tool in g.tools), None)
        value = tool_value(result)
        return meta.summarize(value) if meta is not None else f"returned {type(value).__name__}"

    def denials(self) -> dict[str, Any]:
        return {tool: meta.on_deny for gov in self.governances for tool, meta in gov.tools.items()}

    def agents(self) -> list[Agent]:
        return list({a.name: a for a in self._agents.values()}.values())


def _header_payload(call: DropinCall) -> Any:
    return default_converter().payload_converter.to_payloads([call.model_dump(mode="json")])[0]


def _header_call(payload: Any) -> DropinCall:
    data = default_converter().payload_converter.from_payloads([payload])[0]
    return DropinCall.model_validate(data)


def _with_header(input: StartActivityInput, call: DropinCall) -> StartActivityInput:
    return dataclasses.replace(input, headers={**input.headers, HEADER: _header_payload(call)})


# Pydantic AI's tool activities return the tool's value wrapped for the wire (`_ToolReturn(result=...)`
# and its variants, in `pydantic_ai.durable_exec._toolset`); a `ToolReturn` holds it in `return_value`.
_WIRE_RESULT_KINDS = ("tool_return", "tool_content_result", "tool_return_with_raw_content")


def tool_value(result: Any) -> Any:
    """The tool's own return value inside a framework's wire wrapper: what `Govern(summary=...)`
    chooses from (a field list would otherwise find none of the tool's fields)."""
    if getattr(result, "kind", None) in _WIRE_RESULT_KINDS and hasattr(result, "result"):
        result = result.result
    if type(result).__name__ in ("ToolReturn", "_ToolReturnWithRawContentResult") and hasattr(result, "return_value"):
        result = result.return_value
    return result


def deny_in_framework(denied: Denied, *, to_model: Any = None) -> Any:
    """What a denial does: fail the run, or (`on_deny="retry"` where a model can re-plan) hand the
    denial back to the model as a tool error (`to_model(message)`)."""
    if denied.on_deny == "retry" and to_model is not None:
        return to_model(f"lockgate: {denied}")
    raise ApplicationError(str(denied), type=denied.kind, non_retryable=True)


def _pydantic_ai_tool_failed(message: str) -> Any:
    from pydantic_ai.exceptions import ToolFailed

    raise ToolFailed(message)


class _Outbound(WorkflowOutboundInterceptor):
    def __init__(self, next: WorkflowOutboundInterceptor, root: _Inbound) -> None:
        super().__init__(next)
        self._root = root

    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        governor = self._root.governor
        if governor is None:
            return self.next.start_activity(input)
        pending = take_pending_call(input.activity)
        if pending is not None:
            # The activity of an OpenAI `activity_as_tool` call its runner has already gated.
            return self.next.start_activity(_with_header(input, pending))
        index = self._root.index
        match = _PYDANTIC_AI_TOOL.match(input.activity)
        if match is not None and input.args:
            agent = index.agent(match["agent"])
            if agent is None:
                return self.next.start_activity(input)
            params = input.args[0]
            tool = index.tool_of(match["kind"], match["toolset"], str(params.name))
            args = jsonable(params.tool_args)
            return self._govern(governor, agent, tool, args, input, "tool_args", _pydantic_ai_tool_failed)
        openai_mcp = openai_mcp_activity(input.activity)
        if openai_mcp is not None and openai_mcp[1] == "call-tool" and input.args:
            server, agent = index.mcp_server(openai_mcp[0]), index.mcp_agent(openai_mcp[0])
            if server is not None and agent is not None:
                request = input.args[0] if isinstance(input.args[0], dict) else {}
                tool = lockgate_tool(server, str(request.get("name")))
                args = jsonable(request.get("arguments") or {})
                return self._govern(governor, agent, tool, args, input, "tool_args", mcp_denied_result)
        agent = index.activity_agent(input.activity)
        if agent is not None:
            return self._govern(governor, agent, input.activity, plain_args(input.args), input, "single", None)
        return self.next.start_activity(input)

    def _govern(
        self,
        governor: RunGovernor,
        agent: Agent,
        tool: str,
        args: dict[str, Any],
        input: StartActivityInput,
        binding: str,
        to_model: Any,
    ) -> workflow.ActivityHandle[Any]:
        index = self._root.index

        async def governed() -> Any:
            try:
                return await governor.call(
                    agent,
                    tool,
                    args,
                    lambda header: self.next.start_activity(_with_header(input, header)),
                    binding=binding,
                    activity=True,
                    summarize=lambda result: index.summarize(tool, result),
                )
            except Denied as denied:
                return deny_in_framework(denied, to_model=to_model)

        # Callers only await the handle: a task that gates first and then starts the activity
        # stands in for it (the activity is scheduled only once the gate allowed the call).
        return asyncio.get_running_loop().create_task(governed())  # type: ignore[return-value]


class _Inbound(WorkflowInboundInterceptor):
    index: DropinIndex  # set on the subclass the interceptor makes

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        self.governor: RunGovernor | None = None
        super().init(_Outbound(outbound, self))

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        if workflow.info().workflow_type in _OWN_WORKFLOWS:
            return await super().execute_workflow(input)
        # The start the app's client signed, and the digest of the arguments it must bind.
        governor = RunGovernor(start_from_headers(input.headers), start_digest(input.args))
        self.governor = governor
        governor.index = self.index
        _GOVERNORS[workflow.info().run_id] = governor
        governor.install_handlers()
        install_runner(self.index)
        # The app's workflow code runs as a task, so that a verified `halt` can cancel it (the run
        # then compensates and closes here, like a lockgate agent run).
        app = asyncio.ensure_future(super().execute_workflow(input))
        governor.on_halt = app.cancel
        try:
            result = await app
        except BaseException as err:
            # Only what fails (or halts) the run compensates: an exception that fails a workflow
            # *task* is retried by Temporal and must leave no commands behind.
            if governor.opened and (isinstance(err, asyncio.CancelledError) or workflow.is_failure_exception(err)):
                await governor.close(err)
            raise
        if governor.opened:
            await governor.close(None)
        return result


class _ActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, index: DropinIndex, acts: DropinActivities) -> None:
        super().__init__(next)
        self._index = index
        self._acts = acts

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        if model_activity(info.activity_type) is not None and input.args:
            input = await self._model_egress(input)
        mcp = mcp_activity(info.activity_type)
        server = self._index.mcp_server(mcp[1]) if mcp is not None else None
        agent = self._index.agent(mcp[0]) if mcp is not None else None
        if mcp is not None and server is not None and agent is not None and mcp[2] != "call_tool":
            # A governed MCP server's listing comes from its pin; its instructions never reach the model.
            return self._acts.mcp_tools(server, agent) if mcp[2] == "get_tools" else None
        openai_mcp = openai_mcp_activity(info.activity_type)
        if openai_mcp is not None and self._index.mcp_server(openai_mcp[0]) is not None:
            return await self._openai_mcp(openai_mcp[0], openai_mcp[1], input)
        payload = input.headers.get(HEADER)
        tool, actual = self._target(info.activity_type, input)
        if tool is None and payload is None:
            return await self.next.execute_activity(input)
        if payload is None:
            # A governed tool's activity scheduled without its gate (another workflow, a worker
            # without the plugin): never run it.
            raise ApplicationError(
                f"{tool}: a governed tool runs only when scheduled by a governed workflow",
                type=BAD_INPUT,
                non_retryable=True,
            )
        call = _header_call(payload)
        if call.mode == "legacy":
            return await self._acts.legacy(tool or info.activity_type, lambda: self.next.execute_activity(input))
        request = call.request
        if request is not None and call.binding == "named":
            # An OpenAI `activity_as_tool` call: the model's named args, bound to the activity's parameters.
            tool = request.call.tool
            actual = bind_named(input.fn, input.args, set(request.call.args))
        if server is not None and agent is not None and tool is not None and actual is not None:
            # lockgate makes the MCP call itself, with this call's own credential and the pin check.
            mcp_call = tool, actual
            return await self._acts.execute(call, tool, actual, lambda: self._acts.mcp_call(*mcp_call))
        return await self._acts.execute(
            call, tool or info.activity_type, actual, lambda: self.next.execute_activity(input)
        )

    async def _openai_mcp(self, name: str, op: str, input: ExecuteActivityInput) -> Any:
        """An OpenAI Agents MCP server's activity, for a declared server: lockgate answers it."""
        server, agent = self._index.mcp_server(name), self._index.mcp_agent(name)
        assert server is not None and agent is not None
        if op == "list-tools":
            return mcp_list_result(self._acts.mcp_offers(server, agent))
        request = input.args[0] if input.args and isinstance(input.args[0], dict) else {}
        tool = lockgate_tool(server, str(request.get("name")))
        payload = input.headers.get(HEADER)
        if op != "call-tool" or payload is None:
            # Prompts and resources are unpinned text for the model; a call without its gate (another
            # workflow, a worker without the plugin) never runs.
            why = "a governed tool runs only when scheduled by a governed workflow" if op == "call-tool" else ""
            raise ApplicationError(
                f"{tool}: {why}" if why else f"{name}: {op} of a governed MCP server is not served (unpinned)",
                type=BAD_INPUT,
                non_retryable=True,
            )
        actual = jsonable(request.get("arguments") or {})
        return await self._acts.execute(
            _header_call(payload), tool, actual, lambda: self._acts.mcp_call(tool, actual, mcp_call_result)
        )

    async def _model_egress(self, input: ExecuteActivityInput) -> ExecuteActivityInput:
        """A governed agent's model request carrying regulated results: gated as egress."""
        from lockgate.dropin.pydantic_ai import redacted, regulated_returns, regulated_views

        name = model_activity(activity.info().activity_type) or ""
        agent = self._index.agent(name)
        if agent is None:
            return input
        params = input.args[0]
        views = regulated_views(agent, self._index.mcp_servers())
        carried = regulated_returns(params, views)
        if not carried:
            return input
        endpoint = str(getattr(params, "model_id", None) or self._index.model_endpoint(name))
        if await self._acts.model_egress(agent, endpoint, carried):
            return input
        return dataclasses.replace(input, args=[redacted(params, views), *input.args[1:]])

    def _target(self, activity_type: str, input: ExecuteActivityInput) -> tuple[str | None, dict[str, Any] | None]:
        match = _PYDANTIC_AI_TOOL.match(activity_type)
        if match is not None and input.args:
            if self._index.agent(match["agent"]) is None:
                return None, None
            params = input.args[0]
            return self._index.tool_of(match["kind"], match["toolset"], str(params.name)), jsonable(params.tool_args)
        if self._index.activity_agent(activity_type) is not None:
            return activity_type, plain_args(input.args)
        return None, None


class DropinInterceptor(Interceptor):
    """Governs the declared tools of existing apps on this worker."""

    def __init__(self, index: DropinIndex, acts: DropinActivities) -> None:
        self._index = index
        self._acts = acts
        self._inbound = type("_GovernedInbound", (_Inbound,), {"index": index})

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next, self._index, self._acts)

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        return self._inbound
