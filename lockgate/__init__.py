"""lockgate: governed tool calls for autonomous agent workflows on Temporal, Vault and Cedar.

Everything an agent author needs comes from here::

    from lockgate import Agent, Tool, ToolCall, ToolContext, ToolError, tool

Importing this module is light (no database, Vault or Temporal client); `LockgatePlugin` loads the
engine when first named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lockgate.context import ForwardCall, Resources, ToolContext, ToolError
from lockgate.errors import LockgateError, PolicyError, UserError
from lockgate.mcp import MCPServer, MCPTool
from lockgate.models import ToolCall
from lockgate.spec import (
    Agent,
    AgentRegistry,
    DatabaseSecret,
    LLMPlanner,
    Planner,
    Run,
    Script,
    Step,
    Tool,
    load_agents,
    shown,
    tool,
)

if TYPE_CHECKING:
    from lockgate.plugin import LockgatePlugin

__version__ = "0.2.0"

__all__ = [
    "Agent",
    "AgentRegistry",
    "DatabaseSecret",
    "ForwardCall",
    "LLMPlanner",
    "LockgateError",
    "LockgatePlugin",
    "MCPServer",
    "MCPTool",
    "Planner",
    "PolicyError",
    "Resources",
    "Run",
    "Script",
    "Step",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "UserError",
    "load_agents",
    "shown",
    "tool",
]


def __getattr__(name: str) -> Any:
    # The plugin pulls in the engine (Vault, ledger, Temporal worker): load it only when named.
    if name == "LockgatePlugin":
        from lockgate.plugin import LockgatePlugin

        return LockgatePlugin
    raise AttributeError(f"module 'lockgate' has no attribute {name!r}")
