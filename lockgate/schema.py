"""The Cedar schema of the declared tools, generated from their pydantic models (`policy schema`).

One action per tool, its `context.args` from the tool's args model and `context.chain` from what
the gate puts there (`lockgate.gates.chain`), its `resource` the tool (`Tool`) or its declared
resource type (a child of `Tool` with the same risk labels). A tool shared by several agents gets the
chain keys all of them have (a policy may then name only what every one of them sends).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from lockgate.spec import AgentSpec, ToolSpec

__all__ = ["generate_schema", "merge_schema"]

_LABELS = "{ production: Bool, data_class: String, reversible: Bool, egress: Bool }"
_HEADER = """\
// lockgate's Cedar schema, generated from the declared tools (`lockgate policy schema`).
// Who (Agent), what (Action = tool name), on what (Tool with its risk labels, or the resource a
// tool declares), and the context every gate request carries: args, run state and the run's chain.
entity Group;
entity User in [Group];
entity Agent {{ owner: String }};
entity Tool {labels};
{resources}
type Run = {{
  run_id: String,
  initiator: String,
  owner: String,
  step: Long,
  steps_taken: Long,
  max_steps: Long,
  spent: Long,
  budget: Long,
  tainted: Bool,
  confidence_pct: Long,
  confidence_source: String,
  approved_groups: Set<String>,
  tenant: String,
}};
"""


def _name(key: str) -> str:
    return key if key.isidentifier() else json.dumps(key)


def _type(node: dict[str, Any], defs: dict[str, Any]) -> str | None:
    """The Cedar type of one JSON-schema node; None when Cedar has none (fractions, null only)."""
    if "$ref" in node:
        return _type(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in node:
        kinds = [k for k in (_type(n, defs) for n in node["anyOf"] if n.get("type") != "null") if k]
        return kinds[0] if len(set(kinds)) == 1 else None
    if "enum" in node and all(isinstance(v, str) for v in node["enum"]):
        return "String"
    kind = node.get("type")
    if kind == "string":
        return "String"
    if kind == "integer":
        return "Long"
    if kind == "boolean":
        return "Bool"
    if kind == "array":
        item = _type(node.get("items", {}), defs)
        return f"Set<{item}>" if item else None
    if kind == "object" and "properties" in node:
        return _record(node, defs)
    return None  # numbers with fractions, free-form objects: not plain Cedar data a policy can type


def _record(node: dict[str, Any], defs: dict[str, Any]) -> str:
    required = set(node.get("required", []))
    parts = []
    for key, sub in node.get("properties", {}).items():
        kind = _type(sub, defs)
        if kind is not None:
            parts.append(f"{_name(key)}{'' if key in required else '?'}: {kind}")
    return "{ " + ", ".join(parts) + " }" if parts else "{}"


def _args(tool: ToolSpec, given: dict[str, str] | None = None) -> str:
    if given and tool.name in given:
        return given[tool.name]  # an MCP tool: typed from its pinned inputSchema (lockgate.mcp.schema)
    schema = tool.args.model_json_schema()
    return _record(schema, schema.get("$defs", {}))


def _common(sets: Iterable[Iterable[str]]) -> list[str]:
    found: set[str] | None = None
    for s in sets:
        found = set(s) if found is None else found & set(s)
    return sorted(found or ())


def _chain(agents: list[AgentSpec]) -> str:
    tools = _common(a.boundary for a in agents)
    typed = {t.name: t.resource_type for a in agents for t in a.tools if t.resource_type}
    kinds = _common([t.resource_type for t in a.tools if t.resource_type] for a in agents)
    calls = ", ".join(f"{_name(t)}: Long" for t in tools)
    touched = ", ".join(f"{_name(t)}: Set<String>" for t in tools if t in typed)
    resources = ", ".join(f"{_name(k)}: Set<String>" for k in kinds)
    distinct = ", ".join(f"{_name(k)}: Long" for k in kinds)
    return (
        f"{{ on_resource: Set<String>, calls: {{ {calls} }}, tools: Set<String>, steps: Long, resources: {{ {resources} }}, "
        f"touched: {{ {touched} }}, distinct: {{ {distinct} }}, data_classes: Set<String>, egress: Bool, "
        "truncated: Bool }"
    )


def generate_schema(agents: Iterable[AgentSpec], args_types: dict[str, str] | None = None) -> str:
    """The Cedar schema (human-readable format) for every tool of `agents`.

    Args:
        agents: the declared agents (e.g. `registry.agents()`).
        args_types: Cedar record types of some tools' args given from elsewhere (MCP tools: from
            their pinned `inputSchema`), by tool name.

    Returns:
        Schema text `PolicyBundle.build` and `cedarpy` accept.
    """
    agents = list(agents)
    tools: dict[str, ToolSpec] = {}
    users: dict[str, list[AgentSpec]] = {}
    for agent in agents:
        for tool in agent.tools:
            tools.setdefault(tool.name, tool)
            users.setdefault(tool.name, []).append(agent)
    kinds = sorted({t.resource_type for t in tools.values() if t.resource_type})
    out = [_HEADER.format(labels=_LABELS, resources="".join(f"entity {k} in [Tool] {_LABELS};\n" for k in kinds))]
    # One named type per distinct chain shape (the agents sharing a set of tools share it).
    chains: dict[str, str] = {}
    owners: dict[str, set[str]] = {}
    for name in sorted(tools):
        shape = _chain(users[name])
        # Named by content: a written schema merged in (`merge_schema`) can never mean another shape.
        chains.setdefault(shape, "Chain_" + hashlib.sha256(shape.encode()).hexdigest()[:10])
        owners.setdefault(shape, set()).update(a.name for a in users[name])
    for shape, type_name in chains.items():
        out.append(f"// The run's chain (`context.chain`) of {', '.join(sorted(owners[shape]))}.")
        out.append(f"type {type_name} = {shape};\n")
    for name, tool in sorted(tools.items()):
        resource = tool.resource_type or "Tool"
        out.append(
            f"action {json.dumps(name)} appliesTo {{\n"
            f"  principal: Agent, resource: {resource},\n"
            f"  context: {{ run: Run, args: {_args(tool, args_types)}, chain: {chains[_chain(users[name])]} }},\n"
            "};\n"
        )
    return "\n".join(out)


_HEAD = re.compile(
    r'^\s*(?:(?://[^\n]*\n)\s*)*(entity|action|type|namespace)\s+("(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z0-9_:]*)'
)


def _declarations(text: str) -> list[tuple[tuple[str, str] | None, str]]:
    """Top-level declarations of a Cedar schema as ((kind, name) or None, text)."""
    from lockgate.gates.bundle import split_statements

    out: list[tuple[tuple[str, str] | None, str]] = []
    for _line, statement in split_statements(text):
        m = _HEAD.match(statement)
        out.append(((m.group(1), m.group(2).strip('"')) if m else None, statement))
    return out


def merge_schema(generated: str, written: str | None) -> str:
    """The generated schema plus what a written `schema.cedarschema` declares that it does not.

    Generated declarations win: a tool's action, args and chain come from its declaration, never
    from a hand-written copy that may have drifted. A written schema still adds what lockgate does
    not declare (actions of agents this process does not load, entity types of your own). An
    entity declaration listing several names (`entity A, B;`) is kept whole."""
    if not written:
        return generated
    have = {key for key, _ in _declarations(generated) if key is not None}
    extra = [text for key, text in _declarations(written) if key is None or key not in have]
    return generated if not extra else generated + "\n// From schema.cedarschema:\n" + "\n".join(extra) + "\n"
