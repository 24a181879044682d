"""report-agent: counts orders by status. The README's authoring example."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lockgate import Agent, DatabaseSecret, Step, ToolCall, ToolContext, tool

# A fresh Postgres login role for every call, member of the group role that holds the grants.
# `lockgate dev up` runs `setup_sql` and creates the Vault role from this declaration.
REPORTER = DatabaseSecret(
    role="shop-reporter",
    database="shop",
    member_of=("shop_reporter",),
    setup_sql="""
    DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shop_reporter') THEN
            CREATE ROLE shop_reporter NOLOGIN; END IF;
    END $$;
    GRANT CONNECT ON DATABASE shop TO shop_reporter;
    GRANT USAGE ON SCHEMA public TO shop_reporter;
    GRANT SELECT (id, status) ON orders TO shop_reporter;
    """,
)


class CountArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    status: str = Field(pattern="^(paid|refunded|all)$")


class ReportInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    status: str = "paid"


@tool("orders.count", secret=REPORTER, data_class="internal")
def count_orders(ctx: ToolContext, args: CountArgs) -> dict[str, Any]:
    """Count orders with a status."""
    with ctx.connect("shop") as conn:
        if args.status == "all":
            row = conn.execute("SELECT count(*) FROM orders").fetchone()
        else:
            row = conn.execute("SELECT count(*) FROM orders WHERE status = %s", (args.status,)).fetchone()
    n = row[0] if row else 0
    return {"count": n, "summary": f"{n} orders ({args.status})"}


def plan(inp: ReportInput, done: Sequence[Step]) -> ToolCall | None:
    if not done:
        return ToolCall(tool="orders.count", args={"status": inp.status})
    return None


AGENT = Agent(
    name="report-agent",
    owner="analytics",
    purpose="Count orders for the weekly report.",
    tools=(count_orders,),
    input_model=ReportInput,
    planner=plan,
    max_steps=3,
)
