"""report-agent: counts orders by status. The README's authoring example."""

from __future__ import annotations

from typing import Any

from lockgate.activities.tools import ToolContext, implements
from pydantic import BaseModel, ConfigDict, Field

from lockgate.models import ToolCall
from lockgate.spec import AgentSpec, ToolSpec, registry


class CountArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    status: str = Field(pattern="^(paid|refunded|all)$")


class ReportInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    status: str = "paid"


COUNT = ToolSpec(
    name="orders.count",
    description="Count orders with a status.",
    args=CountArgs,
    secret="database/creds/shop-reader",  # a fresh Postgres role for every call
    data_class="internal",
)


@implements("orders.count")
def count_orders(ctx: ToolContext, args: CountArgs) -> dict[str, Any]:
    with ctx.connect("shop") as conn:
        if args.status == "all":
            (n,) = conn.execute("SELECT count(*) FROM orders").fetchone()
        else:
            (n,) = conn.execute("SELECT count(*) FROM orders WHERE status = %s", (args.status,)).fetchone()
    return {"count": n, "summary": f"{n} orders ({args.status})"}


def plan(inp: dict[str, Any], done: list[dict[str, Any]]) -> ToolCall | None:
    if not done:
        return ToolCall(tool="orders.count", args={"status": inp.get("status", "paid")})
    return None


AGENT = registry.add(
    AgentSpec(
        name="report-agent",
        owner="analytics",
        purpose="Count orders for the weekly report.",
        tools=(COUNT,),
        input_model=ReportInput,
        planner=plan,
        max_steps=3,
    )
)
