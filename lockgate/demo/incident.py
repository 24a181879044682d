"""`incident-agent`: incident response (the second example agent).

Collect a host's signals, open a ticket, and quarantine the host only after an on-call engineer
approves; with `page`, page the host's owning team. Compensations close the ticket and release the
quarantine. Declared with `lockgate` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lockgate import Agent, DatabaseSecret, Step, ToolCall, ToolContext, ToolError, tool

__all__ = ["AGENT", "AGENTS", "IncidentInput", "plan"]

# The `ops` schema in the demo database: what `lockgate dev up` creates before the roles.
OPS_SQL = """
CREATE SCHEMA IF NOT EXISTS ops;
REVOKE ALL ON SCHEMA ops FROM PUBLIC;
CREATE TABLE IF NOT EXISTS ops.hosts (
    id text PRIMARY KEY, env text NOT NULL, pager text,
    quarantined_at timestamptz, quarantine_key text);
CREATE TABLE IF NOT EXISTS ops.alerts (
    id bigserial PRIMARY KEY, host_id text NOT NULL REFERENCES ops.hosts(id), severity text NOT NULL,
    summary text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS ops.tickets (
    id bigserial PRIMARY KEY, host_id text NOT NULL REFERENCES ops.hosts(id), title text NOT NULL,
    severity text NOT NULL, idempotency_key text NOT NULL UNIQUE, run_id text NOT NULL,
    opened_at timestamptz NOT NULL DEFAULT now(), closed_at timestamptz);
CREATE TABLE IF NOT EXISTS ops.pages (
    id bigserial PRIMARY KEY, host_id text NOT NULL, pager text NOT NULL, message text NOT NULL,
    idempotency_key text NOT NULL UNIQUE, sent_at timestamptz NOT NULL DEFAULT now());
INSERT INTO ops.hosts (id, env, pager) VALUES
    ('web-1', 'production', 'team-web'), ('web-2', 'production', NULL), ('db-1', 'production', 'team-data')
ON CONFLICT (id) DO NOTHING;
INSERT INTO ops.alerts (host_id, severity, summary)
SELECT * FROM (VALUES
    ('web-1', 'high', 'outbound traffic to an unknown address'),
    ('web-2', 'high', 'new setuid binary in /tmp'),
    ('db-1', 'low', 'slow queries')) AS v(host_id, severity, summary)
WHERE NOT EXISTS (SELECT 1 FROM ops.alerts);
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ops_reader') THEN
        CREATE ROLE ops_reader NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ops_responder') THEN
        CREATE ROLE ops_responder NOLOGIN; END IF;
END $$;
GRANT CONNECT ON DATABASE shop TO ops_reader, ops_responder;
GRANT USAGE ON SCHEMA ops TO ops_reader, ops_responder;
GRANT SELECT ON ops.hosts, ops.alerts TO ops_reader;
GRANT INSERT ON ops.pages TO ops_reader;
-- ON CONFLICT (idempotency_key) needs SELECT on the conflict column.
GRANT SELECT (idempotency_key) ON ops.pages TO ops_reader;
GRANT USAGE ON SEQUENCE ops.pages_id_seq TO ops_reader;
GRANT SELECT ON ops.hosts, ops.tickets TO ops_responder;
GRANT INSERT ON ops.tickets TO ops_responder;
GRANT UPDATE (closed_at) ON ops.tickets TO ops_responder;
GRANT UPDATE (quarantined_at, quarantine_key) ON ops.hosts TO ops_responder;
GRANT USAGE ON SEQUENCE ops.tickets_id_seq TO ops_responder;
"""

READER = DatabaseSecret(role="ops-reader", database="shop", member_of=("ops_reader",), setup_sql=OPS_SQL)
RESPONDER = DatabaseSecret(role="ops-responder", database="shop", member_of=("ops_responder",), setup_sql=OPS_SQL)

_ARGS = ConfigDict(frozen=True, extra="forbid")
_HOST = Field(pattern=r"^[a-z0-9-]{1,40}$")


class HostArgs(BaseModel):
    model_config = _ARGS
    host_id: str = _HOST


class TicketArgs(BaseModel):
    model_config = _ARGS
    host_id: str = _HOST
    title: str = Field(min_length=1, max_length=200)
    severity: str = Field(pattern="^(low|high)$")


class QuarantineArgs(BaseModel):
    model_config = _ARGS
    host_id: str = _HOST
    reason: str = Field(min_length=1, max_length=500)


class UndoArgs(BaseModel):
    model_config = _ARGS
    idempotency_key: str = Field(min_length=1)


class PageArgs(BaseModel):
    model_config = _ARGS
    host_id: str = _HOST
    message: str = Field(min_length=1, max_length=1000)


class IncidentInput(BaseModel):
    model_config = _ARGS
    host_id: str = _HOST
    page: bool = False


DB = "shop"


@tool("signals.collect", secret=READER, resource="host_id", resource_type="Host")
def collect_signals(ctx: ToolContext, args: HostArgs) -> dict[str, Any]:
    """Read a host and its open alerts."""
    with ctx.connect(DB) as conn:
        host = conn.execute("SELECT id, env, quarantined_at FROM ops.hosts WHERE id = %s", (args.host_id,)).fetchone()
        if host is None:
            raise ToolError(f"unknown host {args.host_id}")
        alerts = conn.execute(
            "SELECT severity, summary FROM ops.alerts WHERE host_id = %s ORDER BY id", (args.host_id,)
        ).fetchall()
    high = [a[1] for a in alerts if a[0] == "high"]
    return {
        "host_id": host[0],
        "env": host[1],
        "quarantined": host[2] is not None,
        "alerts": len(alerts),
        "high_alerts": len(high),
        "worst": high[0] if high else (alerts[0][1] if alerts else None),
        "summary": f"{args.host_id}: {len(alerts)} alerts, {len(high)} high",
    }


@tool(
    "tickets.open",
    secret=RESPONDER,
    production=True,
    compensation="tickets.close",
    resource="host_id",
    resource_type="Host",
)
def open_ticket(ctx: ToolContext, args: TicketArgs) -> dict[str, Any]:
    """Open an incident ticket."""
    with ctx.connect(DB) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO ops.tickets (host_id, title, severity, idempotency_key, run_id) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            (args.host_id, args.title, args.severity, ctx.idempotency_key, ctx.run_id),
        )
        ticket = conn.execute(
            "SELECT id FROM ops.tickets WHERE idempotency_key = %s", (ctx.idempotency_key,)
        ).fetchone()
    if ticket is None:
        raise ToolError(f"ticket of {ctx.idempotency_key} vanished", retryable=True)
    return {"ticket_id": ticket[0], "summary": f"opened ticket {ticket[0]} ({args.severity})"}


@tool("tickets.close", secret=RESPONDER, production=True)
def close_ticket(ctx: ToolContext, args: UndoArgs) -> dict[str, Any]:
    """Close a ticket by its idempotency key."""
    if not ctx.owns(args.idempotency_key):
        raise ToolError(f"{args.idempotency_key} is not a step of run {ctx.run_id}")
    with ctx.connect(DB) as conn, conn.transaction():
        row = conn.execute(
            "UPDATE ops.tickets SET closed_at = now() WHERE idempotency_key = %s AND closed_at IS NULL RETURNING id",
            (args.idempotency_key,),
        ).fetchone()
    return {"summary": f"closed ticket {row[0]}" if row else "no open ticket to close"}


@tool(
    "host.quarantine",
    secret=RESPONDER,
    production=True,
    compensation="host.release",
    resource="host_id",
    resource_type="Host",
)
def quarantine(ctx: ToolContext, args: QuarantineArgs) -> dict[str, Any]:
    """Isolate a host from the network."""
    with ctx.connect(DB) as conn, conn.transaction():
        row = conn.execute(
            "UPDATE ops.hosts SET quarantined_at = now(), quarantine_key = %s WHERE id = %s "
            "AND (quarantined_at IS NULL OR quarantine_key = %s) RETURNING id",
            (ctx.idempotency_key, args.host_id, ctx.idempotency_key),
        ).fetchone()
    if row is None:
        raise ToolError(f"{args.host_id} is unknown or already quarantined by someone else")
    return {"summary": f"quarantined {args.host_id}"}


@tool("host.release", secret=RESPONDER, production=True)
def release(ctx: ToolContext, args: UndoArgs) -> dict[str, Any]:
    """Release a quarantine by its idempotency key."""
    if not ctx.owns(args.idempotency_key):
        raise ToolError(f"{args.idempotency_key} is not a step of run {ctx.run_id}")
    with ctx.connect(DB) as conn, conn.transaction():
        row = conn.execute(
            "UPDATE ops.hosts SET quarantined_at = NULL, quarantine_key = NULL WHERE quarantine_key = %s RETURNING id",
            (args.idempotency_key,),
        ).fetchone()
    return {"summary": f"released {row[0]}" if row else "no quarantine to release"}


@tool("oncall.page", secret=READER, egress=True, resource="host_id", resource_type="Host")
def page_oncall(ctx: ToolContext, args: PageArgs) -> dict[str, Any]:
    """Page the host's owning team."""
    with ctx.connect(DB) as conn, conn.transaction():
        row = conn.execute("SELECT pager FROM ops.hosts WHERE id = %s", (args.host_id,)).fetchone()
        if row is None or not row[0]:
            raise ToolError(f"{args.host_id} has no owning team to page")
        conn.execute(
            "INSERT INTO ops.pages (host_id, pager, message, idempotency_key) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            (args.host_id, row[0], args.message, ctx.idempotency_key),
        )
    return {"summary": f"paged {row[0]}"}


def plan(inp: IncidentInput, done: Sequence[Step]) -> ToolCall | None:
    tools = [d.tool for d in done]
    host = inp.host_id
    if "signals.collect" not in tools:
        return ToolCall(tool="signals.collect", args={"host_id": host}, rationale="what is going on")
    signals = done[tools.index("signals.collect")].result
    severity = "high" if signals.get("high_alerts") else "low"
    if "tickets.open" not in tools:
        title = f"{host}: {signals.get('worst') or 'no open alerts'}"
        return ToolCall(
            tool="tickets.open",
            args={"host_id": host, "title": title[:200], "severity": severity},
            rationale="track the incident",
        )
    if severity == "high" and "host.quarantine" not in tools:
        return ToolCall(
            tool="host.quarantine",
            args={"host_id": host, "reason": signals.get("worst") or "high alert"},
            rationale="contain a high-severity alert",
        )
    if inp.page and "oncall.page" not in tools:
        return ToolCall(
            tool="oncall.page",
            args={"host_id": host, "message": f"{host} quarantined; see ticket"},
            rationale="tell the owners",
        )
    return None


AGENT = Agent(
    name="incident-agent",
    owner="sre-platform",
    purpose="Triage a host's alerts: ticket, quarantine after on-call approval, page the owners.",
    tools=(collect_signals, open_ticket, close_ticket, quarantine, release, page_oncall),
    input_model=IncidentInput,
    planner=plan,
    max_steps=10,
    deadline=timedelta(hours=2),
    approval_ttl=timedelta(minutes=30),
)

AGENTS = [AGENT]
TOOLS = AGENT.tools
