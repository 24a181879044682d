"""One governed MCP `tools/call`: the implementation behind every `MCPServer` tool.

It runs inside the tool's governed activity (`tool.<server>.<tool>`), after the gate allowed the call
and the call's credential was leased, and it is the only code that talks to the server. For each call:
open a session (a fresh stdio process, or a streamable HTTP session carrying only this call's
credential), list the tools, refuse the tool if its definition differs from the pinned one, check
the args against the pinned `inputSchema`, call it, and refuse its result if the server said its
tools changed meanwhile. Sessions never outlive the call, so neither does the credential.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from lockgate.context import ToolContext, ToolError
from lockgate.mcp import pins

if TYPE_CHECKING:
    from mcp.client.session import ClientSession

    from lockgate.mcp.spec import MCPServer

__all__ = ["DefinitionChanged", "MCPCall", "implementation", "list_definitions"]

# The `_meta` key carrying the step's idempotency key, so a server can make a retried call a no-op.
IDEMPOTENCY_META = "io.lockgate/idempotency-key"
REVIEW_HINT = "definition changed, review with `lockgate mcp review {server}`"


class DefinitionChanged(ToolError):
    """The server's definition of a tool is not the pinned one: the tool is blocked (fail closed).

    `record()` is what the ledger keeps of it (`mcp.blocked`): the definition the server now gives,
    so a person can review the diff (`lockgate mcp review`, the inbox's MCP page) and pin it."""

    def __init__(
        self,
        message: str,
        *,
        server: str = "",
        tool: str = "",
        pinned: str | None = None,
        live: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.server, self.tool, self.pinned, self.live = server, tool, pinned, live

    def record(self) -> dict[str, Any]:
        """The ledger's `mcp.blocked` data (a definition beyond 64 KiB is kept as its digest only)."""
        live = self.live if self.live is not None and len(pins.canonical(self.live)) <= 65536 else None
        return {
            "server": self.server,
            "tool": self.tool,
            "pinned_digest": self.pinned,
            "live_digest": pins.digest(self.live) if self.live is not None else None,
            "live": live,
        }


def credential_headers(server: MCPServer, secret: dict[str, Any]) -> dict[str, str]:
    """The HTTP headers of one call: only this call's own credential, never anything received."""
    if server.secret is None:
        return {}
    value = secret.get(server.header_field)
    if not value:
        raise ToolError(f"{server.name}: the call's secret has no field {server.header_field!r}")
    if server.header.lower() == "authorization":
        return {"Authorization": f"Bearer {value}"}
    return {server.header: str(value)}


def credential_env(server: MCPServer, secret: dict[str, Any]) -> dict[str, str]:
    """The environment of one stdio call's process: the declared secret fields, nothing inherited
    beyond the SDK's safe defaults (PATH, HOME, ...): never the worker's Vault or lockgate settings."""
    out = {}
    for var, field in server.env.items():
        if field not in secret:
            raise ToolError(f"{server.name}: the call's secret has no field {field!r}")
        out[var] = str(secret[field])
    return out


@asynccontextmanager
async def session(
    server: MCPServer, secret: dict[str, Any], changed: list[str] | None = None
) -> AsyncIterator[ClientSession]:
    """An initialized MCP client session for one call. `changed` collects list_changed notices."""
    from mcp.client.session import ClientSession
    from mcp_types import ToolListChangedNotification

    async def on_message(message: Any) -> None:
        inner = getattr(message, "root", message)
        if isinstance(inner, ToolListChangedNotification) and changed is not None:
            changed.append("notifications/tools/list_changed")

    if server.command is not None:
        import sys

        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(
            command=server.command[0], args=list(server.command[1:]), env=credential_env(server, secret), cwd=server.cwd
        )
        # The server's stderr is the worker's (its logs), as the SDK does by default.
        async with (
            stdio_client(params, errlog=sys.stderr) as (read, write),
            ClientSession(read, write, message_handler=on_message) as s,
        ):
            await s.initialize()
            yield s
        return
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    assert server.url is not None
    http = create_mcp_http_client(headers=credential_headers(server, secret))
    async with (
        http,
        streamable_http_client(server.url, http_client=http) as (read, write),
        ClientSession(read, write, message_handler=on_message) as s,
    ):
        await s.initialize()
        yield s


async def listed(s: ClientSession) -> dict[str, dict[str, Any]]:
    """Every tool the server lists (all pages), as pinned definitions by MCP name."""
    from mcp_types import PaginatedRequestParams

    out: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    for _ in range(100):  # a server that pages forever is not listing tools
        page = await s.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        for t in page.tools:
            out[t.name] = pins.definition_of(t)
        cursor = page.next_cursor
        if not cursor:
            break
    return out


async def list_definitions(server: MCPServer, secret: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The server's current definitions of the tools `server` declares (for `lockgate mcp pin`)."""
    async with session(server, secret) as s:
        live = await listed(s)
    return {name: live[name] for name in server.tools if name in live}


def check_definition(server: MCPServer, mcp_name: str, pin: pins.Pin | None, live: dict[str, Any] | None) -> str:
    """The pinned digest `live` matches, or raises `DefinitionChanged` (fail closed)."""
    entry = (pin or {}).get("tools", {}).get(mcp_name) if pin else None
    seen = {"server": server.name, "tool": mcp_name, "live": live}
    if not entry:
        raise DefinitionChanged(
            f"{server.name}.{mcp_name}: not pinned; approve it with `lockgate mcp pin {server.name}`", **seen
        )
    pinned = str(entry.get("digest"))
    if live is None:
        raise DefinitionChanged(
            f"{server.name}.{mcp_name}: the server no longer lists it; {REVIEW_HINT.format(server=server.name)}",
            pinned=pinned,
            **seen,
        )
    if pins.digest(live) != entry.get("digest") or pins.digest(entry.get("definition", {})) != entry.get("digest"):
        raise DefinitionChanged(
            f"{server.name}.{mcp_name}: {REVIEW_HINT.format(server=server.name)}", pinned=pinned, **seen
        )
    return str(entry["digest"])


def check_args(server: MCPServer, mcp_name: str, schema: dict[str, Any], args: dict[str, Any]) -> None:
    import jsonschema

    try:
        jsonschema.validate(args, schema)
    except jsonschema.ValidationError as err:
        raise ToolError(
            f"{server.name}.{mcp_name}: args fail the pinned inputSchema: {err.message}", reached=False
        ) from None
    except jsonschema.SchemaError as err:
        raise ToolError(
            f"{server.name}.{mcp_name}: the pinned inputSchema is invalid: {err.message}", reached=False
        ) from None


def _content(result: Any) -> tuple[list[dict[str, Any]], str]:
    blocks = [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in result.content]
    text = " ".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text").strip()
    return blocks, text


async def call(server: MCPServer, mcp_name: str, ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    """One governed `tools/call` (see the module docstring)."""
    pin = pins.load_pin(ctx.resources.policy_dir, server.name)
    changed: list[str] = []
    async with session(server, ctx.secret, changed) as s:
        live = await listed(s)
        pinned = check_definition(server, mcp_name, pin, live.get(mcp_name))
        definition = (pin or {})["tools"][mcp_name]["definition"]
        check_args(server, mcp_name, definition.get("inputSchema") or {"type": "object"}, args)
        result = await s.call_tool(mcp_name, args, meta={IDEMPOTENCY_META: ctx.idempotency_key})  # type: ignore[arg-type]
        if changed:
            # The server changed its tools while this call ran: what answered may not be what a
            # person approved. Keep nothing it said unless the definition still matches.
            check_definition(server, mcp_name, pin, (await listed(s)).get(mcp_name))
    blocks, text = _content(result)
    if result.is_error:
        raise ToolError(f"{server.name}.{mcp_name}: the server reported an error: {text[:300]}")
    out: dict[str, Any] = {
        "server": server.name,
        "tool": mcp_name,
        "definition": pinned,
        # The declared class (never the server's word): `regulated` taints the run at the gate.
        "data_class": server.data_class(mcp_name),
        "content": blocks,
        "summary": (text or json.dumps(result.structured_content or {}, sort_keys=True))[:200],
    }
    if result.structured_content is not None:
        out["structured"] = result.structured_content
    return out


@dataclass(frozen=True)
class MCPCall:
    """The implementation `(ToolContext, args) -> dict` of one MCP tool (compared by value, so two
    declarations of the same server give equal tools)."""

    server: MCPServer
    mcp_name: str

    def __call__(self, ctx: ToolContext, args: BaseModel) -> dict[str, Any]:
        import anyio

        warm()  # the SDK's import is slow (seconds on a loaded host): never inside the call's timeout
        return anyio.run(self.acall, ctx, args.model_dump(mode="json"))

    async def acall(self, ctx: ToolContext, payload: dict[str, Any]) -> dict[str, Any]:
        """The same call on the running event loop (a drop-in framework's async tool activity)."""
        try:
            return await _bounded(self, ctx, payload)
        except ToolError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure talking to the server
            inner = _innermost(err)
            if isinstance(inner, ToolError):
                # Our own verdict (definition changed, args refused, tool error), raised inside the
                # session's task group: keep it as it is, retryable or not.
                raise inner from None
            if _answered(err):
                # The server is up and refused the request (unknown tool, bad params): trying
                # again would be refused the same way.
                raise ToolError(f"{self.server.name}.{self.mcp_name}: server refused: {_describe(err)}") from None
            # Unreachable, or died mid-call: retryable (the step's idempotency key travels in `_meta`,
            # and the credential of this attempt is revoked by the activity whatever happens).
            raise ToolError(
                f"{self.server.name}.{self.mcp_name}: server failed: {_describe(err)}", retryable=True
            ) from None


async def _bounded(c: MCPCall, ctx: ToolContext, payload: dict[str, Any]) -> dict[str, Any]:
    import anyio

    with anyio.fail_after(c.server.timeout_seconds):
        return await call(c.server, c.mcp_name, ctx, payload)


def _innermost(err: BaseException) -> BaseException:
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    return err


def _answered(err: BaseException) -> bool:
    """True for an MCP error response (not a connection that closed or never opened)."""
    from mcp.shared.exceptions import MCPError
    from mcp_types.jsonrpc import CONNECTION_CLOSED

    inner = _innermost(err)
    return isinstance(inner, MCPError) and inner.code != CONNECTION_CLOSED


def _describe(err: BaseException) -> str:
    # Task groups wrap the transport's error: name the innermost one, never a header or env value.
    err = _innermost(err)
    return f"{type(err).__name__}: {str(err)[:200]}"


def warm() -> None:
    """Imports the MCP SDK's client modules (a worker with MCP tools does it at start)."""
    import mcp.client.session
    import mcp.client.stdio
    import mcp.client.streamable_http
    import mcp.shared._httpx_utils  # noqa: F401


def implementation(server: MCPServer, mcp_name: str) -> MCPCall:
    return MCPCall(server, mcp_name)
