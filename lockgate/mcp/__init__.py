"""MCP servers as a governed tool source: `MCPServer` in an agent's `tools`.

Each MCP tool an agent names becomes the lockgate tool `<server>.<tool>`: gated (kill switch,
boundary, Cedar on its args, stateful gates, approvals), given a credential for that call only,
checked against the definition a person pinned (`lockgate mcp pin` / `review`), audited, and
compensated where the declaration says so.
"""

from lockgate.mcp.client import DefinitionChanged
from lockgate.mcp.spec import TOKEN, MCPArgs, MCPServer, MCPTool

__all__ = ["TOKEN", "DefinitionChanged", "MCPArgs", "MCPServer", "MCPTool"]
