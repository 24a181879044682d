"""The OpenAI Agents SDK's airline customer service agents on Temporal, governed by lockgate drop-in.

From the OpenAI Agents SDK's examples (`examples/customer_service/main.py`) as Temporal runs them in
its samples (`openai_agents/customer_service/customer_service.py` in temporalio/samples-python):
a triage agent handing off to an FAQ agent (`faq_lookup_tool`, a plain function tool that runs in
workflow code) and a seat booking agent (`update_seat`). Adapted only to run here, offline and
durable:

- the model is a scripted `Model` behind the plugin's model provider, not an LLM;
- `update_seat` changes a booking in the airline's Postgres database (the docs' version only edits
  the run context as a stand-in), so it is an activity, registered with `activity_as_tool`; its
  signature is unchanged (an activity tool receives a copy of the context);
- the workflow runs the customer's messages in turn instead of waiting for chat updates.

The governance is the block marked `# lockgate` (tool declarations) and the plugin line in `main`.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from agents import Agent, ItemHelpers, MessageOutputItem, RunContextWrapper, Runner, function_tool, handoff
    from agents.extensions.handoff_prompt import RECOMMENDED_PROMPT_PREFIX
    from temporalio.openai_agents.testing import ResponseBuilders, TestModel
    from temporalio.openai_agents.workflow import activity_as_tool

    from lockgate import DatabaseSecret, ToolContext, ToolError, tool
    from lockgate.dropin import Govern, Governance, args_of, current_call

### CONTEXT


class AirlineAgentContext(BaseModel):
    passenger_name: str | None = None
    confirmation_number: str | None = None
    seat_number: str | None = None
    flight_number: str | None = None


### TOOLS


@function_tool(
    name_override="faq_lookup_tool",
    description_override="Lookup frequently asked questions.",
)
async def faq_lookup_tool(question: str) -> str:
    question_lower = question.lower()
    if "bag" in question_lower or "baggage" in question_lower:
        return (
            "You are allowed to bring one bag on the plane. "
            "It must be under 50 pounds and 22 inches x 14 inches x 9 inches."
        )
    elif "seats" in question_lower or "plane" in question_lower:
        return (
            "There are 120 seats on the plane. "
            "There are 22 business class seats and 98 economy seats. "
            "Exit rows are rows 4 and 16. "
            "Rows 5-8 are Economy Plus, with extra legroom. "
        )
    elif "wifi" in question_lower:
        return "We have free wifi on the plane, join Airline-Wifi"
    return "I'm sorry, I don't know the answer to that question."


@activity.defn
async def update_seat(
    confirmation_number: str,
    new_seat: str,
) -> str:
    """
    Update the seat for a given confirmation number.

    Args:
        confirmation_number: The confirmation number for the flight.
        new_seat: The new seat to update to.
    """
    call = current_call()
    with call.connect("airline") as conn:
        row = conn.execute(
            "SELECT seat FROM bookings WHERE confirmation_number = %s FOR UPDATE", (confirmation_number,)
        ).fetchone()
        if row is None:
            raise ToolError(f"no booking {confirmation_number}")
        # The call's idempotency key goes with its effect: that is what a compensation undoes.
        conn.execute(
            "INSERT INTO seat_changes (idempotency_key, confirmation_number, old_seat, new_seat) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING",
            (call.idempotency_key, confirmation_number, row[0], new_seat),
        )
        conn.execute("UPDATE bookings SET seat = %s WHERE confirmation_number = %s", (new_seat, confirmation_number))
    return f"Updated seat to {new_seat} for confirmation number {confirmation_number}"


### HOOKS


async def on_seat_booking_handoff(
    context: RunContextWrapper[AirlineAgentContext],
) -> None:
    flight_number = f"FLT-{workflow.random().randint(100, 999)}"
    context.context.flight_number = flight_number


### AGENTS


def init_agents() -> Agent[AirlineAgentContext]:
    """
    Initialize the agents for the airline customer service workflow.
    :return: triage agent
    """
    faq_agent = Agent[AirlineAgentContext](
        name="FAQ Agent",
        handoff_description="A helpful agent that can answer questions about the airline.",
        instructions=f"""{RECOMMENDED_PROMPT_PREFIX}
        You are an FAQ agent. If you are speaking to a customer, you probably were transferred to from the triage agent.
        Use the following routine to support the customer.
        # Routine
        1. Identify the last question asked by the customer.
        2. Use the faq lookup tool to answer the question. Do not rely on your own knowledge.
        3. If you cannot answer the question, transfer back to the triage agent.""",
        tools=[faq_lookup_tool],
    )

    seat_booking_agent = Agent[AirlineAgentContext](
        name="Seat Booking Agent",
        handoff_description="A helpful agent that can update a seat on a flight.",
        instructions=f"""{RECOMMENDED_PROMPT_PREFIX}
        You are a seat booking agent. If you are speaking to a customer, you probably were transferred to from the triage agent.
        Use the following routine to support the customer.
        # Routine
        1. Ask for their confirmation number.
        2. Ask the customer what their desired seat number is.
        3. Use the update seat tool to update the seat on the flight.
        If the customer asks a question that is not related to the routine, transfer back to the triage agent. """,
        tools=[activity_as_tool(update_seat, start_to_close_timeout=timedelta(seconds=30))],
    )

    triage_agent = Agent[AirlineAgentContext](
        name="Triage Agent",
        handoff_description="A triage agent that can delegate a customer's request to the appropriate agent.",
        instructions=(
            f"{RECOMMENDED_PROMPT_PREFIX} "
            "You are a helpful triaging agent. You can use your tools to delegate questions to other appropriate agents."
        ),
        handoffs=[
            faq_agent,
            handoff(agent=seat_booking_agent, on_handoff=on_seat_booking_handoff),
        ],
    )

    faq_agent.handoffs.append(triage_agent)
    seat_booking_agent.handoffs.append(triage_agent)
    return triage_agent


@workflow.defn
class CustomerServiceWorkflow:
    @workflow.run
    async def run(self, messages: list[str]) -> list[str]:
        current_agent: Agent[AirlineAgentContext] = init_agents()
        context = AirlineAgentContext()
        input_items: list[Any] = []
        chat_history: list[str] = []
        for user_input in messages:
            chat_history.append(f"User: {user_input}")
            input_items.append({"content": user_input, "role": "user"})
            result = await Runner.run(current_agent, input_items, context=context)
            for new_item in result.new_items:
                if isinstance(new_item, MessageOutputItem):
                    chat_history.append(f"{new_item.agent.name}: {ItemHelpers.text_message_output(new_item)}")
            input_items = result.to_input_list()
            current_agent = result.last_agent
        return chat_history


class ScriptedModel(TestModel):
    """Stands in for the LLM: routes, looks up and books as the customer's last message asks."""

    def __init__(self) -> None:
        super().__init__(lambda: ResponseBuilders.output_message(""))

    async def get_response(self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any) -> Any:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        last_user = max(i for i, item in enumerate(items) if isinstance(item, dict) and item.get("role") == "user")
        text = str(items[last_user]["content"])
        since = [i for i in items[last_user + 1 :] if isinstance(i, dict)]
        names = {i.get("call_id"): i.get("name") for i in since if i.get("type") == "function_call"}
        outputs = [
            (names.get(i.get("call_id")), str(i.get("output")))
            for i in since
            if i.get("type") == "function_call_output"
        ]
        call_id = f"call-{len(items)}"
        instructions = system_instructions or ""
        if "triaging agent" in instructions:
            target = "transfer_to_seat_booking_agent" if re.search(r"seat \w+ for", text) else "transfer_to_faq_agent"
            return ResponseBuilders.tool_call("{}", target, call_id=call_id)
        if "FAQ agent" in instructions:
            if re.search(r"seat \w+ for", text):
                return ResponseBuilders.tool_call("{}", "transfer_to_triage_agent", call_id=call_id)
            answers = [o for n, o in outputs if n == "faq_lookup_tool"]
            if not answers:
                return ResponseBuilders.tool_call(json.dumps({"question": text}), "faq_lookup_tool", call_id=call_id)
            return ResponseBuilders.output_message(answers[-1])
        wanted = re.findall(r"seat (\w+) for (\w+)", text)
        done = [o for n, o in outputs if n == "update_seat"]
        if done and "lockgate:" in done[-1] and len(done) <= len(wanted):
            # Told why not: ask for an economy seat instead.
            return ResponseBuilders.tool_call(
                json.dumps({"confirmation_number": wanted[len(done) - 1][1], "new_seat": "7C"}),
                "update_seat",
                call_id=call_id,
            )
        booked = [o for o in done if "lockgate:" not in o]
        if len(booked) < len(wanted):
            seat, confirmation = wanted[len(booked)]
            args = {"confirmation_number": confirmation, "new_seat": seat}
            return ResponseBuilders.tool_call(json.dumps(args), "update_seat", call_id=call_id)
        return ResponseBuilders.output_message(" ".join(done) or "How can I help?")


# lockgate: the tool declarations (the agent code above is unchanged by them) ---------------------
SEATS = DatabaseSecret(
    role="airline-seats",
    database="airline",
    member_of=("airline_seats",),
    setup_sql="""
    CREATE TABLE IF NOT EXISTS bookings (confirmation_number text PRIMARY KEY, passenger text NOT NULL, seat text NOT NULL);
    CREATE TABLE IF NOT EXISTS seat_changes (
        idempotency_key text PRIMARY KEY, confirmation_number text NOT NULL, old_seat text NOT NULL,
        new_seat text NOT NULL, at timestamptz NOT NULL DEFAULT now(), undone_at timestamptz);
    INSERT INTO bookings VALUES ('ABC123', 'Ada', '22F'), ('DEF456', 'Grace', '23A') ON CONFLICT DO NOTHING;
    DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'airline_seats') THEN CREATE ROLE airline_seats NOLOGIN; END IF;
    END $$;
    GRANT CONNECT ON DATABASE airline TO airline_seats;
    GRANT USAGE ON SCHEMA public TO airline_seats;
    GRANT SELECT, UPDATE ON bookings TO airline_seats;
    GRANT SELECT, INSERT, UPDATE ON seat_changes TO airline_seats;
    """,
)


class RestoreArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    idempotency_key: str = Field(min_length=1)


@tool("restore_seat", secret=SEATS, production=True)
def restore_seat(ctx: ToolContext, args: RestoreArgs) -> dict[str, object]:
    """Undoes one `update_seat` call (idempotent: undoing a change that never happened is a no-op)."""
    if not ctx.owns(args.idempotency_key):
        return {"summary": "not a step of this run"}
    with ctx.connect("airline") as conn:
        row = conn.execute(
            "UPDATE seat_changes SET undone_at = now() WHERE idempotency_key = %s AND undone_at IS NULL "
            "RETURNING confirmation_number, old_seat",
            (args.idempotency_key,),
        ).fetchone()
        if row is None:
            return {"summary": "nothing to restore"}
        conn.execute("UPDATE bookings SET seat = %s WHERE confirmation_number = %s", (row[1], row[0]))
    return {"summary": f"{row[0]} back in seat {row[1]}"}


def replay_plugins() -> list[object]:
    """What `lockgate replay` needs beside lockgate's own to replay `CustomerServiceWorkflow` (the
    model's answers come from history: the provider is never asked)."""
    from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
    from temporalio.openai_agents.testing import TestModelProvider

    return [
        OpenAIAgentsPlugin(
            model_params=ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30)),
            model_provider=TestModelProvider(ScriptedModel()),
        )
    ]


GOVERNANCE = Governance(
    ["Seat Booking Agent", "FAQ Agent", "Triage Agent"],
    owner="airline-support",
    purpose="Airline customer service (OpenAI Agents example).",
    workflows=(CustomerServiceWorkflow,),
    replay_plugins=replay_plugins,
    tools={
        "faq_lookup_tool": Govern(args=args_of(faq_lookup_tool), data_class="public"),
        "update_seat": Govern(args=args_of(update_seat), secret=SEATS, production=True, compensation=restore_seat),
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
    async with Worker(client, task_queue="airline", workflows=[CustomerServiceWorkflow], activities=[update_seat]):
        print(
            await client.execute_workflow(
                CustomerServiceWorkflow.run,
                ["Please move me to seat 12A for ABC123"],
                id="airline-1",
                task_queue="airline",
            )
        )


if __name__ == "__main__":
    import asyncio

    asyncio.run(main())
