"""`refund-agent`: customer-support refunds (DESIGN.md "Demo agent"). Declarations only, no I/O.

The tools' implementations are in `activities/shop.py`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lockgate.models import ToolCall
from lockgate.spec import AgentSpec, ToolSpec, registry

__all__ = ["AGENT", "RefundInput", "plan"]

_ARGS = ConfigDict(frozen=True, extra="forbid")
_ORDER_ID = Field(pattern=r"^[A-Z]-\d{4}$", description="order id, e.g. A-1001")


class OrderArgs(BaseModel):
    model_config = _ARGS
    order_id: str = _ORDER_ID


class RefundArgs(BaseModel):
    model_config = _ARGS
    order_id: str = _ORDER_ID
    amount_cents: int = Field(gt=0)
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
    customer_id: str = Field(min_length=1)
    reason: str = Field(default="", max_length=500)


class RefundInput(BaseModel):
    model_config = _ARGS
    order_id: str = _ORDER_ID
    amount_cents: int = Field(gt=0)
    reason: str = Field(default="", max_length=500)
    notify: bool = False


READER = "database/creds/shop-reader"
REFUNDER = "database/creds/shop-refunds"

TOOLS = (
    ToolSpec(
        name="orders.lookup",
        description="Read an order and its customer.",
        args=OrderArgs,
        secret=READER,
        data_class="internal",
    ),
    ToolSpec(
        name="refunds.issue",
        description="Refund (part of) an order.",
        args=RefundArgs,
        secret=REFUNDER,
        production=True,
        data_class="internal",
        compensation="refunds.reverse",
        cost_arg="amount_cents",
    ),
    ToolSpec(
        name="refunds.reverse",
        description="Reverse a refund by its idempotency key.",
        args=ReverseArgs,
        secret=REFUNDER,
        production=True,
        data_class="internal",
    ),
    ToolSpec(
        name="customers.profile",
        description="Read the customer's profile (PII).",
        args=OrderArgs,
        secret=READER,
        data_class="regulated",
    ),
    ToolSpec(
        name="customer.notify",
        description="Send the customer a message.",
        args=NotifyArgs,
        secret=READER,
        egress=True,
        data_class="internal",
    ),
    ToolSpec(
        name="accounts.close",
        description="Close the customer's account.",
        args=CloseArgs,
        secret=REFUNDER,
        production=True,
        reversible=False,
        data_class="internal",
    ),
)


def plan(inp: dict[str, Any], done: list[dict[str, Any]]) -> ToolCall | None:
    """Scripted planner: look the order up, refund it, and (with notify) tell the customer."""
    tools = [d["tool"] for d in done]
    order_id = inp["order_id"]
    if "orders.lookup" not in tools:
        return ToolCall(tool="orders.lookup", args={"order_id": order_id}, rationale="check the order")
    if "refunds.issue" not in tools:
        args = {"order_id": order_id, "amount_cents": inp["amount_cents"], "reason": inp.get("reason", "")}
        return ToolCall(tool="refunds.issue", args=args, rationale="refund as requested")
    if inp.get("notify"):
        if "customers.profile" not in tools:
            return ToolCall(
                tool="customers.profile", args={"order_id": order_id}, rationale="find how to reach the customer"
            )
        if "customer.notify" not in tools:
            amount = inp["amount_cents"] / 100
            message = f"Your refund of {amount:.2f} for order {order_id} is on its way."
            return ToolCall(
                tool="customer.notify", args={"order_id": order_id, "message": message}, rationale="tell the customer"
            )
    return None


AGENT = registry.add(
    AgentSpec(
        name="refund-agent",
        owner="support-platform",
        purpose="Issue customer refunds for shop orders and tell the customer.",
        tools=TOOLS,
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
)
