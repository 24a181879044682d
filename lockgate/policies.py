"""Reading a policy bundle from disk (the I/O half of `gates.bundle`)."""

from __future__ import annotations

from pathlib import Path

from lockgate.errors import PolicyError
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.bundles import BUNDLE_MANIFEST, build_team_bundle
from lockgate.gates.engine import tool_entities
from lockgate.schema import generate_schema, merge_schema
from lockgate.spec import AgentRegistry

__all__ = ["load_bundle"]


def mcp_pins_note(policy_dir: Path, agents: AgentRegistry) -> str:
    """The pinned MCP definitions' digests as schema comments: the bundle hash (which every
    decision record names) then covers exactly what people approved, descriptions included."""
    servers = sorted({t.mcp_server for t in agents.tools() if t.mcp_server})
    if not servers:
        return ""
    from lockgate.mcp import pins

    lines = ["", "// MCP tool definitions pinned by people (`lockgate mcp pin`):"]
    for server in servers:
        try:
            pin = pins.load_pin(policy_dir, server)
        except ValueError as err:
            raise PolicyError([f"mcp/{server}.json: {err}"]) from None
        for name, entry in sorted((pin or {}).get("tools", {}).items()):
            lines.append(f"// {server}/{name} {entry.get('digest') if isinstance(entry, dict) else '?'}")
        if pin is None:
            lines.append(f"// {server}: not pinned")
    return "\n".join(lines) + "\n"


def mcp_args_types(policy_dir: Path, agents: AgentRegistry) -> dict[str, str]:
    """The Cedar args types of the agents' MCP tools, from the pins beside the policies."""
    if not any(t.mcp_server for t in agents.tools()):
        return {}
    from lockgate.mcp.schema import args_types

    try:
        return args_types(policy_dir, agents.agents())
    except Exception as err:  # noqa: BLE001 - a bad pin file or a schema the generator refuses
        raise PolicyError([f"mcp/: {err}"]) from None


def load_bundle(policy_dir: Path, agents: AgentRegistry | None = None) -> PolicyBundle:
    """Loads `*.cedar`, `schema.cedarschema` and `entities.json` from `policy_dir`. With `agents`,
    the schema is generated from their tools (`lockgate.schema`), plus what `schema.cedarschema`
    declares that they do not.

    Raises:
        PolicyError: listing every problem as `file:line: message`.
    """
    if not policy_dir.is_dir():
        raise PolicyError([f"{policy_dir}: policy directory not found"])
    if (policy_dir / BUNDLE_MANIFEST).is_file():
        # A team's bundle (gates/bundles.py): its own namespace and schema, checked as such.
        files = {p.name: p.read_text() for p in sorted(policy_dir.iterdir()) if p.is_file()}
        team = build_team_bundle(files)
        return team if agents is None else team.with_entities(tool_entities(agents.agents()))
    policies = {p.name: p.read_text() for p in sorted(policy_dir.glob("*.cedar"))}
    if not policies:
        raise PolicyError([f"{policy_dir}: no *.cedar policy files"])
    schema_path = policy_dir / "schema.cedarschema"
    entities_path = policy_dir / "entities.json"
    schema_text = schema_path.read_text() if schema_path.is_file() else None
    if agents is not None and agents.agents():
        # The tools' actions, args and chain context come from their declarations (`lockgate
        # policy schema`); a written schema.cedarschema adds only what they do not declare.
        schema_text = merge_schema(generate_schema(agents.agents(), mcp_args_types(policy_dir, agents)), schema_text)
        schema_text += mcp_pins_note(policy_dir, agents)
    bundle = PolicyBundle.build(
        policies,
        schema_text=schema_text,
        entities_json=entities_path.read_text() if entities_path.is_file() else "[]",
        schema_file=str(schema_path.name),
        entities_file=str(entities_path.name),
    )
    if agents is not None:
        bundle = bundle.with_entities(tool_entities(agents.agents()))
    return bundle
