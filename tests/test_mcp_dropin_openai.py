"""A drop-in OpenAI Agents SDK agent on Temporal whose tools come from an MCP server
(`temporal_mcp_server("bankd")`, tests/mcp/openai_app.py), governed by `LockgatePlugin(govern=...)`
with the same pin, Cedar types and per-call credentials as a lockgate agent's and a Pydantic AI
toolset's MCP tools: on a private real stack, against the tests' MCP server over HTTP."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
from temporalio.openai_agents.testing import TestModelProvider
from temporalio.worker import Worker

from lockgate.plugin import LockgatePlugin
from lockgate.testing import LocalStack
from tests.mcp import openai_app as app
from tests.support.dropin import app_client
from tests.test_mcp import decoded_history
from tests.test_mcp_dropin import STATE, cli, effects, stack, token_alive

__all__ = ["stack"]  # the module's own private stack (tests/test_mcp_dropin.py's fixture)


def openai_plugin() -> OpenAIAgentsPlugin:
    return OpenAIAgentsPlugin(
        model_params=ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30)),
        model_provider=TestModelProvider(app.ScriptedBank()),
        mcp_servers={"bankd": app.bank_factory},
    )


@pytest.fixture(scope="module")
async def teller(stack: LocalStack) -> AsyncIterator[tuple[Client, str, Any]]:
    """The team's own client and worker: `OpenAIAgentsPlugin`, and `LockgatePlugin(govern=...)` beside it."""
    from lockgate.worker import build_deps

    deps = build_deps(stack.settings())
    client = await app_client(
        stack.settings(),
        plugins=[
            openai_plugin(),
            LockgatePlugin(deps=deps, services=False, govern=[app.GOVERNANCE], start_as=lambda: stack.person("erin")),
        ],
    )
    task_queue = f"oa-teller-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[app.OpenAITellerWorkflow]):
        yield client, task_queue, deps
    deps.ledger.dispose()


async def ask(teller: tuple[Client, str, Any], prompt: str) -> WorkflowHandle[Any, Any]:
    client, task_queue, _ = teller
    return await client.start_workflow(
        app.OpenAITellerWorkflow.run, app.Ask(prompt=prompt), id=f"oa-{uuid.uuid4().hex[:10]}", task_queue=task_queue
    )


async def test_openai_mcp_calls_are_gated_credentialed_and_pinned(
    stack: LocalStack, teller: tuple[Client, str, Any]
) -> None:
    client, _, deps = teller
    before = len(effects())
    app.OFFERED.clear()
    handle = await ask(teller, "transfer 500 from A-1, then the balance of A-1")
    output = await asyncio.wait_for(handle.result(), timeout=90)
    # What the model got back: the MCP results' text content, as the SDK hands any MCP result on.
    assert "transferred 500 from A-1" in output and "balance of A-1: 1000" in output, output
    # Offered: the pinned definitions of the declared tools only (the server also lists `purge`).
    assert app.OFFERED and all(names == ["lookup", "reverse", "transfer"] for names in app.OFFERED)
    done = effects()[before:]
    assert [(e["tool"], e["transport"], e["key"]) for e in done] == [
        ("transfer", "http", f"{handle.id}:1"),
        ("lookup", "http", f"{handle.id}:2"),
    ]
    tokens = [e["token"] for e in done]
    assert len(set(tokens)) == 2 and all(tokens)
    assert not any([token_alive(stack, t) for t in tokens])  # each revoked when its call ended
    events = deps.ledger.events(handle.id)
    decisions = [(d["tool"], d["outcome"]) for d in events if d["kind"] == "decision"]
    assert decisions == [("bankd.transfer", "allow")] * 2 + [("bankd.lookup", "allow")] * 2
    issued = sorted(e["lease_id"] for e in events if e["kind"] == "lease.issued")
    revoked = sorted(e["lease_id"] for e in events if e["kind"] == "lease.revoked")
    assert issued == revoked == sorted(f"token-accessor:{e['accessor']}" for e in done)
    text = json.dumps(events) + await decoded_history(client, handle)
    assert "transferred 500 from A-1" in text  # decoded: the search means something
    assert all(t not in text for t in tokens)
    assert [e["kind"] for e in events][-1] == "run.closed"


async def test_a_denial_on_args_runs_nothing(stack: LocalStack, teller: tuple[Client, str, Any]) -> None:
    _, _, deps = teller
    before = len(effects())
    handle = await ask(teller, "transfer 5 from blocked")
    # The SDK hands an MCP tool's failure to the model as text (the server's `failure_error_function`,
    # by default): the denial reaches the model, and nothing ran.
    output = await asyncio.wait_for(handle.result(), timeout=60)
    assert "dropin.transfer.blocked-account" in output, output
    assert effects()[before:] == []
    events = deps.ledger.events(handle.id)
    assert [e["policy_ids"] for e in events if e["kind"] == "decision"] == [["dropin.transfer.blocked-account"]]
    assert not [e for e in events if e["kind"] == "lease.issued"]


async def test_a_changed_definition_blocks_the_tool(stack: LocalStack, teller: tuple[Client, str, Any]) -> None:
    """The server silently changes `lookup`'s description: the call fails closed, its token revoked."""
    _, _, deps = teller
    (STATE / "variant").write_text("v2")
    try:
        before = len(effects())
        handle = await ask(teller, "balance of A-1")
        # The call failed closed (non-retryable); the SDK hands that failure to the model as text.
        output = await asyncio.wait_for(handle.result(), timeout=60)
        assert "Error invoking MCP tool lookup" in output and "1000" not in output, output
        assert effects()[before:] == []
        events = deps.ledger.events(handle.id)
        failed = [e for e in events if e["kind"] == "tool.failed"]
        assert len(failed) == 1  # non-retryable
        assert "definition changed, review with `lockgate mcp review bankd`" in failed[0]["error"]
        assert {e["lease_id"] for e in events if e["kind"] == "lease.issued"} == {
            e["lease_id"] for e in events if e["kind"] == "lease.revoked"
        }
        review = cli(stack, "mcp", "review", "bankd")
        assert review.returncode == 1 and "bankd.lookup: changed" in review.stdout, review.stderr
    finally:
        (STATE / "variant").write_text("v1")


async def test_an_undeclared_server_name_stops_the_worker(stack: LocalStack) -> None:
    """A `Governance(mcp=...)` server no OpenAI Agents MCP server is named: the worker refuses to start."""
    from lockgate import MCPServer
    from lockgate.dropin import Governance
    from lockgate.errors import UserError
    from lockgate.worker import build_deps

    typo = Governance(
        "oa_teller",
        owner="treasury-team",
        workflows=(app.OpenAITellerWorkflow,),
        tools={},
        mcp=(MCPServer("bankx", url=app.URL, tools={"lookup": None}),),
    )
    deps = build_deps(stack.settings())
    try:
        client = await app_client(
            stack.settings(),
            plugins=[openai_plugin(), LockgatePlugin(deps=deps, services=False, govern=[typo])],
        )
        with pytest.raises(UserError) as err:
            Worker(client, task_queue=f"oa-typo-{uuid.uuid4().hex[:8]}", workflows=[app.OpenAITellerWorkflow])
        assert "'bankx'" in str(err.value) and "known: bankd" in str(err.value)
    finally:
        deps.ledger.dispose()
