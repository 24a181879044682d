"""Pydantic AI's bank support agent on Temporal, governed by lockgate drop-in.

From Pydantic AI's own examples: `pydantic_ai_examples/bank_support.py` (package
`pydantic-ai-examples` 2.62, the docs' "Tools & Dependency Injection" example), run on Temporal the
way Pydantic AI's Temporal docs show (the `TemporalDurability` capability, a workflow, `PydanticAIPlugin`,
`AgentPlugin`). Adapted only
to run here, offline and durable:

- the model is a `FunctionModel` scripted by the prompt, not an LLM;
- the customers live in Postgres (database `bank`) instead of an in-memory sqlite connection in the
  deps: on Temporal the deps cross into each tool's activity, so they must serialize; the tools
  connect with their call's leased credential (`current_call().connect`);
- `add_customer_name` runs in workflow code on Temporal (no I/O there), so the name comes with the deps;
- `block_card` is added: the docs' agent only *advises* blocking a card (`block_card` in its output),
  and this proof needs one tool with a side effect to compensate.

The governance is the block marked `# lockgate` (tool declarations) and the plugin line in `main`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityConfig

with workflow.unsafe.imports_passed_through():
    from pydantic_ai import Agent, RunContext
    from pydantic_ai.durable_exec.temporal import TemporalDurability
    from pydantic_ai.messages import (
        ModelMessage,
        ModelResponse,
        RetryPromptPart,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
        UserPromptPart,
    )
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from lockgate import DatabaseSecret, ToolContext, tool
    from lockgate.dropin import Govern, Governance, args_of, current_call


@dataclass
class DatabaseConn:
    """The bank's database, reached as the governed call's own short-lived role."""

    dbname: str = "bank"

    async def customer_balance(self, *, id: int) -> float:
        with current_call().connect(self.dbname) as conn:
            row = conn.execute("SELECT balance_cents FROM customers WHERE id = %s", (id,)).fetchone()
        if row:
            return row[0] / 100
        raise ValueError("Customer not found")

    async def block_card(self, *, id: int, reason: str) -> bool:
        call = current_call()
        with call.connect(self.dbname) as conn:
            # The call's idempotency key goes with its effect: that is what a compensation undoes.
            conn.execute(
                "INSERT INTO card_blocks (idempotency_key, customer_id, reason) VALUES (%s, %s, %s) "
                "ON CONFLICT (idempotency_key) DO NOTHING",
                (call.idempotency_key, id, reason),
            )
            done = conn.execute("UPDATE cards SET blocked = true WHERE customer_id = %s", (id,)).rowcount
        return done > 0


@dataclass
class SupportDependencies:
    customer_id: int
    customer_name: str
    db: DatabaseConn


class SupportOutput(BaseModel):
    support_advice: str
    """Advice returned to the customer"""
    block_card: bool
    """Whether to block their card or not"""
    risk: int
    """Risk level of query"""


def scripted_llm(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Stands in for the LLM: reads the customer's message and calls the tools a model would."""
    prompt = next(str(p.content) for m in messages for p in m.parts if isinstance(p, UserPromptPart)).lower()
    results = [p for m in messages for p in m.parts if isinstance(p, (ToolReturnPart, RetryPromptPart))]
    said = [str(p.content) for p in results]
    reason = next((r for r in ("fraud", "lost", "stolen") if r in prompt), "unwanted" if "block" in prompt else None)
    plan: list[ToolCallPart] = []
    if reason:
        plan.append(ToolCallPart("block_card", {"reason": reason}))
    if "balance" in prompt:
        plan.append(ToolCallPart("customer_balance", {}))
    refused = any("lockgate:" in s for s in said)
    if len(results) < len(plan) and not refused:
        return ModelResponse(parts=[plan[len(results)]])
    blocked = any("blocked" in s for s in said) and not refused
    advice = " ".join(said) if said else "How can I help?"
    output = {"support_advice": advice, "block_card": blocked, "risk": 8 if reason else 1}
    return ModelResponse(
        parts=[ToolCallPart(info.output_tools[0].name, output)] if info.output_tools else [TextPart(advice)]
    )


support_agent = Agent(
    FunctionModel(scripted_llm),
    name="support_agent",
    deps_type=SupportDependencies,
    output_type=SupportOutput,
    # Durable on Temporal: model requests and tools run as activities. A missing customer does not
    # appear on retry.
    capabilities=[
        TemporalDurability(
            activity_config=ActivityConfig(
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=["ValueError"]),
            )
        )
    ],
    instructions=(
        "You are a support agent in our bank, give the "
        "customer support and judge the risk level of their query. "
        "Reply using the customer's name."
    ),
)


@support_agent.instructions
async def add_customer_name(ctx: RunContext[SupportDependencies]) -> str:
    return f"The customer's name is {ctx.deps.customer_name!r}"


@support_agent.tool
async def customer_balance(ctx: RunContext[SupportDependencies]) -> str:
    """Returns the customer's current account balance."""
    balance = await ctx.deps.db.customer_balance(
        id=ctx.deps.customer_id,
    )
    return f"${balance:.2f}"


@support_agent.tool
async def block_card(ctx: RunContext[SupportDependencies], reason: str) -> str:
    """Blocks the customer's card (lost, stolen, fraud)."""
    done = await ctx.deps.db.block_card(id=ctx.deps.customer_id, reason=reason)
    return "card blocked" if done else "no card to block"


class SupportRequest(BaseModel):
    model_config = ConfigDict(frozen=True)
    customer_id: int
    customer_name: str
    prompt: str


@workflow.defn
class BankSupportWorkflow:
    @workflow.run
    async def run(self, request: SupportRequest) -> SupportOutput:
        deps = SupportDependencies(
            customer_id=request.customer_id, customer_name=request.customer_name, db=DatabaseConn()
        )
        result = await support_agent.run(request.prompt, deps=deps)
        return result.output


# lockgate: the tool declarations (the agent code above is unchanged by them) ---------------------
BANK_READER = DatabaseSecret(
    role="bank-reader",
    database="bank",
    member_of=("bank_reader",),
    setup_sql="""
    CREATE TABLE IF NOT EXISTS customers (id int PRIMARY KEY, name text NOT NULL, balance_cents bigint NOT NULL);
    CREATE TABLE IF NOT EXISTS cards (customer_id int PRIMARY KEY, blocked boolean NOT NULL DEFAULT false);
    CREATE TABLE IF NOT EXISTS card_blocks (
        idempotency_key text PRIMARY KEY, customer_id int NOT NULL, reason text NOT NULL,
        at timestamptz NOT NULL DEFAULT now(), undone_at timestamptz);
    INSERT INTO customers VALUES (123, 'John', 12345) ON CONFLICT DO NOTHING;
    INSERT INTO cards VALUES (123, false), (200, false) ON CONFLICT DO NOTHING;
    DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bank_reader') THEN CREATE ROLE bank_reader NOLOGIN; END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bank_writer') THEN CREATE ROLE bank_writer NOLOGIN; END IF;
    END $$;
    GRANT CONNECT ON DATABASE bank TO bank_reader, bank_writer;
    GRANT USAGE ON SCHEMA public TO bank_reader, bank_writer;
    GRANT SELECT ON customers TO bank_reader;
    GRANT SELECT, UPDATE ON cards TO bank_writer;
    GRANT SELECT, INSERT, UPDATE ON card_blocks TO bank_writer;
    """,
)
BANK_WRITER = DatabaseSecret(
    role="bank-writer", database="bank", member_of=("bank_writer",), setup_sql=BANK_READER.setup_sql
)


class UnblockArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    idempotency_key: str = Field(min_length=1)


@tool("unblock_card", secret=BANK_WRITER, production=True)
def unblock_card(ctx: ToolContext, args: UnblockArgs) -> dict[str, object]:
    """Undoes one `block_card` call (idempotent: undoing a call that never blocked is a no-op)."""
    if not ctx.owns(args.idempotency_key):
        return {"summary": "not a step of this run"}
    with ctx.connect("bank") as conn:
        row = conn.execute(
            "UPDATE card_blocks SET undone_at = now() WHERE idempotency_key = %s AND undone_at IS NULL "
            "RETURNING customer_id",
            (args.idempotency_key,),
        ).fetchone()
        if row is None:
            return {"summary": "nothing to unblock"}
        conn.execute("UPDATE cards SET blocked = false WHERE customer_id = %s", (row[0],))
    return {"summary": f"card of customer {row[0]} unblocked"}


def replay_plugins() -> list[object]:
    """What `lockgate replay` needs beside lockgate's own to replay `BankSupportWorkflow`."""
    from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin

    return [PydanticAIPlugin(), AgentPlugin(support_agent)]


GOVERNANCE = Governance(
    "support_agent",
    owner="support-platform",
    purpose="Bank customer support (Pydantic AI example).",
    workflows=(BankSupportWorkflow,),
    replay_plugins=replay_plugins,
    tools={
        "customer_balance": Govern(secret=BANK_READER),
        "block_card": Govern(args=args_of(block_card), secret=BANK_WRITER, production=True, compensation=unblock_card),
    },
)


async def main() -> None:  # pragma: no cover - the walkthrough; tests drive the same pieces
    from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
    from temporalio.client import Client
    from temporalio.worker import Worker

    from lockgate import LockgatePlugin

    client = await Client.connect(
        "localhost:7233",
        plugins=[PydanticAIPlugin(), LockgatePlugin(govern=[GOVERNANCE])],  # lockgate: the plugin line
    )
    async with Worker(client, task_queue="bank", workflows=[BankSupportWorkflow], plugins=[AgentPlugin(support_agent)]):
        output = await client.execute_workflow(
            BankSupportWorkflow.run,
            SupportRequest(customer_id=123, customer_name="John", prompt="What is my balance?"),
            id="bank-support-1",
            task_queue="bank",
        )
        print(output)


if __name__ == "__main__":
    import asyncio

    asyncio.run(main())
