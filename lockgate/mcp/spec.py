"""Declaring an MCP server as a tool source (`MCPServer`): each allowed MCP tool is a lockgate `Tool`.

Pure data, like `lockgate.spec`: nothing here opens a connection. A tool of server `bank` named
`transfer` on the server becomes the lockgate tool `bank.transfer` (Cedar action, `tool.bank.transfer`
activity); its implementation (`lockgate.mcp.client`) opens an MCP session for that one call only,
inside the governed tool activity, after the gate allowed the call and its credential was leased.

What a server says about its tools (descriptions, annotations such as `readOnlyHint`) grants
nothing: risk labels come from this declaration alone, and the definition itself is pinned by a
person (`lockgate mcp pin`), checked on every call.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lockgate.spec import DatabaseSecret, DataClass, ResourceOf, Tool

__all__ = ["TOKEN", "MCPArgs", "MCPServer", "MCPTool", "token_path", "token_role"]

# `secret=TOKEN`: a Vault token minted for each call under the token role `mcp-<server>` (its
# audience), a child of the run's identity, revoked right after the call.
TOKEN = "token"  # noqa: S105 - a keyword, not a secret
TOKEN_PREFIX = "auth/token/create/"  # noqa: S105 - a Vault path


def token_role(server: str) -> str:
    """The Vault token role whose tokens are meant for `server` only (their audience)."""
    return f"mcp-{server}"


def token_path(server: str) -> str:
    return f"{TOKEN_PREFIX}{token_role(server)}"


class MCPArgs(BaseModel):
    """The args of an MCP tool as the gate sees them: any plain JSON object. They are checked
    against the tool's pinned `inputSchema` inside the governed activity, before the call."""

    model_config = ConfigDict(frozen=True, extra="allow")


class MCPTool(BaseModel):
    """How one MCP tool is governed (all risk labels come from here, never from the server).

    Attributes:
        description: Overrides the pinned description shown to people and models.
        data_class: `regulated` results taint the run (default: the server's).
        production, reversible, egress: Risk labels Cedar sees on the tool.
        compensation: The lockgate tool (e.g. `bank.reverse`) that undoes this one.
        cost_arg: The argument counted against budgets.
        resource, resource_type: The Cedar resource a call acts on (as for `Tool`).
        model_sees: Structured-result fields a model still sees after a regulated read when its
            endpoint is not approved by policy (as for `Tool`); the rest is redacted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    description: str | None = None
    data_class: DataClass | None = None
    production: bool = False
    reversible: bool = True
    egress: bool = False
    compensation: str | None = None
    cost_arg: str | None = None
    resource: str | ResourceOf | None = Field(default=None, exclude=True, repr=False)
    resource_type: str | None = None
    model_sees: tuple[str, ...] = ()


_SLUG = re.compile(r"[^a-z0-9_-]+")


def tool_slug(mcp_name: str) -> str:
    """The lockgate name part of an MCP tool name (`getWeather` -> `getweather`)."""
    slug = _SLUG.sub("_", mcp_name.lower()).strip("_-")
    return slug if slug and slug[0].isalpha() else f"t_{slug}"


class MCPServer(BaseModel):
    """An MCP server whose tools an agent may call, each call governed like any lockgate tool.

    Example::

        bank = MCPServer("bank", url="http://127.0.0.1:9000/mcp", secret=TOKEN,
                         tools={"balance": MCPTool(), "transfer": MCPTool(production=True)})
        Agent(name="teller", tools=(*bank.as_tools(), other_tool), ...)

    Attributes:
        name: The server's id: tool names are `<name>.<tool>`, its pin file `mcp/<name>.json` in
            the policy directory.
        command: A stdio server: the command that starts it (a fresh process for each call, so a
            call's credential lives in that process only).
        url: A streamable HTTP server: its MCP endpoint.
        tools: The MCP tools the agent may use (their MCP names): the boundary. Tools the server
            offers and this does not name are never callable.
        regulated: Every tool's results are regulated data (taint the run) unless a tool says.
        secret: The credential of one call: `TOKEN` (a Vault token whose audience is this server,
            minted per call and revoked after), a `DatabaseSecret` or a Vault path (leased per call),
            or None.
        header: HTTP only: the header carrying the credential (`Authorization` is sent as `Bearer`).
        header_field: Which field of the secret goes into the header (default `token`).
        env: stdio only: environment variable -> secret field, set for that call's process only.
        cwd: stdio only: the server's working directory.
        timeout_seconds: Upper bound of one call (connect, list, call); at most 9 s (see below).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,40}$")
    command: tuple[str, ...] | None = None
    url: str | None = None
    tools: dict[str, MCPTool | None]
    regulated: bool = False
    secret: str | DatabaseSecret | None = None
    header: str = "Authorization"
    header_field: str = TOKEN
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    # Below the tool activity's heartbeat timeout (10 s): the activity heartbeats around the call,
    # not during it, so a longer call would be taken for a dead worker and retried meanwhile.
    timeout_seconds: float = Field(default=8.0, gt=0, le=9.0)

    def __init__(self, name: str | None = None, /, **data: Any) -> None:
        if name is not None:
            data["name"] = name
        super().__init__(**data)

    @model_validator(mode="after")
    def _check(self) -> MCPServer:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r}: give exactly one of command= (stdio) or url= (HTTP)")
        if self.command is not None and not self.command:
            raise ValueError(f"MCP server {self.name!r}: command is empty")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"MCP server {self.name!r}: url must be http(s)")
        if not self.tools:
            raise ValueError(f"MCP server {self.name!r}: name the tools the agent may use")
        slugs = [tool_slug(n) for n in self.tools]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"MCP server {self.name!r}: two tools map to the same lockgate name")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"

    @property
    def secret_path(self) -> str | None:
        if self.secret is None:
            return None
        if isinstance(self.secret, DatabaseSecret):
            return self.secret.path
        return token_path(self.name) if self.secret == TOKEN else self.secret

    def tool_name(self, mcp_name: str) -> str:
        """The lockgate tool name (Cedar action) of one of this server's MCP tools."""
        return f"{self.name}.{tool_slug(mcp_name)}"

    def data_class(self, mcp_name: str) -> DataClass:
        """The declared data class of a tool's results."""
        opts = self.tools.get(mcp_name)
        return (opts.data_class if opts else None) or ("regulated" if self.regulated else "internal")

    def mcp_name(self, tool_name: str) -> str | None:
        """The MCP name behind a lockgate tool name of this server, or None."""
        return next((n for n in self.tools if self.tool_name(n) == tool_name), None)

    def __lockgate_tools__(self) -> tuple[Tool, ...]:
        return self.as_tools()

    def as_tools(self) -> tuple[Tool, ...]:
        """The lockgate tools this server contributes to an agent: `Agent(tools=(*server.as_tools(),
        ...))` (an `MCPServer` given in `tools` directly stands for the same)."""
        from lockgate.mcp.client import implementation

        out = []
        for mcp_name, opts in self.tools.items():
            o = opts or MCPTool()
            secret: Any = self.secret if isinstance(self.secret, DatabaseSecret) else self.secret_path
            out.append(
                Tool(
                    name=self.tool_name(mcp_name),
                    description=o.description or f"MCP tool {mcp_name!r} of server {self.name!r}",
                    args=MCPArgs,
                    fn=implementation(self, mcp_name),
                    secret=secret,
                    production=o.production,
                    data_class=self.data_class(mcp_name),
                    reversible=o.reversible,
                    egress=o.egress,
                    compensation=o.compensation,
                    cost_arg=o.cost_arg,
                    resource=o.resource,
                    resource_type=o.resource_type,
                    mcp_server=self.name,
                    model_sees=o.model_sees,
                )
            )
        return tuple(out)
