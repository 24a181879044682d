"""The house's floors, kept by contract (README "Layout"): each lockgate module sits on one floor and
imports only from its own floor or below; the dev stack and the demo stand apart and the engine never
imports them. The card's linked folders (lockgate/activities, gates, workflows) are followed. A new
module must be given its floor here, so nothing lands between floors unnoticed. Also pins the public
surface authors import (`lockgate`, `lockgate.dropin`)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import lockgate
import lockgate.dropin

ROOT = Path(__file__).resolve().parent.parent / "lockgate"

NOUNS, ENGINE, OPERATOR, SHELL, APART = 0, 1, 2, 3, 9
FLOOR_NAMES = {NOUNS: "nouns", ENGINE: "engine", OPERATOR: "operator API", SHELL: "shells", APART: "dev stack/demo"}

# Longest prefix wins.
FLOORS: dict[str, int] = {
    # The nouns: models, names, declarations and the pure gates.
    "lockgate.models": NOUNS,
    "lockgate.names": NOUNS,
    "lockgate.errors": NOUNS,
    "lockgate.ids": NOUNS,
    "lockgate.text": NOUNS,
    "lockgate.files": NOUNS,  # private files and folders (no lockgate imports)
    "lockgate.people": NOUNS,
    "lockgate.context": NOUNS,
    "lockgate.spec": NOUNS,
    "lockgate.schema": NOUNS,
    "lockgate.config": NOUNS,
    "lockgate.policies": NOUNS,
    "lockgate.evidence": NOUNS,
    "lockgate.vaultio": NOUNS,
    "lockgate.observability": NOUNS,
    "lockgate.metrics": NOUNS,
    "lockgate.gates": NOUNS,
    "lockgate.dropin.models": NOUNS,
    "lockgate.dropin.spec": NOUNS,
    # MCP servers as a tool source: declarations, pins, Cedar types and the per-call client (the
    # implementation a declared MCP tool is bound to, as a `@tool` function is to its `Tool`).
    "lockgate.mcp": NOUNS,
    # The engine: activities, workflows, the plugin and worker wiring, drop-in governance.
    "lockgate.activities": ENGINE,
    "lockgate.workflows": ENGINE,
    "lockgate.plugin": ENGINE,
    "lockgate.worker": ENGINE,
    "lockgate.standby": ENGINE,  # the worker stands by while Vault or the ledger is unreachable
    "lockgate.probes": ENGINE,  # the worker's liveness and readiness endpoints
    "lockgate.identity": ENGINE,
    "lockgate.dropin": ENGINE,
    "lockgate.teambundles": ENGINE,  # which signed team bundle decides each hosted agent
    # The operator API: what the CLI, the inbox and the tests call.
    "lockgate.ops": OPERATOR,
    "lockgate.audit": OPERATOR,
    "lockgate.export": OPERATOR,
    "lockgate.verify": OPERATOR,
    "lockgate.replay": OPERATOR,
    "lockgate.policytest": OPERATOR,
    "lockgate.auditkeys": OPERATOR,
    "lockgate.teams": OPERATOR,
    # The shells.
    "lockgate.cli": SHELL,
    "lockgate.policycli": SHELL,
    "lockgate.policysupply": SHELL,
    "lockgate.mcp.cli": SHELL,
    "lockgate.inbox": SHELL,
    "lockgate.codec_server": SHELL,
    "lockgate.health": SHELL,  # the containers' health checks (`python -m lockgate.health`)
    # Apart: the dev stack, its Vault bootstrap, the demo, test helpers and deployment rendering.
    "lockgate.devstack": APART,
    "lockgate.bootstrap": APART,
    "lockgate.demo": APART,
    "lockgate.testing": APART,
    "lockgate.deploy": APART,
    "lockgate.setup": APART,
}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, dirs, files in os.walk(ROOT, followlinks=True):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "templates", "static")]
        for name in files:
            if name.endswith(".py"):
                path = Path(folder) / name
                parts = ["lockgate", *path.relative_to(ROOT).with_suffix("").parts]
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = path
    return out


def _floor(module: str) -> int | None:
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len, default=None)
    return FLOORS[best] if best is not None else None


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lockgate."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.startswith("lockgate"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known)
    out.discard("lockgate")  # the public surface re-exports lazily; not a floor
    return out


def test_every_module_has_a_floor() -> None:
    homeless = sorted(m for m in _modules() if m != "lockgate" and _floor(m) is None)
    assert not homeless, f"give these modules a floor in tests/test_floors.py: {homeless}"


def test_imports_go_only_down_and_never_into_the_dev_stack() -> None:
    modules = _modules()
    known = set(modules)
    broken: list[str] = []
    for module, path in sorted(modules.items()):
        mine = _floor(module)
        if mine is None:
            continue
        for target in sorted(_imports(module, path, known)):
            theirs = _floor(target)
            if theirs is None or target == module:
                continue
            if mine == APART:
                ok = theirs != SHELL or module == "lockgate.testing"
            elif theirs == APART:
                ok = mine == SHELL  # shells drive the dev stack (`lockgate dev up`); nothing below does
            else:
                ok = theirs <= mine
            if not ok:
                broken.append(f"{module} ({FLOOR_NAMES[mine]}) imports {target} ({FLOOR_NAMES[theirs]})")
    assert not broken, "imports against the floors:\n" + "\n".join(broken)


def test_the_public_surface_is_pinned() -> None:
    assert sorted(lockgate.__all__) == sorted(
        [
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
    )
    assert sorted(lockgate.dropin.__all__) == sorted(
        [
            "DENIAL_DEFAULT",
            "PATCH_ID",
            "Denial",
            "Govern",
            "Governance",
            "NoSecret",
            "OpenArgs",
            "args_of",
            "current_call",
            "current_secret",
            "slug",
        ]
    )
    for name in lockgate.__all__:
        assert getattr(lockgate, name) is not None
