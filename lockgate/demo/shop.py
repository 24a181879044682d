"""`refund-agent`: customer-support refunds (DESIGN.md "Demo agent"), declared with `lockgate` alone.

Tools act on the `shop` database as a fresh Postgres role per call. Side effects carry the call's
idempotency key (run id + step), so a retried call never acts twice and a compensation finds exactly
its own step's effect.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lockgate import Agent, DatabaseSecret, Step, ToolCall, ToolContext, ToolError, shown, tool

__all__ = ["AGENT", "AGENTS", "READER", "REFUNDER", "RefundInput", "plan"]

# The demo's `shop` database: what `lockgate dev up` creates before the roles (idempotent).
SHOP_SQL = """
CREATE TABLE IF NOT EXISTS customers (
    id text PRIMARY KEY, name text NOT NULL, email text NOT NULL, closed_at timestamptz);
CREATE TABLE IF NOT EXISTS orders (
    id text PRIMARY KEY, customer_id text NOT NULL REFERENCES customers(id),
    total_cents integer NOT NULL, status text NOT NULL DEFAULT 'paid');
CREATE TABLE IF NOT EXISTS refunds (
    id bigserial PRIMARY KEY, order_id text NOT NULL REFERENCES orders(id),
    amount_cents integer NOT NULL CHECK (amount_cents > 0), reason text NOT NULL DEFAULT '',
    idempotency_key text NOT NULL UNIQUE, run_id text NOT NULL, step integer NOT NULL,
    created_by text NOT NULL DEFAULT current_user, created_at timestamptz NOT NULL DEFAULT now(),
    reversed_at timestamptz);
CREATE TABLE IF NOT EXISTS notifications (
    id bigserial PRIMARY KEY, order_id text NOT NULL REFERENCES orders(id),
    email text NOT NULL, message text NOT NULL, idempotency_key text NOT NULL UNIQUE,
    sent_at timestamptz NOT NULL DEFAULT now());
INSERT INTO customers (id, name, email) VALUES
    ('C-501', 'Ada Lovelace', 'ada@example.com'),
    ('C-502', 'Grace Hopper', 'grace@example.com'),
    ('C-503', 'Alan Turing', 'not-an-email')
ON CONFLICT (id) DO NOTHING;
INSERT INTO orders (id, customer_id, total_cents) VALUES
    ('A-1001', 'C-501', 2500), ('A-1002', 'C-502', 45000), ('A-1003', 'C-503', 3000)
ON CONFLICT (id) DO NOTHING;
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shop_reader') THEN
        CREATE ROLE shop_reader NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shop_refunder') THEN
        CREATE ROLE shop_refunder NOLOGIN; END IF;
END $$;
REVOKE ALL ON DATABASE shop FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE shop TO shop_reader, shop_refunder;
GRANT USAGE ON SCHEMA public TO shop_reader, shop_refunder;
GRANT SELECT ON customers, orders TO shop_reader;
GRANT INSERT ON notifications TO shop_reader;
-- ON CONFLICT (idempotency_key) needs SELECT on the conflict column.
GRANT SELECT (idempotency_key) ON notifications TO shop_reader;
GRANT USAGE ON SEQUENCE notifications_id_seq TO shop_reader;
GRANT SELECT ON orders, refunds TO shop_refunder;
GRANT SELECT (id, closed_at), UPDATE (closed_at) ON customers TO shop_refunder;
GRANT INSERT ON refunds TO shop_refunder;
GRANT UPDATE (reversed_at) ON refunds TO shop_refunder;
GRANT USAGE ON SEQUENCE refunds_id_seq TO shop_refunder;
"""

READER = DatabaseSecret(role="shop-reader", database="shop", member_of=("shop_reader",), setup_sql=SHOP_SQL)
REFUNDER = DatabaseSecret(role="shop-refunds", database="shop", member_of=("shop_refunder",), setup_sql=SHOP_SQL)

_ARGS = ConfigDict(frozen=True, extra="forbid")
_ORDER_ID = Field(pattern=r"^[A-Z]-\d{4}$", description="order id, e.g. A-1001", json_schema_extra=shown(id_of="order"))
_AMOUNT = Field(gt=0, description="amount in cents", json_schema_extra=shown(money="EUR"))


class OrderArgs(BaseModel):
    model_config = _ARGS
    order_id: str = _ORDER_ID


class RefundArgs(BaseModel):
    model_config = _ARGS
    order_id: str = _ORDER_ID
    amount_cents: int = _AMOUNT
    reason: str = Field(default="", max_length=500)


class ReverseArgs(BaseModel):
    model_config = _ARGS
    idempotency_key: str = Field(min_length=1)


class NotifyArgs(BaseModel):
    model_config = _ARGS
    order_id: str = _ORDER_ID
    message: str = Field(min_length=1, max_length=2000)


class CloseArgs(BaseModel):
    model_config = _ARGS
    customer_id: str = Field(min_length=1, json_schema_extra=shown(id_of="customer"))
    reason: str = Field(default="", max_length=500)


class RefundInput(BaseModel):
    model_config = _ARGS
    order_id: str = _ORDER_ID
    amount_cents: int = Field(gt=0)
    reason: str = Field(default="", max_length=500)
    notify: bool = False


SHOP_DB = "shop"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@tool("orders.lookup", secret=READER, resource="order_id", resource_type="Order")
def lookup_order(ctx: ToolContext, args: OrderArgs) -> dict[str, Any]:
    """Read an order and its customer."""
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


@tool(
    "refunds.issue",
    secret=REFUNDER,
    production=True,
    compensation="refunds.reverse",
    cost_arg="amount_cents",
    resource="order_id",
    resource_type="Order",
)
def issue_refund(ctx: ToolContext, args: RefundArgs) -> dict[str, Any]:
    """Refund (part of) an order."""
    with ctx.connect(SHOP_DB) as conn, conn.transaction():
        order = conn.execute("SELECT total_cents FROM orders WHERE id = %s", (args.order_id,)).fetchone()
        if order is None:
            raise ToolError(f"order {args.order_id} not found")
        total = conn.execute(
            "SELECT coalesce(sum(amount_cents), 0) FROM refunds "
            "WHERE order_id = %s AND reversed_at IS NULL AND idempotency_key <> %s",
            (args.order_id, ctx.idempotency_key),
        ).fetchone()
        refunded = total[0] if total else 0
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
    if row is None:
        raise ToolError(f"the refund of {ctx.idempotency_key} vanished", retryable=True)
    return {
        "refund_id": row[0],
        "order_id": args.order_id,
        "amount_cents": args.amount_cents,
        "idempotency_key": ctx.idempotency_key,
        "summary": f"refunded {args.amount_cents / 100:.2f} on {args.order_id} (refund {row[0]})",
    }


@tool("refunds.reverse", secret=REFUNDER, production=True)
def reverse_refund(ctx: ToolContext, args: ReverseArgs) -> dict[str, Any]:
    """Reverse a refund by its idempotency key."""
    if not ctx.owns(args.idempotency_key):
        # Compensations undo this run's own steps only, never another run's refund.
        raise ToolError(f"{args.idempotency_key} is not a step of run {ctx.run_id}")
    with ctx.connect(SHOP_DB) as conn, conn.transaction():
        row = conn.execute(
            "UPDATE refunds SET reversed_at = now() WHERE idempotency_key = %s AND reversed_at IS NULL RETURNING id",
            (args.idempotency_key,),
        ).fetchone()
    # Idempotent: reversing a refund that never happened, or was reversed already, is a no-op.
    if row is None:
        return {"reversed": False, "summary": f"nothing to reverse for {args.idempotency_key}"}
    return {"reversed": True, "refund_id": row[0], "summary": f"reversed refund {row[0]}"}


@tool("customers.profile", secret=READER, data_class="regulated", resource="order_id", resource_type="Order")
def customer_profile(ctx: ToolContext, args: OrderArgs) -> dict[str, Any]:
    """Read the customer's profile (PII)."""
    with ctx.connect(SHOP_DB) as conn:
        row = conn.execute(
            "SELECT c.id, c.name, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = %s",
            (args.order_id,),
        ).fetchone()
    if row is None:
        raise ToolError(f"order {args.order_id} not found")
    return {"customer_id": row[0], "name": row[1], "email": row[2], "summary": f"profile of {row[0]} (PII)"}


@tool("customer.notify", secret=READER, egress=True, resource="order_id", resource_type="Order")
def notify_customer(ctx: ToolContext, args: NotifyArgs) -> dict[str, Any]:
    """Send the customer a message."""
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


@tool(
    "accounts.close",
    secret=REFUNDER,
    production=True,
    reversible=False,
    resource="customer_id",
    resource_type="Customer",
)
def close_account(ctx: ToolContext, args: CloseArgs) -> dict[str, Any]:
    """Close the customer's account."""
    with ctx.connect(SHOP_DB) as conn, conn.transaction():
        row = conn.execute(
            "UPDATE customers SET closed_at = coalesce(closed_at, now()) WHERE id = %s RETURNING id",
            (args.customer_id,),
        ).fetchone()
    if row is None:
        raise ToolError(f"customer {args.customer_id} not found")
    return {"closed": True, "summary": f"closed account {args.customer_id}"}


def plan(inp: RefundInput, done: Sequence[Step]) -> ToolCall | None:
    """Scripted planner: look the order up, refund it, and (with notify) tell the customer."""
    tools = [d.tool for d in done]
    order_id = inp.order_id
    if "orders.lookup" not in tools:
        return ToolCall(tool="orders.lookup", args={"order_id": order_id}, rationale="check the order")
    if "refunds.issue" not in tools:
        args = {"order_id": order_id, "amount_cents": inp.amount_cents, "reason": inp.reason}
        return ToolCall(tool="refunds.issue", args=args, rationale="refund as requested")
    if inp.notify:
        if "customers.profile" not in tools:
            return ToolCall(
                tool="customers.profile", args={"order_id": order_id}, rationale="find how to reach the customer"
            )
        if "customer.notify" not in tools:
            amount = inp.amount_cents / 100
            message = f"Your refund of {amount:.2f} for order {order_id} is on its way."
            return ToolCall(
                tool="customer.notify", args={"order_id": order_id, "message": message}, rationale="tell the customer"
            )
    return None


AGENT = Agent(
    name="refund-agent",
    owner="support-platform",
    purpose="Issue customer refunds for shop orders and tell the customer.",
    tools=(lookup_order, issue_refund, reverse_refund, customer_profile, notify_customer, close_account),
    input_model=RefundInput,
    planner=plan,
    max_steps=10,
    budget=200000,
    deadline=timedelta(hours=1),
    min_confidence=0.7,
    rate_limits={"refunds.issue": (3, timedelta(hours=1))},
    escalations={"confidence": "support-leads", "budget": "finance"},
    taint_approver="support-leads",
)

AGENTS = [AGENT]
TOOLS = AGENT.tools
