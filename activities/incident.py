"""The incident-agent's tools, against the `ops` schema as the call's dynamic role."""

from __future__ import annotations

from typing import Any

from lockgate.activities.tools import ToolContext, ToolError, implements

from lockgate.agents.incident import HostArgs, PageArgs, QuarantineArgs, TicketArgs, UndoArgs

DB = "shop"


@implements("signals.collect")
def collect_signals(ctx: ToolContext, args: HostArgs) -> dict[str, Any]:
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


@implements("tickets.open")
def open_ticket(ctx: ToolContext, args: TicketArgs) -> dict[str, Any]:
    with ctx.connect(DB) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO ops.tickets (host_id, title, severity, idempotency_key, run_id) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            (args.host_id, args.title, args.severity, ctx.idempotency_key, ctx.run_id),
        )
        ticket = conn.execute(
            "SELECT id FROM ops.tickets WHERE idempotency_key = %s", (ctx.idempotency_key,)
        ).fetchone()
    return {"ticket_id": ticket[0], "summary": f"opened ticket {ticket[0]} ({args.severity})"}


@implements("tickets.close")
def close_ticket(ctx: ToolContext, args: UndoArgs) -> dict[str, Any]:
    with ctx.connect(DB) as conn, conn.transaction():
        row = conn.execute(
            "UPDATE ops.tickets SET closed_at = now() WHERE idempotency_key = %s AND closed_at IS NULL RETURNING id",
            (args.idempotency_key,),
        ).fetchone()
    return {"summary": f"closed ticket {row[0]}" if row else "no open ticket to close"}


@implements("host.quarantine")
def quarantine(ctx: ToolContext, args: QuarantineArgs) -> dict[str, Any]:
    with ctx.connect(DB) as conn, conn.transaction():
        row = conn.execute(
            "UPDATE ops.hosts SET quarantined_at = now(), quarantine_key = %s WHERE id = %s "
            "AND (quarantined_at IS NULL OR quarantine_key = %s) RETURNING id",
            (ctx.idempotency_key, args.host_id, ctx.idempotency_key),
        ).fetchone()
    if row is None:
        raise ToolError(f"{args.host_id} is unknown or already quarantined by someone else")
    return {"summary": f"quarantined {args.host_id}"}


@implements("host.release")
def release(ctx: ToolContext, args: UndoArgs) -> dict[str, Any]:
    with ctx.connect(DB) as conn, conn.transaction():
        row = conn.execute(
            "UPDATE ops.hosts SET quarantined_at = NULL, quarantine_key = NULL WHERE quarantine_key = %s RETURNING id",
            (args.idempotency_key,),
        ).fetchone()
    return {"summary": f"released {row[0]}" if row else "no quarantine to release"}


@implements("oncall.page")
def page(ctx: ToolContext, args: PageArgs) -> dict[str, Any]:
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
