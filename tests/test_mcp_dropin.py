"""A drop-in Pydantic AI agent on Temporal whose tools come from an MCP toolset (tests/mcp/dropin_app.py),
governed by `LockgatePlugin(govern=...)` with the same pins, Cedar types and per-call credentials as a
lockgate agent's MCP tools: on a private real stack, against the tests' MCP server over HTTP."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.worker import Worker

from lockgate.gates.egress import REDACTED
from lockgate.plugin import LockgatePlugin
from lockgate.testing import LocalStack
from tests.mcp import dropin_app as app
from tests.support.dropin import app_client
from tests.test_mcp import decoded_history

ROOT = Path(__file__).resolve().parents[1]
STATE = app.STATE / "bankd"


def cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **stack.env(),
        "PYTHONPATH": str(ROOT),
        "MCP_DROPIN_STATE": str(app.STATE),
        "MCP_DROPIN_PORT": str(app.PORT),
    }
    return subprocess.run(
        [sys.executable, "-m", "lockgate.cli", *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def _wait_listening(port: int) -> None:
    import socket
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"MCP HTTP server did not listen on {port}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    shutil.rmtree(app.STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    (app.STATE / "bankds").mkdir()
    policies = tmp_path_factory.mktemp("mcp-dropin-policies")
    shutil.copy(ROOT / "tests" / "mcp" / "dropin.cedar", policies / "dropin.cedar")
    server: subprocess.Popen[bytes] | None = None
    try:
        # Both drop-in apps on the same server: the Pydantic AI one and tests/mcp/openai_app.py's.
        modules = "tests.mcp.dropin_app,tests.mcp.openai_app"
        with LocalStack(agent_modules=modules, policy_dir=policies) as local:
            for where in (STATE, app.STATE / "bankds"):
                (where / "vault").write_text(local.settings().vault_addr)
            server = subprocess.Popen(
                [sys.executable, app.SERVER, "http", str(app.PORT), f"DIR={STATE}", "NAME=bankd"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_listening(app.PORT)
            for name in ("bankd", "bankds"):
                pinned = cli(local, "mcp", "pin", name)
                assert pinned.returncode == 0, pinned.stderr
            yield local
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(app.STATE, ignore_errors=True)


@pytest.fixture(scope="module")
async def teller(stack: LocalStack) -> AsyncIterator[tuple[Client, str, Any]]:
    """The team's own client and worker: `PydanticAIPlugin`, and `LockgatePlugin(govern=...)` beside it."""
    from lockgate.worker import build_deps

    deps = build_deps(stack.settings())
    client = await app_client(
        stack.settings(),
        plugins=[
            PydanticAIPlugin(),
            LockgatePlugin(deps=deps, services=False, govern=[app.GOVERNANCE], start_as=lambda: stack.person("erin")),
        ],
    )
    task_queue = f"teller-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=task_queue, workflows=[app.TellerWorkflow], plugins=[AgentPlugin(app.teller_agent)]
    ):
        yield client, task_queue, deps
    deps.ledger.dispose()


def effects() -> list[dict[str, Any]]:
    path = STATE / "effects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def ask(teller: tuple[Client, str, Any], prompt: str) -> WorkflowHandle[Any, Any]:
    client, task_queue, _ = teller
    return await client.start_workflow(
        app.TellerWorkflow.run, app.Ask(prompt=prompt), id=f"teller-{uuid.uuid4().hex[:10]}", task_queue=task_queue
    )


def failure_text(err: BaseException | None) -> str:
    """Every message down a failure's cause chain (an activity's failure wraps the tool's)."""
    out = []
    while err is not None:
        out.append(str(err))
        err = getattr(err, "cause", None) or err.__cause__
    return " / ".join(out)


def token_alive(stack: LocalStack, token: str) -> bool:
    try:
        hvac.Client(url=stack.settings().vault_addr, token=token).auth.token.lookup_self()
        return True
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        return False


async def test_mcp_toolset_calls_are_gated_credentialed_and_pinned(
    stack: LocalStack, teller: tuple[Client, str, Any]
) -> None:
    client, _, deps = teller
    before = len(effects())
    app.OFFERED.clear()
    handle = await ask(teller, "transfer 500 from A-1, then the balance of A-1")
    output = await asyncio.wait_for(handle.result(), timeout=90)
    # What the model got back, as Pydantic AI maps any MCP result (the structured content here); the
    # regulated read went to the model redacted (no policy approves its endpoint for regulated data).
    assert output == f"{{'transfer_id': '{handle.id}:1'}} | {{'balance_cents': '{REDACTED}'}}"
    last = app.SEEN[-1]
    assert [p["content"] for p in last if p["kind"] == "ToolReturnPart"] == [
        f"{{'transfer_id': '{handle.id}:1'}}",
        f"{{'balance_cents': '{REDACTED}'}}",
    ]
    assert "1000" not in json.dumps(last)
    # The model was offered the pinned definitions of the declared tools only (the server also
    # lists `purge`, which the declaration does not name).
    offered = ["lookup", "reverse", "s_reverse", "s_transfer", "transfer"]  # `s_`: the stdio toolset
    assert app.OFFERED and all(names == offered for names in app.OFFERED)
    done = effects()[before:]
    assert [(e["tool"], e["transport"], e["key"]) for e in done] == [
        ("transfer", "http", f"{handle.id}:1"),
        ("lookup", "http", f"{handle.id}:2"),
    ]
    tokens = [e["token"] for e in done]
    assert len(set(tokens)) == 2 and all(tokens)
    assert not any([token_alive(stack, t) for t in tokens])  # each revoked when its call ended
    events = deps.ledger.events(handle.id)
    decisions = [e for e in events if e["kind"] == "decision"]
    # Each step decided in the workflow's gate, then again by its attempt in the activity.
    assert [(d["tool"], d["outcome"]) for d in decisions] == [
        ("bankd.transfer", "allow"),
        ("bankd.transfer", "allow"),
        ("bankd.lookup", "allow"),
        ("bankd.lookup", "allow"),
    ]
    issued = sorted(e["lease_id"] for e in events if e["kind"] == "lease.issued")
    revoked = sorted(e["lease_id"] for e in events if e["kind"] == "lease.revoked")
    assert issued == revoked == sorted(f"token-accessor:{e['accessor']}" for e in done)
    text = json.dumps(events) + await decoded_history(client, handle)
    assert f'"transfer_id":"{handle.id}:1"' in text.replace(" ", "")  # decoded: the search means something
    assert all(t not in text for t in tokens)
    assert [e["kind"] for e in events][-1] == "run.closed"
    egress = [e for e in events if e["kind"] == "model.egress"]
    assert len(egress) == 1 and not egress[0]["allowed"] and egress[0]["endpoint"] == "default"
    assert len(egress[0]["redacted_calls"]) == 1


async def test_an_approved_model_endpoint_sees_the_regulated_read(
    stack: LocalStack, teller: tuple[Client, str, Any]
) -> None:
    """A policy approving the app's model endpoint for regulated data: the model gets the result."""
    _, _, deps = teller
    approval = stack.policy_dir / "model.cedar"
    approval.write_text(
        '@id("model.approved")\n'
        'permit (principal == Agent::"dropin-teller", action == lockgate::Action::"model.send", '
        'resource == Model::"default");\n'
    )
    try:
        assert deps.reload_policies() == []
        handle = await ask(teller, "balance of A-4")
        assert await asyncio.wait_for(handle.result(), timeout=60) == "{'balance_cents': 1000}"
        egress = [e for e in deps.ledger.events(handle.id) if e["kind"] == "model.egress"]
        assert [(e["allowed"], e["policy_ids"]) for e in egress] == [(True, ["model.approved"])]
    finally:
        approval.unlink()
        assert deps.reload_policies() == []


async def test_a_denial_on_args_runs_nothing(stack: LocalStack, teller: tuple[Client, str, Any]) -> None:
    _, _, deps = teller
    before = len(effects())
    handle = await ask(teller, "transfer 5 from blocked")
    with pytest.raises(WorkflowFailureError) as err:
        await asyncio.wait_for(handle.result(), timeout=60)
    assert "dropin.transfer.blocked-account" in str(err.value.cause)
    assert effects()[before:] == []
    events = deps.ledger.events(handle.id)
    assert [e["policy_ids"] for e in events if e["kind"] == "decision"] == [["dropin.transfer.blocked-account"]]
    assert not [e for e in events if e["kind"] == "lease.issued"]


async def test_a_changed_definition_blocks_the_tool(stack: LocalStack, teller: tuple[Client, str, Any]) -> None:
    """The server silently changes `lookup`'s description: the drop-in call fails closed, once,
    its token revoked, until a person pins again."""
    _, _, deps = teller
    (STATE / "variant").write_text("v2")
    try:
        before = len(effects())
        handle = await ask(teller, "balance of A-1")
        with pytest.raises(WorkflowFailureError) as err:
            await asyncio.wait_for(handle.result(), timeout=60)
        assert "definition changed, review with `lockgate mcp review bankd`" in failure_text(err.value)
        assert effects()[before:] == []
        events = deps.ledger.events(handle.id)
        assert len([e for e in events if e["kind"] == "tool.failed"]) == 1  # non-retryable
        assert {e["lease_id"] for e in events if e["kind"] == "lease.issued"} == {
            e["lease_id"] for e in events if e["kind"] == "lease.revoked"
        }
        review = cli(stack, "mcp", "review", "bankd")
        assert review.returncode == 1 and "bankd.lookup: changed" in review.stdout, review.stderr
    finally:
        (STATE / "variant").write_text("v1")


async def test_a_stdio_server_that_dies_mid_call_is_retried(stack: LocalStack, teller: tuple[Client, str, Any]) -> None:
    """The stdio server (a process per call) dies inside `transfer`: the attempt's token is revoked,
    the app's activity retries it, and the transfer happens once, under the step's idempotency key."""
    _, _, deps = teller
    where = app.STATE / "bankds"
    (where / "die-once").unlink(missing_ok=True)
    handle = await ask(teller, "s_transfer 3 from die")
    assert await asyncio.wait_for(handle.result(), timeout=90) == f"{{'transfer_id': '{handle.id}:1'}}"
    assert (where / "die-once").exists()  # it did die once
    lines = (where / "effects.jsonl").read_text().splitlines()
    done = [json.loads(line) for line in lines]
    assert [(e["tool"], e["transport"], e["key"]) for e in done] == [("transfer", "stdio", f"{handle.id}:1")]
    assert done[0]["inherited"] == []  # nothing of the worker's environment but the call's token
    events = deps.ledger.events(handle.id)
    issued = [e["lease_id"] for e in events if e["kind"] == "lease.issued"]
    assert len(issued) == 2 and set(issued) == {e["lease_id"] for e in events if e["kind"] == "lease.revoked"}
    failed = [e for e in events if e["kind"] == "tool.failed"]
    assert len(failed) == 1 and failed[0]["tool"] == "bankds.transfer" and "server failed" in failed[0]["error"]
    assert not token_alive(stack, done[0]["token"])


def test_a_declared_server_must_be_an_mcp_toolset_of_the_app() -> None:
    """A `Governance(mcp=...)` server whose name is no MCP toolset id would govern nothing: the
    worker refuses to start, naming it."""
    from pydantic_ai.durable_exec.temporal import AgentPlugin

    from lockgate import MCPServer
    from lockgate.dropin import Governance
    from lockgate.dropin.check import check_mcp_servers
    from lockgate.errors import UserError

    plugins = [AgentPlugin(app.teller_agent)]
    check_mcp_servers(app.GOVERNANCE, plugins=plugins)  # `bankd` and `bankds` (prefixed) are its toolsets
    typo = Governance(
        "dropin_teller", owner="treasury-team", tools={}, mcp=(MCPServer("bankx", url=app.URL, tools={"lookup": None}),)
    )
    with pytest.raises(UserError) as err:
        check_mcp_servers(typo, plugins=plugins)
    assert "'bankx'" in str(err.value) and "bankd, bankds" in str(err.value)
