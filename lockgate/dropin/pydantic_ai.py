"""Pydantic AI MCP toolsets under lockgate: the same pins, schemas and per-call credentials as a
lockgate agent's `MCPServer` tools.

On Temporal, a Pydantic AI `MCPToolset(..., id=NAME)` is three activities per agent:
`agent__<agent>__mcp_server__<NAME>__get_tools | get_instructions | call_tool`. When the app's
`Governance(mcp=(MCPServer(NAME, ...),))` declares that server, lockgate answers all three itself:

- `get_tools`: the pinned definitions of the declared tools that could ever be allowed (the task
  boundary, then Cedar, as `gates.offer`), never what the live server says: a description a person
  did not pin never reaches the model.
- `get_instructions`: nothing (a server's instructions are unpinned text for the model).
- `call_tool`: the governed call (gate, approval, credential, pin check, args checked against the
  pinned `inputSchema`, revoke, ledger) made by `lockgate.mcp.client` with that call's own token,
  never with whatever the app's toolset was configured with; the result goes back to the model as
  Pydantic AI maps any MCP result.

A model request (`agent__<agent>__model_request`) is egress too: when it carries results of
regulated tools, they reach the model only as each tool declares (`model_sees`) unless a policy
approves the endpoint (`gates.egress`; the endpoint is the request's model id, else the app's
`Governance(model_endpoint=...)`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.offer import offered
from lockgate.mcp import pins
from lockgate.mcp.spec import MCPServer, tool_slug
from lockgate.spec import Agent

__all__ = [
    "MCP_ACTIVITY",
    "MODEL_ACTIVITY",
    "call_result",
    "lockgate_tool",
    "mcp_activity",
    "model_activity",
    "offered_tools",
    "pinned_offers",
    "redacted",
    "regulated_returns",
    "regulated_views",
]

MCP_ACTIVITY = re.compile(
    r"^agent__(?P<agent>.+?)__mcp_server__(?P<server>.+)__(?P<op>call_tool|get_tools|get_instructions)$"
)


def mcp_activity(activity_type: str) -> tuple[str, str, str] | None:
    """(framework agent name, toolset id, operation) of a Pydantic AI MCP toolset activity."""
    match = MCP_ACTIVITY.match(activity_type)
    return (match["agent"], match["server"], match["op"]) if match else None


def lockgate_tool(server: MCPServer, mcp_name: str) -> str:
    """The lockgate tool (Cedar action) a model's call of `mcp_name` on `server` is gated as. A tool
    the declaration does not name gets a name outside the boundary (denied by the boundary gate)."""
    if mcp_name in server.tools:
        return server.tool_name(mcp_name)
    return f"{server.name}.undeclared-{tool_slug(mcp_name)}"


def offered_tools(
    server: MCPServer, agent: Agent, bundle: PolicyBundle, policy_dir: str | None, boundary: Iterable[str]
) -> dict[str, Any]:
    """What `get_tools` answers: MCP name -> Pydantic AI `ToolDefinition`, from the pin."""
    from pydantic_ai.tools import ToolDefinition

    return {
        offer["name"]: ToolDefinition(
            name=offer["name"],
            description=offer["description"],
            parameters_json_schema=offer["inputSchema"],
            # Annotations stay out: they are the server's untrusted hints. `task` False: one plain call.
            metadata={"task": False, "lockgate_pin": offer["digest"]},
        )
        for offer in pinned_offers(server, agent, bundle, policy_dir, boundary)
    }


def pinned_offers(
    server: MCPServer, agent: Agent, bundle: PolicyBundle, policy_dir: str | None, boundary: Iterable[str]
) -> list[dict[str, Any]]:
    """The pinned definitions (name, description, inputSchema, digest) of the declared tools of
    `server` that `agent` could ever be allowed to call: what any framework's tool listing offers."""
    pin = pins.load_pin(policy_dir, server.name) or {}
    inside = set(boundary)
    allowed = set(
        offered(bundle, agent.name, [server.tool_name(n) for n in server.tools if server.tool_name(n) in inside])
    )
    out: list[dict[str, Any]] = []
    for mcp_name, opts in server.tools.items():
        entry = pin.get("tools", {}).get(mcp_name)
        if server.tool_name(mcp_name) not in allowed or not isinstance(entry, dict):
            continue
        definition = entry.get("definition")
        if not isinstance(definition, dict) or pins.digest(definition) != entry.get("digest"):
            continue  # a pin file edited by hand is not what a person approved
        out.append(
            {
                "name": mcp_name,
                "description": (opts.description if opts else None) or definition.get("description"),
                "inputSchema": definition.get("inputSchema") or {"type": "object", "properties": {}},
                "digest": entry.get("digest"),
            }
        )
    return out


def _mapped(out: dict[str, Any]) -> Any:
    """lockgate's MCP result as Pydantic AI hands an MCP result to the model."""
    try:
        from fastmcp.client.client import CallToolResult
        from mcp import types as mcp_types
        from pydantic_ai.mcp import _map_mcp_call_tool_result  # pyright: ignore[reportPrivateUsage]
    except ImportError:  # another Pydantic AI generation: structured content, else the text
        return out.get("structured") if out.get("structured") is not None else out.get("summary", "")
    parsed = mcp_types.CallToolResult.model_validate({"content": out.get("content", []), "isError": False})
    result = CallToolResult(content=parsed.content, structured_content=out.get("structured"), meta=None)
    return _map_mcp_call_tool_result(result)


async def call_result(out: dict[str, Any]) -> Any:
    """The `call_tool` activity's result (Pydantic AI's recorded `CallToolResult`) of a governed call."""
    from pydantic_ai.durable_exec._toolset import wrap_tool_call_result  # pyright: ignore[reportPrivateUsage]

    value = _mapped(out)

    async def returned() -> Any:
        return value

    return await wrap_tool_call_result(returned())


# -- model requests are egress ------------------------------------------------------------------------
MODEL_ACTIVITY = re.compile(r"^agent__(?P<agent>.+?)__model_request(?:_stream)?$")


def model_activity(activity_type: str) -> str | None:
    """The framework agent name of a Pydantic AI model-request activity, or None."""
    match = MODEL_ACTIVITY.match(activity_type)
    return match["agent"] if match else None


def regulated_views(agent: Agent, servers: Iterable[MCPServer]) -> dict[str, tuple[str, ...]]:
    """Tool name as the model knows it -> the result fields a model may still see, for every
    regulated tool of `agent` (its declared tools, and its MCP toolsets' tools by MCP name)."""
    out: dict[str, tuple[str, ...]] = {}
    for server in servers:
        for mcp_name in server.tools:
            spec = agent.tool(server.tool_name(mcp_name))
            if spec is not None and spec.data_class == "regulated":
                out[mcp_name] = spec.model_sees
    for spec in agent.tools:
        if spec.data_class == "regulated" and spec.mcp_server is None:
            out[spec.name] = spec.model_sees
    return out


def regulated_returns(params: Any, views: dict[str, tuple[str, ...]]) -> list[str]:
    """The tool call ids of the regulated results a model request would carry."""
    from pydantic_ai.messages import ModelRequest, ToolReturnPart

    return [
        part.tool_call_id
        for message in getattr(params, "messages", [])
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart) and part.tool_name in views
    ]


def redacted(params: Any, views: dict[str, tuple[str, ...]]) -> Any:
    """The request's params with each regulated result as its tool declares a model may see it."""
    import dataclasses

    from pydantic_ai.messages import ModelRequest, ToolReturnPart

    from lockgate.gates.egress import model_view

    messages = []
    for message in params.messages:
        if isinstance(message, ModelRequest):
            parts = [
                dataclasses.replace(part, content=model_view(part.content, views[part.tool_name]))
                if isinstance(part, ToolReturnPart) and part.tool_name in views
                else part
                for part in message.parts
            ]
            messages.append(dataclasses.replace(message, parts=parts))
        else:
            messages.append(message)
    return dataclasses.replace(params, messages=messages)
