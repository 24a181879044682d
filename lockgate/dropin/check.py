"""Checks a `Governance` against the framework's agents at worker start: a tool named in `tools`
that no agent has (a typo) would otherwise surface only at run time, as "outside the task boundary".

The framework's tools are found where the worker and the app declare them: the worker's activities
(plain activities, OpenAI `activity_as_tool`, Pydantic AI's tool activities), Pydantic AI agents
(given to `AgentPlugin`, or defined in the module that declares the `Governance`), and OpenAI Agents
`FunctionTool`s and `Agent`s defined there. Frameworks are only looked at when already imported.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from typing import Any

from lockgate.dropin.spec import Governance
from lockgate.errors import UserError

__all__ = ["check_mcp_servers", "check_tool_names", "framework_tool_names"]


def _pydantic_ai_tools(obj: Any) -> set[str] | None:
    module = sys.modules.get("pydantic_ai")
    agent_type = getattr(module, "Agent", None) if module is not None else None
    if agent_type is None or not isinstance(obj, agent_type):
        return None
    toolset = getattr(obj, "_function_toolset", None)
    return set(getattr(toolset, "tools", {}) or {})


def _openai_tools(obj: Any) -> set[str] | None:
    module = sys.modules.get("agents")
    if module is None:
        return None
    if isinstance(obj, getattr(module, "FunctionTool", ())):
        return {str(obj.name)}
    if isinstance(obj, getattr(module, "Agent", ())):
        return {str(getattr(t, "name", "")) for t in getattr(obj, "tools", []) or []}
    return None


def _tools_of(obj: Any) -> set[str] | None:
    found = _pydantic_ai_tools(obj)
    return found if found is not None else _openai_tools(obj)


def _activity_name(fn: Any) -> str | None:
    defn = getattr(fn, "__temporal_activity_definition", None)
    return str(defn.name) if defn is not None and getattr(defn, "name", None) else None


def framework_tool_names(
    governance: Governance, activities: Iterable[Any] = (), plugins: Iterable[Any] = ()
) -> set[str]:
    """The tool names the framework's agents and the worker's activities offer (empty: nothing found
    to check against)."""
    names: set[str] = set()
    for fn in activities:
        name = _activity_name(fn)
        if name:
            names.add(name)
            # Pydantic AI's tool activities are named `agent__<agent>__toolset__<id>__call_tool`:
            # their tools come with the agent below.
    for plugin in plugins:
        for value in vars(plugin).values() if hasattr(plugin, "__dict__") else ():
            found = _tools_of(value)
            if found:
                names |= found
    module = sys.modules.get(getattr(governance, "_module", "") or "")
    for value in vars(module).values() if module is not None else ():
        found = _tools_of(value)
        if found:
            names |= found
        elif callable(value):  # an activity defined or imported there (plain, or `activity_as_tool`)
            name = _activity_name(value)
            if name:
                names.add(name)
    return names


def check_tool_names(governance: Governance, activities: Iterable[Any] = (), plugins: Iterable[Any] = ()) -> None:
    """Raises UserError (one line) naming each tool of `governance.tools` that none of the
    framework's agents (nor the worker's activities) has. Nothing found to check against: no error."""
    known = framework_tool_names(governance, activities, plugins)
    if not known:
        return
    unknown = sorted(set(governance.tools) - known)
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise UserError(
        f"Governance {', '.join(governance.agents)}: no tool named {', '.join(hints)} in the framework's agents "
        f"or the worker's activities (known: {', '.join(sorted(known))})"
    )


def _mcp_toolset_ids(obj: Any) -> set[str] | None:
    """The ids of a Pydantic AI agent's MCP toolsets (through wrappers such as `.prefixed()`)."""
    module = sys.modules.get("pydantic_ai")
    agent_type = getattr(module, "Agent", None) if module is not None else None
    if agent_type is None or not isinstance(obj, agent_type):
        return None
    ids: set[str] = set()
    for outer in getattr(obj, "toolsets", ()) or ():
        toolset = outer
        while toolset is not None:
            if type(toolset).__name__ == "MCPToolset" and getattr(toolset, "id", None):
                ids.add(str(toolset.id))
            toolset = getattr(toolset, "wrapped", None)
    return ids


def check_mcp_servers(governance: Governance, activities: Iterable[Any] = (), plugins: Iterable[Any] = ()) -> None:
    """Raises UserError (one line) naming each `Governance(mcp=...)` server that is the id of no MCP
    toolset of the app's Pydantic AI agents: it would govern nothing (its toolset's calls would
    then be refused as outside the boundary). No Pydantic AI agent found: no error."""
    if not governance.mcp:
        return
    found: set[str] | None = None
    module = sys.modules.get(getattr(governance, "_module", "") or "")
    values = [v for p in plugins if hasattr(p, "__dict__") for v in vars(p).values()]
    values += list(vars(module).values()) if module is not None else []
    for value in values:
        ids = _mcp_toolset_ids(value)
        if ids is not None:
            found = (found or set()) | ids
    # The toolsets' activities (`agent__<agent>__mcp_server__<id>__call_tool`), as `AgentPlugin` or
    # the worker registers them.
    from lockgate.dropin.openai_agents import openai_mcp_activity
    from lockgate.dropin.pydantic_ai import mcp_activity

    fns = [*activities, *(fn for p in plugins for fn in (getattr(p, "activities", None) or ()))]
    for fn in fns:
        parsed = mcp_activity(_activity_name(fn) or "")
        if parsed is not None and parsed[0] in governance.agents:
            found = (found or set()) | {parsed[1]}
        # An OpenAI Agents MCP server (`OpenAIAgentsPlugin(mcp_servers={NAME: ...})`): `temporalio.mcp.NAME.*`.
        openai = openai_mcp_activity(_activity_name(fn) or "")
        if openai is not None:
            found = (found or set()) | {openai[0]}
    if found is None:
        return
    unknown = sorted(s.name for s in governance.mcp if s.name not in found)
    if unknown:
        raise UserError(
            f"Governance {', '.join(governance.agents)}: no Pydantic AI MCP toolset or OpenAI Agents MCP server named "
            f"{', '.join(repr(u) for u in unknown)} (MCPToolset(..., id=...), OpenAIAgentsPlugin(mcp_servers={{...}}); "
            f"known: {', '.join(sorted(found)) or 'none'})"
        )
