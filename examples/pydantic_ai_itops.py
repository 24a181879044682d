"""A Pydantic AI IT-ops assistant on Temporal, governed by lockgate drop-in (the second Pydantic AI app).

Shaped unlike the bank example: the helpdesk's assistant looks up employee accounts (people's names
and emails: results the ledger must not keep) and locks accounts that look compromised. A lock of a
privileged account (`adm-*`) waits for the team's own approver group `it-security` (created with
`lockgate groups create it-security`, not a dev seed). A lock is undone by a compensation that
reads the forward call from the run's record (`ctx.forward`): no undo table of the app's own.

- durable with Pydantic AI's `TemporalDurability` capability; the model is a `FunctionModel`
  scripted by the ticket text, not an LLM;
- the directory lives in Postgres (database `itops`); each tool connects with its call's leased role.

The governance is the block marked `# lockgate` and the plugin line in `main`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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

    from lockgate import DatabaseSecret, ToolContext, ToolError, tool
    from lockgate.dropin import Govern, Governance, args_of, current_call


@dataclass
class HelpdeskDeps:
    """Who opened the ticket (deps cross into each tool's activity: plain data only)."""

    ticket: str


class TicketOutcome(BaseModel):
    reply: str
    """What the assistant tells the ticket's author"""
    locked: list[str]
    """The accounts it locked"""


def scripted_llm(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Stands in for the LLM: looks up each account the ticket names, then locks the ones it says
    are compromised."""
    prompt = next(str(p.content) for m in messages for p in m.parts if isinstance(p, UserPromptPart))
    results = [p for m in messages for p in m.parts if isinstance(p, (ToolReturnPart, RetryPromptPart))]
    said = [str(p.content) for p in results]
    plan = [
        ToolCallPart("lookup_account", {"username": who})
        if verb == "look up"
        else ToolCallPart("lock_account", {"username": who, "reason": "compromised"})
        for verb, who in re.findall(r"(look up|lock) ([\w-]+)", prompt)
    ]
    refused = any("lockgate:" in s for s in said)
    if len(results) < len(plan) and not refused:
        return ModelResponse(parts=[plan[len(results)]])
    locked = [
        str(call.args_as_dict()["username"])
        for call, text in zip(plan, said, strict=False)
        if call.tool_name == "lock_account" and text.strip("\"' ").startswith("locked")
    ]
    reply = f"{len(said)} step(s) done" + ("; refused: " + next(s for s in said if "lockgate:" in s) if refused else "")
    output = {"reply": reply, "locked": locked}
    return ModelResponse(
        parts=[ToolCallPart(info.output_tools[0].name, output)] if info.output_tools else [TextPart(reply)]
    )


helpdesk_agent = Agent(
    FunctionModel(scripted_llm),
    name="helpdesk_agent",
    deps_type=HelpdeskDeps,
    output_type=TicketOutcome,
    capabilities=[
        TemporalDurability(
            activity_config=ActivityConfig(
                start_to_close_timeout=timedelta(seconds=30),
                # An unknown account stays unknown on retry.
                retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=["ToolError"]),
            )
        )
    ],
    instructions="You are the IT helpdesk assistant. Look accounts up before acting; lock compromised accounts.",
)


@helpdesk_agent.tool
async def lookup_account(ctx: RunContext[HelpdeskDeps], username: str) -> dict[str, Any]:
    """The directory's record of an account: the person's name and email, their team, lock state."""
    with current_call().connect("itops") as conn:
        row = conn.execute(
            "SELECT full_name, email, team, locked_by IS NOT NULL FROM accounts WHERE username = %s", (username,)
        ).fetchone()
    if row is None:
        raise ToolError(f"no account {username}")
    return {"username": username, "full_name": row[0], "email": row[1], "team": row[2], "locked": row[3]}


@helpdesk_agent.tool
async def lock_account(ctx: RunContext[HelpdeskDeps], username: str, reason: str) -> str:
    """Locks an account (sessions end, sign-in refused) until IT unlocks it."""
    call = current_call()
    with call.connect("itops") as conn:
        # The call's idempotency key is the lock's owner: only this call's compensation lifts it.
        row = conn.execute(
            "UPDATE accounts SET locked_by = %s, lock_reason = %s WHERE username = %s "
            "AND (locked_by IS NULL OR locked_by = %s) RETURNING full_name, email",
            (call.idempotency_key, reason, username, call.idempotency_key),
        ).fetchone()
    if row is None:
        raise ToolError(f"{username} is unknown or already locked")
    return f"locked {username} ({row[0]} <{row[1]}>)"


@workflow.defn
class HelpdeskWorkflow:
    @workflow.run
    async def run(self, ticket: str) -> TicketOutcome:
        result = await helpdesk_agent.run(ticket, deps=HelpdeskDeps(ticket=ticket[:80]))
        return result.output


# lockgate: the tool declarations (the agent code above is unchanged by them) ---------------------
ITOPS = DatabaseSecret(
    role="itops-directory",
    database="itops",
    member_of=("itops_directory",),
    setup_sql="""
    CREATE TABLE IF NOT EXISTS accounts (
        username text PRIMARY KEY, full_name text NOT NULL, email text NOT NULL, team text NOT NULL,
        locked_by text, lock_reason text);
    INSERT INTO accounts VALUES
        ('ada', 'Ada Quillfeather', 'ada.quillfeather@helpdesk.example', 'payments', NULL, NULL),
        ('adm-grace', 'Grace Ostrowska-Lind', 'grace.ostrowska-lind@helpdesk.example', 'platform', NULL, NULL)
        ON CONFLICT DO NOTHING;
    DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'itops_directory') THEN CREATE ROLE itops_directory NOLOGIN; END IF;
    END $$;
    GRANT CONNECT ON DATABASE itops TO itops_directory;
    GRANT USAGE ON SCHEMA public TO itops_directory;
    GRANT SELECT, UPDATE ON accounts TO itops_directory;
    """,
)


class UnlockArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    idempotency_key: str = Field(min_length=1)


@tool("unlock_account", secret=ITOPS, production=True)
def unlock_account(ctx: ToolContext, args: UnlockArgs) -> dict[str, object]:
    """Undoes one `lock_account` call: which account comes from the run's record of that call
    (`ctx.forward.args`, exactly what its gate allowed), never from the caller. Idempotent."""
    if ctx.forward is None or not ctx.owns(args.idempotency_key):
        return {"summary": "not a lock of this run"}
    username = str(ctx.forward.args["username"])
    with ctx.connect("itops") as conn:
        done = conn.execute(
            "UPDATE accounts SET locked_by = NULL, lock_reason = NULL WHERE username = %s AND locked_by = %s",
            (username, args.idempotency_key),
        ).rowcount
    return {"summary": f"{username} unlocked" if done else f"{username} was not locked by this call"}


def replay_plugins() -> list[object]:
    """What `lockgate replay` needs beside lockgate's own to replay `HelpdeskWorkflow`."""
    from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin

    return [PydanticAIPlugin(), AgentPlugin(helpdesk_agent)]


GOVERNANCE = Governance(
    "helpdesk_agent",
    owner="it-platform",
    purpose="IT helpdesk: account lookups and locks (Pydantic AI, TemporalDurability).",
    workflows=(HelpdeskWorkflow,),
    replay_plugins=replay_plugins,
    tools={
        # People's names and emails: the ledger keeps only whether the account is locked and its team.
        "lookup_account": Govern(
            args=args_of(lookup_account), secret=ITOPS, data_class="regulated", summary=("locked", "team")
        ),
        # The result names the person: recorded as a fixed phrase, never the text.
        "lock_account": Govern(
            args=args_of(lock_account),
            secret=ITOPS,
            production=True,
            compensation=unlock_account,
            summary=lambda result: "account locked",
        ),
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
    async with Worker(
        client, task_queue="helpdesk", workflows=[HelpdeskWorkflow], plugins=[AgentPlugin(helpdesk_agent)]
    ):
        print(
            await client.execute_workflow(
                HelpdeskWorkflow.run, "Please look up ada, then lock ada", id="helpdesk-1", task_queue="helpdesk"
            )
        )


if __name__ == "__main__":
    import asyncio

    asyncio.run(main())
