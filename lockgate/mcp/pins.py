"""Pinned MCP tool definitions: what a person approved, by digest, beside the policies.

A pin file `mcp/<server>.json` in the policy directory holds, for each tool the server's agents may
use, its definition as the server listed it when a person ran `lockgate mcp pin` (name, title,
description, input and output schema, annotations) and the sha256 of its canonical JSON. Every
call lists the server's tools again and refuses a tool whose definition no longer has the pinned
digest ("definition changed"), until a person reviews the diff and pins again.

The pins live with the policies (not in the ledger) because they are the same kind of thing: a
reviewed, versioned statement of what is allowed, loaded by every worker and by `lockgate policy
check` (whose Cedar schema for MCP args is generated from the pinned `inputSchema`). The ledger
records which digest each call ran under.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Pin", "definition_of", "diff", "digest", "load_pin", "pin_path", "pin_tool", "write_pin"]

# The fields of a tool definition a pin covers. Anything else a server sends (icons, _meta) does not
# change what the tool does or what a model is told, so it does not break a pin.
FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")

Pin = dict[str, Any]


def definition_of(tool: Any) -> dict[str, Any]:
    """A tool from `tools/list` (an `mcp_types.Tool` or its JSON) as the pinned fields, camelCase."""
    raw = tool.model_dump(mode="json", by_alias=True, exclude_none=True) if hasattr(tool, "model_dump") else dict(tool)
    return {k: raw[k] for k in FIELDS if raw.get(k) is not None}


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(definition: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical(definition).encode()).hexdigest()


def pin_path(policy_dir: str | Path, server: str) -> Path:
    return Path(policy_dir) / "mcp" / f"{server}.json"


def load_pin(policy_dir: str | Path | None, server: str) -> Pin | None:
    """The server's pin file, or None when there is none (then none of its tools may run)."""
    if policy_dir is None:
        return None
    path = pin_path(policy_dir, server)
    if not path.is_file():
        return None
    pin = json.loads(path.read_text())
    if not isinstance(pin, dict) or not isinstance(pin.get("tools"), dict):
        raise ValueError(f"{path}: not a pin file")
    return pin


def load_pins(policy_dir: str | Path) -> dict[str, Pin]:
    """Every pin file of a policy directory, by server."""
    out: dict[str, Pin] = {}
    folder = Path(policy_dir) / "mcp"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        pin = load_pin(policy_dir, path.stem)
        if pin is not None:
            out[path.stem] = pin
    return out


def write_pin(
    policy_dir: str | Path, server: str, definitions: dict[str, dict[str, Any]], *, by: str, endpoint: str
) -> Path:
    """Pins `definitions` (MCP name -> definition) for `server`, approved by `by`."""
    path = pin_path(policy_dir, server)
    path.parent.mkdir(parents=True, exist_ok=True)
    pin = {
        "server": server,
        "endpoint": endpoint,
        "pinned_by": by,
        "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tools": {name: {"digest": digest(d), "definition": d} for name, d in sorted(definitions.items())},
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(pin, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def pin_tool(policy_dir: str | Path, server: str, name: str, definition: dict[str, Any], *, by: str) -> Path:
    """Pins one tool's definition (the others keep theirs), approved by `by`."""
    path = pin_path(policy_dir, server)
    pin = load_pin(policy_dir, server) or {"server": server, "endpoint": "", "tools": {}}
    pin["tools"][name] = {"digest": digest(definition), "definition": definition}
    pin["pinned_by"] = by
    pin["pinned_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(pin, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def diff(pinned: dict[str, Any] | None, live: dict[str, Any] | None, name: str) -> list[str]:
    """A unified diff of a pinned and a live definition (empty when they have the same digest)."""
    if pinned is not None and live is not None and digest(pinned) == digest(live):
        return []
    a = json.dumps(pinned, indent=2, sort_keys=True).splitlines() if pinned is not None else []
    b = json.dumps(live, indent=2, sort_keys=True).splitlines() if live is not None else []
    return list(difflib.unified_diff(a, b, f"pinned/{name}", f"live/{name}", lineterm=""))
