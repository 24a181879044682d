"""What a tool's implementation gets for one call: `ToolContext`, and `ToolError` to fail it.

Light on purpose: authors import it from `lockgate`; the database driver loads only when a tool
connects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lockgate.errors import LockgateError

if TYPE_CHECKING:
    import psycopg

__all__ = ["ForwardCall", "Resources", "ToolContext", "ToolError"]


class ToolError(LockgateError):
    """A tool's own failure. `retryable=False` (the default) ends the step without retrying.
    `reached=False`: raised before anything reached the system the tool acts on (lockgate's own
    refusals, e.g. args an MCP tool's pinned schema rejects): the step has nothing to compensate."""

    def __init__(self, message: str, *, retryable: bool = False, reached: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reached = reached


@dataclass(frozen=True)
class Resources:
    """Where tools find the systems their credentials are for (no credentials here)."""

    pg_socket_dir: str | None = None
    pg_host: str | None = None
    pg_port: int | None = None
    # The policy directory: MCP tools read their pinned definitions (`mcp/<server>.json`) there.
    policy_dir: str | None = None


@dataclass(frozen=True)
class ForwardCall:
    """The call a compensation undoes, from the run's record (never from the caller).

    Attributes:
        tool: The forward tool.
        step: Its step in the run.
        args: The arguments its gate allowed (validated, exactly as decided).
        summary: What its completion recorded of its result (the tool's `summary`, or for a drop-in
            tool what `Govern(summary=...)` chose: results are private by default); empty when the
            call raised (it may have acted before it did, so it is compensated too).
    """

    tool: str
    step: int
    args: dict[str, Any]
    summary: str = ""


@dataclass
class ToolContext:
    """One governed call as its implementation sees it.

    Attributes:
        run_id: The run (workflow id) the call belongs to.
        step: The call's step in the run.
        idempotency_key: `<run id>:<step>`: record it with every side effect, so a retried attempt
            never acts twice and a compensation can find exactly this call's effect.
        resources: Where the systems are (hosts, sockets).
        secret: The call's dynamic secret (e.g. `username`/`password`). It lives only for this call:
            never return, log or store it.
        forward: For a compensation, the call it undoes (`ForwardCall`); None otherwise.
    """

    run_id: str
    step: int
    idempotency_key: str
    resources: Resources
    secret: dict[str, Any] = field(default_factory=dict, repr=False)
    forward: ForwardCall | None = None

    def owns(self, idempotency_key: str) -> bool:
        """True when `idempotency_key` names a step of this run (compensations undo only those)."""
        return idempotency_key.startswith(f"{self.run_id}:")

    def connect(self, dbname: str) -> psycopg.Connection[Any]:
        """A Postgres connection as this call's dynamic role."""
        import psycopg

        if not self.secret.get("username"):
            raise ToolError("this tool declares no database secret")
        params: dict[str, Any] = {
            "dbname": dbname,
            "user": self.secret["username"],
            "password": self.secret["password"],
            "connect_timeout": 5,
            # An unreachable server fails the call within seconds, not TCP's minutes (ignored for sockets).
            "tcp_user_timeout": 10_000,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }
        if self.resources.pg_socket_dir:
            params["host"] = self.resources.pg_socket_dir
        else:
            params["host"] = self.resources.pg_host or "127.0.0.1"
            params["port"] = self.resources.pg_port or 5432
        return psycopg.connect(**params)
