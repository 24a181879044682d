"""The OpenAI Agents SDK's airline customer service example (examples/openai_agents_agent.py),
governed drop-in on the real stack: a plain function tool and an `activity_as_tool` tool, an allowed
call with a lease, a call waiting for and getting approval, denials (back to the model, and failing
the run), and compensation on failure, halt and terminate (the reaper)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from agents import Agent, Runner, function_tool
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
from temporalio.openai_agents.testing import ResponseBuilders, TestModel, TestModelProvider
from temporalio.worker import Worker

from examples import openai_agents_agent as airline
from lockgate.config import Settings
from lockgate.errors import UserError
from lockgate.ops import halt_run, list_pending, run_status, wait_closed
from lockgate.plugin import LockgatePlugin
from lockgate.worker import build_reaper
from tests.support.dropin import (
    app_client,
    app_deps,
    approve,
    assert_no_secret_in_history,
    db,
    issued_secrets,
    ledger,
    pending_of,
)
from tests.support.stack import person


@pytest.fixture(scope="module")
def deps(settings: Settings) -> Any:
    """This app's worker dependencies (the session worker's stay as the CLI sees them)."""
    return app_deps(settings)


@pytest.fixture(scope="module")
async def app(settings: Settings, deps: Any) -> AsyncIterator[tuple[Client, str]]:
    """The team's own client and worker, with `LockgatePlugin(govern=...)` beside `OpenAIAgentsPlugin`."""
    openai = OpenAIAgentsPlugin(
        model_params=ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30)),
        model_provider=TestModelProvider(airline.ScriptedModel()),
    )
    client = await app_client(
        settings,
        plugins=[
            openai,
            LockgatePlugin(deps=deps, services=False, govern=[airline.GOVERNANCE], start_as=lambda: person("erin")),
        ],
    )
    task_queue = f"airline-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=task_queue, workflows=[airline.CustomerServiceWorkflow], activities=[airline.update_seat]
    ):
        yield client, task_queue


@pytest.fixture(autouse=True)
def fresh_bookings(settings: Settings) -> None:
    with db(settings, "airline") as conn:
        conn.execute("UPDATE bookings SET seat = CASE confirmation_number WHEN 'ABC123' THEN '22F' ELSE '23A' END")


def seat(settings: Settings, confirmation: str) -> str:
    with db(settings, "airline") as conn:
        row = conn.execute("SELECT seat FROM bookings WHERE confirmation_number = %s", (confirmation,)).fetchone()
    assert row is not None
    return str(row[0])


async def start(client: Client, task_queue: str, *messages: str) -> Any:
    return await client.start_workflow(
        airline.CustomerServiceWorkflow.run,
        list(messages),
        id=f"airline-{uuid.uuid4().hex[:10]}",
        task_queue=task_queue,
    )


async def test_function_tool_and_activity_tool_are_governed(
    app: tuple[Client, str], deps: Any, settings: Settings, outside: Any
) -> None:
    client, task_queue = app
    with issued_secrets(deps) as secrets:
        handle = await start(
            client, task_queue, "How many seats are on the plane?", "Please move me to seat 12A for ABC123"
        )
        history = await handle.result()
    assert any("There are 120 seats" in line for line in history), history
    assert any("Updated seat to 12A for confirmation number ABC123" in line for line in history)
    assert seat(settings, "ABC123") == "12A"
    events = ledger(deps, handle.id)
    decided = {(e["tool"], e["agent"]) for e in events if e["kind"] == "decision" and e["outcome"] == "allow"}
    assert decided == {("faq_lookup_tool", "faq-agent"), ("update_seat", "seat-booking-agent")}
    leases = [e for e in events if e["kind"] == "lease.issued"]
    assert [e["tool"] for e in leases] == ["update_seat"] and leases[0]["secret_path"] == "database/creds/airline-seats"
    assert {e["tool"] for e in events if e["kind"] == "tool.completed"} == {"faq_lookup_tool", "update_seat"}
    await assert_no_secret_in_history(handle, secrets)
    outside.assert_nothing_leaked()


async def test_exit_row_waits_for_a_lead(app: tuple[Client, str], deps: Any, settings: Settings) -> None:
    client, task_queue = app
    handle = await start(client, task_queue, "Please move me to seat 4C for ABC123")
    request = await pending_of(handle)
    assert (request.tool, request.group, request.agent) == ("update_seat", "support-leads", "seat-booking-agent")
    assert [p["request_id"] for p in await list_pending(client) if p["run_id"] == handle.id] == [request.request_id]
    assert seat(settings, "ABC123") == "22F"
    assert (await approve(client, handle, request, "dave")).accepted
    await handle.result()
    assert seat(settings, "ABC123") == "4C"


async def test_denials_retry_with_the_model_or_fail_the_run(
    app: tuple[Client, str], deps: Any, settings: Settings
) -> None:
    client, task_queue = app
    # `@denial("retry")`: the model is told and books an economy seat instead.
    handle = await start(client, task_queue, "Please move me to seat 1A for ABC123")
    history = await handle.result()
    assert any("lockgate:" in line and "seats.no-business-upgrades" in line for line in history)
    assert seat(settings, "ABC123") == "7C"
    # The default: a denied plain function tool fails the run.
    failed = await start(client, task_queue, "What is the wifi password?")
    with pytest.raises(WorkflowFailureError) as info:
        await failed.result()
    cause: BaseException | None = info.value.cause
    while cause is not None and not (isinstance(cause, ApplicationError) and cause.type == "ToolDenied"):
        cause = cause.__cause__ or getattr(cause, "cause", None)
    assert cause is not None and "faq.no-credentials" in str(cause)
    denied = [e for e in ledger(deps, failed.id) if e["kind"] == "decision" and e["outcome"] == "deny"]
    assert denied and denied[0]["tool"] == "faq_lookup_tool"


async def test_failure_compensates(app: tuple[Client, str], deps: Any, settings: Settings, outside: Any) -> None:
    client, task_queue = app
    handle = await start(client, task_queue, "Please move me to seat 12A for ABC123 and seat 9B for NOPE00")
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert seat(settings, "ABC123") == "22F"
    events = ledger(deps, handle.id)
    done = [e for e in events if e["kind"] == "tool.completed"]
    # In reverse: the change that raised (NOPE00: it may have acted before it raised; here it had
    # nothing to restore), then the one that went through. None stays outstanding.
    assert [e["tool"] for e in done] == ["update_seat", "restore_seat", "restore_seat"]
    assert done[1]["compensates"] == f"{handle.id}:2" and done[1]["summary"] == "nothing to restore"
    assert done[2]["compensates"] == done[0]["idempotency_key"]
    assert "compensation.outstanding" not in {e["kind"] for e in events}
    outside.assert_nothing_leaked()


async def test_halt_compensates(app: tuple[Client, str], deps: Any, settings: Settings) -> None:
    client, task_queue = app
    handle = await start(client, task_queue, "Please move me to seat 12A for ABC123 and seat 16B for DEF456")
    await pending_of(handle)
    assert seat(settings, "ABC123") == "12A"
    # A halt is an operator's signed statement, verified by the run like a lockgate agent's.
    with pytest.raises(UserError, match="not in group operators"):
        await halt_run(client, handle.id, "not mine to halt", session=person("mallory"))
    await halt_run(client, handle.id, "customer called back", session=person("dave"))
    assert await wait_closed(client, handle.id) != "running"
    status = await run_status(client, handle.id)
    assert status.state == "halted" and "customer called back (by dave)" in (status.error or "")
    assert seat(settings, "ABC123") == "22F" and seat(settings, "DEF456") == "23A"
    events = ledger(deps, handle.id)
    assert [e["kind"] for e in events if e["kind"].startswith("halt.")] == ["halt.refused", "halt.accepted"]
    assert [e["state"] for e in events if e["kind"] == "run.closed"] == ["halted"]


async def test_terminate_is_compensated_by_the_reaper(
    app: tuple[Client, str], deps: Any, settings: Settings, outside: Any
) -> None:
    client, task_queue = app
    handle = await start(client, task_queue, "Please move me to seat 12A for ABC123 and seat 16B for DEF456")
    await pending_of(handle)
    assert seat(settings, "ABC123") == "12A"
    await handle.terminate("gone")
    reports = [r for r in await build_reaper(deps).reap_once(client) if r.run_id == handle.id]
    assert reports and reports[0].identity_revoked
    assert [c["tool"] for c in reports[0].compensations if c["ok"]] == ["restore_seat"]
    assert seat(settings, "ABC123") == "22F"
    outside.assert_nothing_leaked()


# -- a plain function tool (it runs in workflow code) that raises ------------------------------------
@function_tool(name_override="faq_lookup_tool", description_override="Lookup frequently asked questions.")
async def broken_faq_lookup(question: str) -> str:
    raise RuntimeError(f"the FAQ index is down ({question})")


class AskOnceModel(TestModel):
    """Calls the FAQ tool once, then answers with what the tool's invoker told it."""

    def __init__(self) -> None:
        super().__init__(lambda: ResponseBuilders.output_message(""))

    async def get_response(self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any) -> Any:
        items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        outputs = [
            str(i.get("output")) for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"
        ]
        if not outputs:
            return ResponseBuilders.tool_call(json.dumps({"question": "wifi speed"}), "faq_lookup_tool", call_id="c-1")
        return ResponseBuilders.output_message(outputs[-1])


@workflow.defn(sandboxed=False)
class BrokenFaqWorkflow:
    @workflow.run
    async def run(self, question: str) -> str:
        faq = Agent(name="FAQ Agent", instructions="Answer with the FAQ tool.", tools=[broken_faq_lookup])
        result = await Runner.run(faq, question)
        return str(result.final_output)


async def test_a_function_tool_that_raises_is_recorded_failed(settings: Settings, deps: Any, outside: Any) -> None:
    """A plain function tool runs in workflow code, so no activity records its outcome: when it
    raises, the governed call records the failure in the ledger (the model still gets the SDK's
    message and the run goes on)."""
    openai = OpenAIAgentsPlugin(
        model_params=ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30)),
        model_provider=TestModelProvider(AskOnceModel()),
    )
    client = await app_client(
        settings,
        plugins=[
            openai,
            LockgatePlugin(deps=deps, services=False, govern=[airline.GOVERNANCE], start_as=lambda: person("erin")),
        ],
    )
    task_queue = f"faq-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[BrokenFaqWorkflow], activities=[airline.update_seat]):
        handle = await client.start_workflow(
            BrokenFaqWorkflow.run, "How fast is the wifi?", id=f"faq-{uuid.uuid4().hex[:10]}", task_queue=task_queue
        )
        answer = await handle.result()
    assert "the FAQ index is down" in answer
    events = ledger(deps, handle.id)
    assert {(e["tool"], e["outcome"]) for e in events if e["kind"] == "decision"} == {("faq_lookup_tool", "allow")}
    (failed,) = [e for e in events if e["kind"] == "tool.failed"]
    assert (failed["tool"], failed["step"]) == ("faq_lookup_tool", 1)
    assert "the FAQ index is down (wifi speed)" in failed["error"]
    assert not [e for e in events if e["kind"] == "tool.completed"]
    assert [e["state"] for e in events if e["kind"] == "run.closed"] == ["completed"]
    outside.assert_nothing_leaked()
