"""Cedar types of MCP tool args, generated from the pinned `inputSchema` with Cedar's own generator
(`cedar-policy-mcp-schema-generator`, from cedar-policy/cedar-for-agents).

The generator writes a whole schema in its own shape (`context.input` on an MCP `Server` resource);
lockgate keeps its own action shape (`context.args`, `context.run`, `context.chain` on the `Tool`)
and takes from the generator only each tool's input record, inlined. Args reach Cedar as plain JSON,
so the generator's entity types map back to data: a string enum is a `String`; a fractional number
(the generator's `Number` entity) has no Cedar data type and is left out, as lockgate's own schema
generator does, so a policy naming it fails `lockgate policy check`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lockgate.mcp import pins
from lockgate.spec import AgentSpec

__all__ = ["args_types"]

_STUB = 'namespace Mcp {\n@mcp_principal("Agent")\nentity Agent;\n@mcp_resource("Server")\nentity Server;\n}\n'
_PRIMITIVE = {"String": "String", "Long": "Long", "Bool": "Bool", "Boolean": "Bool"}


def _name(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else json.dumps(key)


class _Types:
    def __init__(self, ns: dict[str, Any]) -> None:
        self.common: dict[str, Any] = ns.get("commonTypes", {})
        self.entities: dict[str, Any] = ns.get("entityTypes", {})

    def text(self, node: dict[str, Any]) -> str | None:
        kind = node.get("type")
        name = str(node.get("name", "")).removeprefix("Mcp::")
        if kind in ("EntityOrCommon", "Entity") or kind in self.common:
            name = name or str(kind)
            if name in _PRIMITIVE:
                return _PRIMITIVE[name]
            if name in self.common:
                return self.text(self.common[name])
            if "enum" in self.entities.get(name, {}):
                return "String"  # the arg is the enum's string, not an entity
            return None  # `Number` and other entities: not plain data a policy can type
        if kind in _PRIMITIVE:
            return _PRIMITIVE[kind]
        if kind == "Set":
            element = self.text(node.get("element", {}))
            return f"Set<{element}>" if element else None
        if kind == "Record":
            parts = []
            for key, sub in node.get("attributes", {}).items():
                t = self.text(sub)
                if t is not None:
                    parts.append(f"{_name(key)}{'' if sub.get('required', True) else '?'}: {t}")
            return "{ " + ", ".join(parts) + " }" if parts else "{}"
        return None


def _server_types(definitions: dict[str, dict[str, Any]]) -> dict[str, str]:
    """MCP tool name -> Cedar record type text of its args."""
    from cedar_mcp_schema_generator import generate_schema_or_raise

    # The generator takes tool names as Cedar identifiers: give it safe ones, map them back.
    aliases = {f"t{i}": name for i, name in enumerate(sorted(definitions))}
    tools = [
        {"name": alias, "description": "", "inputSchema": definitions[name].get("inputSchema") or {"type": "object"}}
        for alias, name in aliases.items()
    ]
    result = generate_schema_or_raise(
        _STUB, tools, config={"objectsAsRecords": True, "eraseAnnotations": True, "flattenNamespaces": True}
    )
    ns = json.loads(result["schemaJson"]).get("Mcp", {})
    types = _Types(ns)
    out = {}
    for alias, name in aliases.items():
        record = types.common.get(f"{alias}Input")
        out[name] = (types.text(record) if record else None) or "{}"
    return out


def args_types(policy_dir: str | Path, agents: list[AgentSpec]) -> dict[str, str]:
    """lockgate tool name -> Cedar args type, for every MCP tool of `agents` with a pin. A tool with
    no pin keeps `{}` (it cannot run either), so a policy on its args fails `policy check`."""
    from lockgate.mcp.client import MCPCall

    servers: dict[str, Any] = {}
    for agent in agents:
        for tool in agent.tools:
            if isinstance(tool.fn, MCPCall):
                servers.setdefault(tool.fn.server.name, tool.fn.server)
    out: dict[str, str] = {}
    for name, server in servers.items():
        pin = pins.load_pin(policy_dir, name)
        if not pin:
            continue
        definitions = {
            n: entry["definition"]
            for n, entry in pin["tools"].items()
            if n in server.tools and isinstance(entry, dict) and isinstance(entry.get("definition"), dict)
        }
        if definitions:
            for mcp_name, text in _server_types(definitions).items():
                out[server.tool_name(mcp_name)] = text
    return out
