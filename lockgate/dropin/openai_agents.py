"""OpenAI Agents SDK tools under lockgate: plain function tools and `activity_as_tool` tools alike.

In Temporal's OpenAI Agents integration only `activity_as_tool` tools are activities; a plain
`@function_tool` runs in workflow code. So lockgate governs every `FunctionTool` at the runner: a
runner wrapped around the integration's own (installed once per process, delegating outside
governed workflows) hands the run a copy of the agent graph whose tools gate each call with the
run's `RunGovernor` (Cedar principal: the calling agent's name) before invoking the original tool.
When that original is an `activity_as_tool`, the activity it starts carries the gated request, and
the activity side leases and injects its secret (`lockgate.dropin.interceptor`).

An OpenAI Agents MCP server on Temporal (`workflow.temporal_mcp_server(NAME)` with
`OpenAIAgentsPlugin(mcp_servers={NAME: factory})`) is activities `temporalio.mcp.<NAME>.<op>`. When
the app's `Governance(mcp=(MCPServer(NAME, ...),))` declares that server, lockgate answers them itself,
as for a Pydantic AI MCP toolset: `list-tools` from the pin, `call-tool` gated in the workflow and
made by `lockgate.mcp.client` with that call's own token (the app's factory never gets one), and
prompts and resources (unpinned text for the model) refused.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import re
import sys
from typing import TYPE_CHECKING, Any

from lockgate.dropin.governor import Denied
from lockgate.dropin.models import DropinCall, jsonable

if TYPE_CHECKING:
    from lockgate.dropin.interceptor import DropinIndex

__all__ = [
    "OPENAI_MCP_ACTIVITY",
    "install_runner",
    "mcp_call_result",
    "mcp_denied_result",
    "mcp_list_result",
    "openai_mcp_activity",
    "take_pending_call",
]

OPENAI_MCP_ACTIVITY = re.compile(r"^temporalio\.mcp\.(?P<server>.+)\.(?P<op>[a-z-]+)$")


def openai_mcp_activity(activity_type: str) -> tuple[str, str] | None:
    """(server name, operation) of an OpenAI Agents (temporalio-mcp) MCP server activity."""
    match = OPENAI_MCP_ACTIVITY.match(activity_type)
    return (match["server"], match["op"]) if match else None


def mcp_list_result(offers: list[dict[str, Any]]) -> dict[str, Any]:
    """The `list-tools` activity's result (an MCP `ListToolsResult`) of the pinned offers. Annotations
    stay out: they are the server's untrusted hints."""
    tools = [{"name": o["name"], "description": o["description"], "inputSchema": o["inputSchema"]} for o in offers]
    return {"tools": tools}


def mcp_call_result(out: dict[str, Any]) -> dict[str, Any]:
    """The `call-tool` activity's result (an MCP `CallToolResult`) of a governed call."""
    result: dict[str, Any] = {"content": out.get("content", []), "isError": False}
    if out.get("structured") is not None:
        result["structuredContent"] = out["structured"]
    return result


def mcp_denied_result(message: str) -> dict[str, Any]:
    """A denial handed back to the model (`on_deny="retry"`) as an MCP tool error."""
    return {"content": [{"type": "text", "text": message}], "isError": True}


_GOVERNED = "__lockgate_governed__"

# The gated call whose activity (an `activity_as_tool`) the current task is about to start.
_PENDING: contextvars.ContextVar[tuple[str, DropinCall] | None] = contextvars.ContextVar(
    "lockgate_openai_pending", default=None
)


def take_pending_call(activity_type: str) -> DropinCall | None:
    """The gated call for the activity being started, once (None when this start is not one)."""
    pending = _PENDING.get()
    if pending is None or pending[0] != activity_type:
        return None
    _PENDING.set(None)
    return pending[1]


def install_runner(index: DropinIndex) -> None:
    """Wraps the process's default agent runner (the Temporal one) once; a no-op without the SDK."""
    # Only where the SDK is in use (its plugin loaded it in the worker's process); looked up, never
    # imported from workflow code.
    run_module = sys.modules.get("agents.run")
    if run_module is None:
        return
    get_default_agent_runner, set_default_agent_runner = (
        run_module.get_default_agent_runner,
        run_module.set_default_agent_runner,
    )
    current = get_default_agent_runner()
    if isinstance(current, _GovernedRunner):
        current.index = index
        return
    set_default_agent_runner(_GovernedRunner(current, index))  # type: ignore[arg-type]


class _GovernedRunner:
    """An `AgentRunner` that governs the tools of every agent a governed workflow runs."""

    def __init__(self, inner: Any, index: DropinIndex) -> None:
        self.inner = inner
        self.index = index

    def _govern(self, agent: Any) -> Any:
        from lockgate.dropin.interceptor import governor_of

        governor = governor_of()
        if governor is None:
            return agent
        # The runner is one per process, but workers (and a replayer's workflows) in one process
        # may each declare other apps: the execution's own declarations decide, never whichever
        # worker installed the runner last.
        return _governed_agent(agent, governor.index or self.index, {})

    async def run(self, starting_agent: Any, input: Any, **kwargs: Any) -> Any:
        return await self.inner.run(self._govern(starting_agent), input, **kwargs)

    def run_sync(self, starting_agent: Any, input: Any, **kwargs: Any) -> Any:
        return self.inner.run_sync(starting_agent, input, **kwargs)

    def run_streamed(self, starting_agent: Any, input: Any, **kwargs: Any) -> Any:
        return self.inner.run_streamed(self._govern(starting_agent), input, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _governed_agent(agent: Any, index: DropinIndex, seen: dict[int, Any]) -> Any:
    """A copy of `agent` (and of every agent it hands off to) whose function tools are governed."""
    sdk = sys.modules["agents"]
    Agent, FunctionTool, Handoff = sdk.Agent, sdk.FunctionTool, sdk.Handoff

    if getattr(agent, _GOVERNED, False):
        return agent
    if id(agent) in seen:
        return seen[id(agent)]
    lockgate_agent = index.agent(agent.name)
    tools = [
        _governed_tool(t, agent.name, index) if isinstance(t, FunctionTool) and lockgate_agent is not None else t
        for t in agent.tools
    ]
    copy = dataclasses.replace(agent, tools=tools)
    seen[id(agent)] = copy
    handoffs: list[Any] = []
    for item in agent.handoffs:
        if isinstance(item, Agent):
            handoffs.append(_governed_agent(item, index, seen))
        elif isinstance(item, Handoff):
            original = item.on_invoke_handoff

            async def on_invoke(context: Any, args: str, invoke: Any = original) -> Any:
                return _governed_agent(await invoke(context, args), index, seen)

            handoffs.append(dataclasses.replace(item, on_invoke_handoff=on_invoke))
        else:
            handoffs.append(item)
    copy.handoffs = handoffs
    setattr(copy, _GOVERNED, True)
    return copy


def _governed_tool(tool: Any, agent_name: str, index: DropinIndex) -> Any:
    original = tool.on_invoke_tool
    name = tool.name

    async def invoke(ctx: Any, input: str) -> Any:
        from lockgate.dropin.interceptor import deny_in_framework, governor_of

        governor = governor_of()
        agent = index.agent(agent_name)
        if governor is None or agent is None:
            return await original(ctx, input)
        try:
            args = jsonable(json.loads(input or "{}"))
        except json.JSONDecodeError:
            args = {"input": input}
        if not isinstance(args, dict):
            args = {"input": args}

        # A function tool's own invoker turns the tool's exception into a message for the model; the
        # governed call runs the tool itself, so a raised tool is recorded as failed, and the
        # model still gets the SDK's message.
        activity_tool = _is_activity_tool(tool)
        raw = None if activity_tool else getattr(original, "_invoke_tool_impl", None)

        async def run(header: DropinCall) -> Any:
            # If this tool is an `activity_as_tool`, the activity it starts takes this header.
            token = _PENDING.set((name, header.model_copy(update={"binding": "named"})))
            try:
                return await (raw or original)(ctx, input)
            finally:
                _PENDING.reset(token)

        try:
            return await governor.call(
                agent,
                name,
                args,
                run,
                binding="named",
                activity=activity_tool,
                summarize=lambda result: index.summarize(name, result),
            )
        except Denied as denied:
            return deny_in_framework(denied, to_model=lambda message: message)
        except Exception as err:
            if raw is None:
                raise
            from agents.tool import maybe_invoke_function_tool_failure_error_function

            message = await maybe_invoke_function_tool_failure_error_function(
                function_tool=tool, context=ctx, error=err
            )
            if message is None:
                raise
            return message

    return dataclasses.replace(tool, on_invoke_tool=invoke)


def _is_activity_tool(tool: Any) -> bool:
    """Whether the tool runs as an activity (whose attempt records its own completion):
    `activity_as_tool` builds its invoker in temporalio's OpenAI Agents workflow module."""
    module = getattr(tool.on_invoke_tool, "__module__", "") or ""
    return module.startswith(("temporalio.openai_agents", "temporalio.contrib.openai_agents"))
