"""`lockgate mcp list | review | pin SERVER`: a person reviews an MCP server's tool definitions and
pins them (the pin file `mcp/SERVER.json` in the policy directory, read by workers on every call).

Exit codes as every command: 0 done (review: every tool matches its pin), 1 review found a changed,
new or unpinned tool, 2 bad input (unknown server, unreachable server, no Vault credential).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lockgate.config import Settings
from lockgate.errors import UserError
from lockgate.mcp import pins
from lockgate.mcp.spec import TOKEN, MCPServer
from lockgate.text import safe

__all__ = ["cmd_mcp", "declared_servers"]


def declared_servers() -> dict[str, MCPServer]:
    """The MCP servers the loaded agents declare, by name."""
    from lockgate.mcp.client import MCPCall
    from lockgate.spec import registry

    out: dict[str, MCPServer] = {}
    for tool in registry.tools():
        if isinstance(tool.fn, MCPCall):
            out.setdefault(tool.fn.server.name, tool.fn.server)
    return out


def _reviewer(settings: Settings) -> tuple[Any, str]:
    """A Vault client acting for the person at the keyboard, and who they are."""
    from lockgate import vaultio
    from lockgate.identity import load_session

    try:
        session = load_session(settings)
        return session.client, session.name
    except UserError:
        if not settings.vault_token:
            raise UserError(
                "not logged in: `lockgate login USER` (or VAULT_TOKEN) to read the server's tools"
            ) from None
        client = vaultio.client(settings.vault_addr, settings.vault_token, timeout=5)
        me = client.auth.token.lookup_self()["data"]
        return client, f"token:{me.get('display_name') or me.get('accessor')}"


def _listing(server: MCPServer, settings: Settings) -> tuple[dict[str, dict[str, Any]], str]:
    """The server's current definitions of its declared tools, read with a credential of its own
    (minted for the reviewer, revoked right after), and who reviewed."""
    import anyio

    from lockgate import vaultio
    from lockgate.mcp.client import list_definitions
    from lockgate.mcp.spec import token_role
    from lockgate.names import audience_policy

    client, who = _reviewer(settings)
    secret: dict[str, Any] = {}
    revoke: Any = None
    if server.secret == TOKEN:
        try:
            auth = vaultio.write(client, server.secret_path or "", policies=[audience_policy(token_role(server.name))])[
                "auth"
            ]
        except Exception as err:  # noqa: BLE001 - any refusal: say which, exit 2
            raise UserError(f"{who} may not mint a token for {server.name}: {safe(err, 200)}") from None
        secret = {"token": auth["client_token"]}
        accessor = auth["accessor"]
        revoke = lambda: client.auth.token.revoke_accessor(accessor)  # noqa: E731
    elif server.secret_path:
        resp = vaultio.read(client, server.secret_path) or {}
        secret, lease = dict(resp.get("data") or {}), resp.get("lease_id")
        revoke = (lambda: client.sys.revoke_lease(lease_id=lease)) if lease else None
    try:
        return anyio.run(list_definitions, server, secret), who
    except Exception as err:  # noqa: BLE001 - unreachable or refused: exit 2
        from lockgate.mcp.client import _describe

        raise UserError(f"MCP server {server.name}: {_describe(err)}") from None
    finally:
        secret.clear()
        if revoke is not None:
            revoke()


def _compare(server: MCPServer, pin: pins.Pin | None, live: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in sorted(server.tools):
        entry = (pin or {}).get("tools", {}).get(name)
        pinned = entry.get("definition") if entry else None
        now = live.get(name)
        if now is None:
            status = "missing"
        elif pinned is None:
            status = "unpinned"
        elif pins.digest(now) != entry.get("digest") or pins.digest(pinned) != entry.get("digest"):
            status = "changed"
        else:
            status = "pinned"
        out.append(
            {
                "server": server.name,
                "tool": name,
                "lockgate_tool": server.tool_name(name),
                "status": status,
                "pinned_digest": entry.get("digest") if entry else None,
                "live_digest": pins.digest(now) if now is not None else None,
                "diff": [] if status == "pinned" else pins.diff(pinned, now, name),
            }
        )
    return out


def cmd_mcp(args: argparse.Namespace, settings: Settings) -> int:
    servers = declared_servers()
    if args.action == "list":
        rows = []
        for name, server in sorted(servers.items()):
            pin = pins.load_pin(settings.policy_dir, name)
            rows.append(
                {
                    "server": name,
                    "transport": server.transport,
                    "tools": sorted(server.tools),
                    "pinned": sorted((pin or {}).get("tools", {})),
                    "pinned_by": (pin or {}).get("pinned_by"),
                }
            )
        if args.json:
            print(json.dumps(rows, indent=2, sort_keys=True))
        for r in rows if not args.json else ():
            print(
                f"{r['server']} ({r['transport']}): tools {', '.join(r['tools'])}; pinned {', '.join(r['pinned']) or 'none'}"
            )
        return 0
    if not args.server:
        raise UserError(f"mcp {args.action} needs SERVER")
    server = servers.get(args.server)
    if server is None:
        raise UserError(f"unknown MCP server {args.server!r} (declared: {', '.join(sorted(servers)) or 'none'})")
    policy_dir = Path(args.policy_dir) if args.policy_dir else settings.policy_dir
    live, who = _listing(server, settings)
    pin = pins.load_pin(policy_dir, server.name)
    rows = _compare(server, pin, live)
    if args.action == "review":
        if args.json:
            print(json.dumps(rows, indent=2, sort_keys=True))
        else:
            for r in rows:
                print(f"{r['lockgate_tool']}: {r['status']}")
                for line in r["diff"]:
                    print(f"  {safe(line, 2000)}")
            print("(annotations such as readOnlyHint are the server's untrusted hints: they grant nothing)")
        return 0 if all(r["status"] == "pinned" for r in rows) else 1
    missing = [r["tool"] for r in rows if r["status"] == "missing"]
    if missing:
        print(f"lockgate: {server.name} does not list {', '.join(missing)}: not pinned", file=sys.stderr)
    path = pins.write_pin(
        policy_dir,
        server.name,
        {n: d for n, d in live.items() if n in server.tools},
        by=who,
        endpoint=server.url or " ".join(server.command or ()),
    )
    if args.json:
        print(json.dumps({"pin": str(path), "by": who, "tools": rows}, indent=2, sort_keys=True))
    else:
        for r in rows:
            if r["status"] != "missing":
                print(f"{r['lockgate_tool']}: pinned {r['live_digest']} ({r['status']} before)")
        print(f"wrote {path}")
    return 0
