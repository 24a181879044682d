"""The inbox's MCP page (`/mcp`): tools blocked because their server changed their definition, each
with the diff between the pinned definition and the one the worker saw, and (for group `operators`)
an approve-pin action. The same pins and diff as `lockgate mcp review | pin` (lockgate.mcp.pins).

What is shown and pinned is the definition the worker recorded when it blocked the tool (the ledger's
`mcp.blocked`), not a fresh listing: the inbox holds no credential for the servers, and a person
approves exactly the text they read. The form names that definition's digest; the pin is written
only if it is still the latest one recorded for the tool, so a server that changes again between
review and approval is not approved by accident. Server text is hostile: it is only ever shown
escaped (`|clean`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from lockgate.inbox.app import OPERATORS, Inbox, _authed_form, _ledger, _login_redirect, _render
from lockgate.mcp import pins
from lockgate.text import safe

__all__ = ["blocked_tools", "mcp_page", "mcp_pin"]

log = logging.getLogger("lockgate.inbox")


def _servers(inbox: Inbox) -> dict[str, Any]:
    from lockgate.mcp.client import MCPCall

    out: dict[str, Any] = {}
    for tool in inbox.agents.tools():
        if isinstance(tool.fn, MCPCall):
            out.setdefault(tool.fn.server.name, tool.fn.server)
    return out


def blocked_tools(inbox: Inbox) -> list[dict[str, Any]]:
    """Each declared MCP tool whose latest recorded definition differs from its pin, with the diff."""
    ledger = _ledger(inbox.settings)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for run_id in ledger.run_ids_with("mcp.blocked"):
        for event in ledger.events(run_id, kind="mcp.blocked"):
            key = (str(event.get("server")), str(event.get("tool")))
            if key not in latest or str(event.get("at", "")) >= str(latest[key].get("at", "")):
                latest[key] = {**event, "run_id": run_id}
    servers = _servers(inbox)
    rows = []
    for (server_name, tool), event in sorted(latest.items()):
        server = servers.get(server_name)
        if server is None or tool not in server.tools:
            continue
        pin = pins.load_pin(inbox.settings.policy_dir, server_name) or {}
        entry = pin.get("tools", {}).get(tool) or {}
        live = event.get("live")
        if live is not None and pins.digest(live) == entry.get("digest"):
            continue  # pinned since: no longer blocked
        rows.append(
            {
                "server": server_name,
                "tool": tool,
                "lockgate_tool": server.tool_name(tool),
                "run_id": event["run_id"],
                "at": str(event.get("at", ""))[:19],
                "pinned_digest": entry.get("digest"),
                "live_digest": pins.digest(live) if live is not None else None,
                "diff": pins.diff(entry.get("definition"), live, tool),
                "live": live,
            }
        )
    return rows


async def mcp_page(request: Request, message: str | None = None, status_code: int = 200) -> Response:
    inbox: Inbox = request.app.state.inbox
    if inbox.session_of(request) is None:
        return _login_redirect(request)
    rows = await asyncio.to_thread(blocked_tools, inbox)
    return _render(request, "mcp.html", status_code, rows=rows, message=message)


async def mcp_pin(request: Request) -> Response:
    """Approves the recorded definition of one blocked tool (`operators` only, CSRF-checked)."""
    inbox: Inbox = request.app.state.inbox
    web, form, refused = await _authed_form(request)
    if refused is not None:
        return refused
    assert web is not None
    person = web.person
    if OPERATORS not in person.groups:
        return await mcp_page(request, f"refused: {person.name} is not in group operators", 403)
    server, tool, digest = str(form.get("server", "")), str(form.get("tool", "")), str(form.get("digest", ""))
    rows = await asyncio.to_thread(blocked_tools, inbox)
    row = next((r for r in rows if r["server"] == server and r["tool"] == tool), None)
    if row is None:
        return await mcp_page(request, f"refused: {server}.{tool} is not blocked", 404)
    if row["live"] is None or row["live_digest"] != digest:
        # What the person reviewed is no longer the latest definition the server gave: review again.
        return await mcp_page(request, f"refused: {server}.{tool} changed again since you reviewed it", 409)
    await asyncio.to_thread(
        pins.pin_tool, inbox.settings.policy_dir, server, tool, row["live"], by=f"{person.name} (inbox)"
    )
    log.info("inbox: %s pinned %s.%s at %s", safe(person.name), safe(server), safe(tool), digest)
    return await mcp_page(request, f"{person.name} pinned {row['lockgate_tool']} at {digest}")
