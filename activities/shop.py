"""The demo `shop` tools (refund-agent), against PostgreSQL as the call's dynamic role.

Side effects carry the call's idempotency key (run id + step), so a retried call never acts twice.
"""

from __future__ import annotations

import re
from typing import Any

from lockgate.activities.tools import ToolContext, ToolError, implements

from lockgate.agents.refund import CloseArgs, NotifyArgs, OrderArgs, RefundArgs, ReverseArgs

__all__ = ["SHOP_DB"]

SHOP_DB = "shop"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@implements("orders.lookup")
def lookup_order(ctx: ToolContext, args: OrderArgs) -> dict[str, Any]:
    with ctx.connect(SHOP_DB) as conn:
        row = conn.execute(
            "SELECT id, customer_id, total_cents, status FROM orders WHERE id = %s", (args.order_id,)
        ).fetchone()
    if row is None:
        raise ToolError(f"order {args.order_id} not found")
    order_id, customer_id, total, status = row
    return {
        "order_id": order_id,
        "customer_id": customer_id,
        "total_cents": total,
        "status": status,
        "summary": f"order {order_id}: {total / 100:.2f}, {status}",
    }


@implements("refunds.issue")
def issue_refund(ctx: ToolContext, args: RefundArgs) -> dict[str, Any]:
    with ctx.connect(SHOP_DB) as conn, conn.transaction():
        order = conn.execute("SELECT total_cents FROM orders WHERE id = %s", (args.order_id,)).fetchone()
        if order is None:
            raise ToolError(f"order {args.order_id} not found")
        refunded = conn.execute(
            "SELECT coalesce(sum(amount_cents), 0) FROM refunds "
            "WHERE order_id = %s AND reversed_at IS NULL AND idempotency_key <> %s",
            (args.order_id, ctx.idempotency_key),
        ).fetchone()[0]
        if refunded + args.amount_cents > order[0]:
            raise ToolError(
                f"refund of {args.amount_cents} exceeds what is left of order {args.order_id} "
                f"({order[0] - refunded} of {order[0]} cents)"
            )
        row = conn.execute(
            "INSERT INTO refunds (order_id, amount_cents, reason, idempotency_key, run_id, step) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            (args.order_id, args.amount_cents, args.reason, ctx.idempotency_key, ctx.run_id, ctx.step),
        ).fetchone()
        if row is None:  # this call already refunded (a retried attempt): report that refund
            row = conn.execute("SELECT id FROM refunds WHERE idempotency_key = %s", (ctx.idempotency_key,)).fetchone()
    return {
        "refund_id": row[0],
        "order_id": args.order_id,
        "amount_cents": args.amount_cents,
        "idempotency_key": ctx.idempotency_key,
        "summary": f"refunded {args.amount_cents / 100:.2f} on {args.order_id} (refund {row[0]})",
    }


@implements("refunds.reverse")
def reverse_refund(ctx: ToolContext, args: ReverseArgs) -> dict[str, Any]:
    with ctx.connect(SHOP_DB) as conn, conn.transaction():
        row = conn.execute(
            "UPDATE refunds SET reversed_at = now() WHERE idempotency_key = %s AND reversed_at IS NULL RETURNING id",
            (args.idempotency_key,),
        ).fetchone()
    # Idempotent: reversing a refund that never happened, or was reversed already, is a no-op.
    if row is None:
        return {"reversed": False, "summary": f"nothing to reverse for {args.idempotency_key}"}
    return {"reversed": True, "refund_id": row[0], "summary": f"reversed refund {row[0]}"}


@implements("customers.profile")
def customer_profile(ctx: ToolContext, args: OrderArgs) -> dict[str, Any]:
    with ctx.connect(SHOP_DB) as conn:
        row = conn.execute(
            "SELECT c.id, c.name, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = %s",
            (args.order_id,),
        ).fetchone()
    if row is None:
        raise ToolError(f"order {args.order_id} not found")
    return {"customer_id": row[0], "name": row[1], "email": row[2], "summary": f"profile of {row[0]} (PII)"}


@implements("customer.notify")
def notify_customer(ctx: ToolContext, args: NotifyArgs) -> dict[str, Any]:
    with ctx.connect(SHOP_DB) as conn, conn.transaction():
        row = conn.execute(
            "SELECT c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = %s",
            (args.order_id,),
        ).fetchone()
        if row is None:
            raise ToolError(f"order {args.order_id} not found")
        if not _EMAIL.match(row[0]):
            raise ToolError(f"customer of {args.order_id} has no deliverable email address")
        conn.execute(
            "INSERT INTO notifications (order_id, email, message, idempotency_key) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            (args.order_id, row[0], args.message, ctx.idempotency_key),
        )
    return {"sent": True, "summary": f"notified the customer of {args.order_id}"}


@implements("accounts.close")
def close_account(ctx: ToolContext, args: CloseArgs) -> dict[str, Any]:
    with ctx.connect(SHOP_DB) as conn, conn.transaction():
        row = conn.execute(
            "UPDATE customers SET closed_at = coalesce(closed_at, now()) WHERE id = %s RETURNING id",
            (args.customer_id,),
        ).fetchone()
    if row is None:
        raise ToolError(f"customer {args.customer_id} not found")
    return {"closed": True, "summary": f"closed account {args.customer_id}"}
