"""An OpenAI Agents on-call assistant on Temporal, governed by lockgate drop-in (the second OpenAI
Agents app).

Shaped unlike the airline example: one agent with plain function tools (run in workflow code:
`service_health`, `who_is_on_call`) and activity tools (`activity_as_tool`: `page_engineer`,
`restart_service`). The results carry people's names, phone numbers and hosts the ledger must not
keep; each tool's `Govern(summary=...)` chooses what it does keep. A restart waits for an operator; a
page is undone, if the run fails afterwards, by a compensation that reads the forward call from the
run's record (`ctx.forward`).

- the model is a scripted `Model` behind the plugin's model provider, not an LLM;
- the rota and the pages live in Postgres (database `oncall`); activity tools connect with their
  call's leased role.

The governance is the block marked `# lockgate` and the plugin line in `main`.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from agents import Agent, ItemHelpers, MessageOutputItem, Runner, function_tool
    from temporalio.openai_agents.testing import ResponseBuilders, TestModel
    from temporalio.openai_agents.workflow import activity_as_tool

    from lockgate import DatabaseSecret, ToolContext, ToolError, tool
    from lockgate.dropin import Govern, Governance, args_of, current_call

# The status page's view (a function tool reads it in workflow code: no I/O, no secret).
_STATUS = {
    "payments": {"status": "degraded", "error_rate": 0.31, "dashboard_owner": "Linnea Brightwater-Oyelaran"},
    "search": {"status": "ok", "error_rate": 0.0, "dashboard_owner": "Tomasz Quellmark"},
}
# Who carries the pager this week (in workflow code: the rota is deployed with the app).
_ROTA = {"payments": "Linnea Brightwater-Oyelaran (+1 555 0100 7731)", "search": "Tomasz Quellmark (+1 555 0100 4412)"}


# Function tools run in workflow code: `async def` (the SDK runs a plain `def` in a thread, which a
# workflow cannot start).
@function_tool
async def service_health(service: str) -> dict[str, Any]:
    """The status page's view of a service: status, error rate, the dashboard's owner."""
    return {"service": service, **_STATUS.get(service, {"status": "unknown"})}


@function_tool
async def who_is_on_call(service: str) -> str:
    """Who carries the pager for a service this week, with their phone number."""
    return _ROTA.get(service, "nobody on the rota")


@activity.defn
async def page_engineer(service: str, message: str) -> str:
    """Pages the service's on-call engineer with a message.

    Args:
        service: The service that needs a human.
        message: What the engineer reads on the pager.
    """
    call = current_call()
    with call.connect("oncall") as conn:
        row = conn.execute("SELECT engineer, pager FROM rota WHERE service = %s", (service,)).fetchone()
        if row is None:
            raise ToolError(f"no rota for {service}")
        # The call's idempotency key goes with its effect: the compensation cancels exactly this page.
        conn.execute(
            "INSERT INTO pages (idempotency_key, service, message) VALUES (%s, %s, %s) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            (call.idempotency_key, service, message),
        )
    return f"paged {row[0]} on {row[1]}"


@activity.defn
async def restart_service(service: str) -> str:
    """Restarts a service's pods (rolling).

    Args:
        service: The service to restart.
    """
    call = current_call()
    with call.connect("oncall") as conn:
        row = conn.execute(
            "INSERT INTO restarts (idempotency_key, service) SELECT %s, service FROM rota WHERE service = %s "
            "ON CONFLICT (idempotency_key) DO UPDATE SET service = EXCLUDED.service RETURNING "
            "(SELECT host FROM rota WHERE service = %s)",
            (call.idempotency_key, service, service),
        ).fetchone()
    if row is None:
        raise ToolError(f"no such service {service}")
    return f"restarted {service} on {row[0]}"


oncall_agent = Agent(
    name="On-call Assistant",
    instructions="You help the on-call engineer: check services, find who is on call, page them, restart services.",
    tools=[
        service_health,
        who_is_on_call,
        activity_as_tool(page_engineer, start_to_close_timeout=timedelta(seconds=30)),
        activity_as_tool(restart_service, start_to_close_timeout=timedelta(seconds=30)),
    ],
)


@workflow.defn
class OnCallWorkflow:
    @workflow.run
    async def run(self, alert: str) -> list[str]:
        result = await Runner.run(oncall_agent, alert)
        return [ItemHelpers.text_message_output(i) for i in result.new_items if isinstance(i, MessageOutputItem)]


_COMMANDS = {"check": "service_health", "who is on call for": "who_is_on_call", "page": "page_engineer"}


class ScriptedModel(TestModel):
    """Stands in for the LLM: does what the alert asks, one tool call at a time, in order."""

    def __init__(self) -> None:
        super().__init__(lambda: ResponseBuilders.output_message(""))

    async def get_response(self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any) -> Any:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        text = str(items[0]["content"])
        outputs = [i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
        plan = []
        for verb, service in re.findall(r"(check|who is on call for|page|restart) ([\w-]+)", text):
            if verb == "restart":
                plan.append(("restart_service", {"service": service}))
            elif verb == "page":
                plan.append(("page_engineer", {"service": service, "message": f"{service} needs you"}))
            else:
                plan.append((_COMMANDS[verb], {"service": service}))
        if len(outputs) < len(plan):
            name, args = plan[len(outputs)]
            return ResponseBuilders.tool_call(json.dumps(args), name, call_id=f"call-{len(items)}")
        return ResponseBuilders.output_message(f"done: {len(outputs)} step(s)")


# lockgate: the tool declarations (the agent code above is unchanged by them) ---------------------
ONCALL = DatabaseSecret(
    role="oncall-pager",
    database="oncall",
    member_of=("oncall_pager",),
    setup_sql="""
    CREATE TABLE IF NOT EXISTS rota (service text PRIMARY KEY, engineer text NOT NULL, pager text NOT NULL, host text NOT NULL);
    CREATE TABLE IF NOT EXISTS pages (
        idempotency_key text PRIMARY KEY, service text NOT NULL, message text NOT NULL,
        at timestamptz NOT NULL DEFAULT now(), cancelled_at timestamptz);
    CREATE TABLE IF NOT EXISTS restarts (idempotency_key text PRIMARY KEY, service text NOT NULL);
    INSERT INTO rota VALUES
        ('payments', 'Linnea Brightwater-Oyelaran', '+1 555 0100 7731', 'pay-7f3k.prod.internal'),
        ('search', 'Tomasz Quellmark', '+1 555 0100 4412', 'srch-2b9q.prod.internal')
        ON CONFLICT DO NOTHING;
    DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'oncall_pager') THEN CREATE ROLE oncall_pager NOLOGIN; END IF;
    END $$;
    GRANT CONNECT ON DATABASE oncall TO oncall_pager;
    GRANT USAGE ON SCHEMA public TO oncall_pager;
    GRANT SELECT ON rota TO oncall_pager;
    GRANT SELECT, INSERT, UPDATE ON pages, restarts TO oncall_pager;
    """,
)


class CancelArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    idempotency_key: str = Field(min_length=1)


@tool("cancel_page", secret=ONCALL, production=True)
def cancel_page(ctx: ToolContext, args: CancelArgs) -> dict[str, object]:
    """Undoes one `page_engineer` call (a follow-up "stand down" page): the service comes from the
    run's record of that call (`ctx.forward.args`), never from the caller. Idempotent."""
    if ctx.forward is None or not ctx.owns(args.idempotency_key):
        return {"summary": "not a page of this run"}
    service = str(ctx.forward.args["service"])
    with ctx.connect("oncall") as conn:
        done = conn.execute(
            "UPDATE pages SET cancelled_at = now() WHERE idempotency_key = %s AND service = %s AND cancelled_at IS NULL",
            (args.idempotency_key, service),
        ).rowcount
    return {"summary": f"page for {service} cancelled" if done else "nothing to cancel"}


def replay_plugins() -> list[object]:
    """What `lockgate replay` needs beside lockgate's own to replay `OnCallWorkflow`."""
    from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
    from temporalio.openai_agents.testing import TestModelProvider

    return [
        OpenAIAgentsPlugin(
            model_params=ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30)),
            model_provider=TestModelProvider(ScriptedModel()),
        )
    ]


GOVERNANCE = Governance(
    "On-call Assistant",
    owner="sre-platform",
    purpose="On-call assistant: service checks, pages, restarts (OpenAI Agents).",
    workflows=(OnCallWorkflow,),
    replay_plugins=replay_plugins,
    tools={
        # Only the status and error rate are kept: the dashboard's owner is a person.
        "service_health": Govern(
            args=args_of(service_health), data_class="internal", summary=("service", "status", "error_rate")
        ),
        # A colleague's name and work phone: nothing of the result is kept (the default). Internal,
        # not regulated: a regulated read would taint the run, and the page (egress) would then
        # wait for an approval.
        "who_is_on_call": Govern(args=args_of(who_is_on_call), data_class="internal"),
        "page_engineer": Govern(
            args=args_of(page_engineer),
            secret=ONCALL,
            egress=True,
            compensation=cancel_page,
            summary=lambda result: "paged" if str(result).startswith("paged") else "not paged",
        ),
        "restart_service": Govern(args=args_of(restart_service), secret=ONCALL, production=True, reversible=False),
    },
)


async def main() -> None:  # pragma: no cover - the walkthrough; tests drive the same pieces
    from temporalio.client import Client
    from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
    from temporalio.openai_agents.testing import TestModelProvider
    from temporalio.worker import Worker

    from lockgate import LockgatePlugin

    client = await Client.connect(
        "localhost:7233",
        plugins=[
            OpenAIAgentsPlugin(
                model_params=ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30)),
                model_provider=TestModelProvider(ScriptedModel()),
            ),
            LockgatePlugin(govern=[GOVERNANCE]),  # lockgate: the plugin line
        ],
    )
    async with Worker(
        client, task_queue="oncall", workflows=[OnCallWorkflow], activities=[page_engineer, restart_service]
    ):
        print(
            await client.execute_workflow(
                OnCallWorkflow.run,
                "check payments, who is on call for payments, page payments",
                id="oncall-1",
                task_queue="oncall",
            )
        )


if __name__ == "__main__":
    import asyncio

    asyncio.run(main())
