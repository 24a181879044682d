"""MCP servers as governed tool sources, end to end on a private real stack: a small MCP server
(tests/mcp/bank_server.py) over stdio and over streamable HTTP, its tools declared with
`MCPServer`, every `tools/call` gated, credentialed per call, pinned and audited."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from lockgate import vaultio
from lockgate.models import ApprovalRequest
from lockgate.ops import send_verdict
from lockgate.testing import LocalStack
from tests.mcp import agent as teller

ROOT = Path(__file__).resolve().parents[1]
# Where the agent module (imported here, so in this process) put its servers: the CLI processes
# are told the same (MCP_TEST_STATE / MCP_TEST_PORT), so they declare the same servers.
STATE = teller.STATE
PORT = teller.PORT


@pytest.fixture(scope="module")
def mcp_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    shutil.rmtree(STATE, ignore_errors=True)
    for server in ("bank", "bankhttp"):
        (STATE / server).mkdir(parents=True)
    policies = tmp_path_factory.mktemp("mcp-policies")
    shutil.copy(ROOT / "tests" / "mcp" / "policies.cedar", policies / "mcp.cedar")
    try:
        with LocalStack(agent_modules="tests.mcp.agent", policy_dir=policies) as stack:
            vault = stack.settings().vault_addr
            for server in ("bank", "bankhttp"):
                (STATE / server / "vault").write_text(vault)
            start_http()
            for server in ("bank", "bankhttp"):
                out = cli(stack, "mcp", "pin", server)
                assert out.returncode == 0, out.stderr
            yield stack
    finally:
        stop_http()
        shutil.rmtree(STATE, ignore_errors=True)


_HTTP: list[subprocess.Popen[bytes]] = []


def start_http() -> None:
    """Starts the HTTP MCP server (the test's own process), once listening."""
    _HTTP.append(
        subprocess.Popen(
            [sys.executable, teller.SERVER, "http", str(PORT), f"DIR={STATE / 'bankhttp'}", "NAME=bankhttp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    _wait_listening(PORT)


def stop_http() -> None:
    while _HTTP:
        proc = _HTTP.pop()
        proc.kill()
        proc.wait()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"MCP HTTP server did not listen on {port}")


def cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env(), "PYTHONPATH": str(ROOT), "MCP_TEST_STATE": str(STATE), "MCP_TEST_PORT": str(PORT)}
    return subprocess.run(
        [sys.executable, "-m", "lockgate.cli", *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def effects(server: str) -> list[dict[str, Any]]:
    path = STATE / server / "effects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def run(stack: LocalStack, client: Client, calls: list[dict[str, Any]]) -> WorkflowHandle[Any, Any]:
    return await stack.start(client, "mcp-teller", {"calls": calls}, run_id=f"mcp-{uuid.uuid4().hex[:8]}")


def root(stack: LocalStack) -> hvac.Client:
    settings = stack.settings()
    return hvac.Client(url=settings.vault_addr, token=settings.vault_token)


def token_alive(stack: LocalStack, token: str) -> bool:
    try:
        hvac.Client(url=stack.settings().vault_addr, token=token).auth.token.lookup_self()
        return True
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        return False


def live_mcp_leases(stack: LocalStack) -> list[str]:
    out = []
    for role in ("mcp-bank", "mcp-bankhttp"):
        try:
            resp = root(stack).adapter.list(f"/v1/sys/leases/lookup/auth/token/create/{role}/")
        except hvac.exceptions.InvalidPath:
            continue
        out += (resp or {}).get("data", {}).get("keys", [])
    return out


async def decoded_history(client: Client, handle: WorkflowHandle[Any, Any]) -> str:
    """Every payload of the run's history, decoded with the stack's codec (payloads are encrypted)."""
    history = await handle.fetch_history()
    raw = json.loads(history.to_json())
    found: list[dict[str, Any]] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            if "data" in v and "metadata" in v:
                found.append(v)
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)

    walk(raw)
    import base64

    payloads = [
        Payload(
            metadata={k: base64.b64decode(x) for k, x in p["metadata"].items()},
            data=base64.b64decode(p.get("data", "")),
        )
        for p in found
    ]
    codec = client.data_converter.payload_codec
    if codec is not None and payloads:
        payloads = await codec.decode(payloads)
    return history.to_json() + "\n".join(p.data.decode("utf-8", "replace") for p in payloads)


async def pending_of(handle: WorkflowHandle[Any, Any], timeout: float = 60) -> ApprovalRequest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = await handle.query("pending_approvals", result_type=list[ApprovalRequest])
        if pending:
            return pending[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{handle.id} did not ask for approval")


async def test_stdio_and_http_calls_are_governed_with_a_credential_per_call(mcp_stack: LocalStack) -> None:
    client = await mcp_stack.client()
    async with mcp_stack.worker(client):
        handle = await run(
            mcp_stack,
            client,
            [
                {"tool": "bank.transfer", "args": {"account": "A-1", "amount_cents": 500}},
                {"tool": "bankhttp.transfer", "args": {"account": "A-2", "amount_cents": 700, "memo": "rent"}},
                {"tool": "bankhttp.lookup", "args": {"account": "A-2"}},
            ],
        )
        result = await asyncio.wait_for(handle.result(), timeout=90)
    assert [s["outcome"] for s in result["steps"]] == ["allow", "allow", "allow"]
    stdio, http = effects("bank"), effects("bankhttp")
    assert [(e["tool"], e["transport"]) for e in stdio] == [("transfer", "stdio")]
    assert [(e["tool"], e["transport"]) for e in http] == [("transfer", "http"), ("lookup", "http")]
    # Each call carried its step's idempotency key, and its own token, minted for that server only.
    assert [e["key"] for e in stdio + http] == [f"{handle.id}:1", f"{handle.id}:2", f"{handle.id}:3"]
    tokens = [e["token"] for e in stdio + http]
    assert len(set(tokens)) == 3
    # The stdio server's process got the call's token and nothing of the worker's Vault or settings.
    assert stdio[0]["inherited"] == []
    # Every token is revoked once its call ended; a replay of one is refused by the HTTP server.
    for token in tokens:
        assert not token_alive(mcp_stack, token)
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/mcp",
        data=b"{}",
        headers={"Authorization": f"Bearer {tokens[1]}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, req, timeout=10)
    assert refused.value.code == 401
    # A token minted for one server is refused by another (audience).
    minted = vaultio.write(root(mcp_stack), "auth/token/create/mcp-bank", policies=["lockgate-audience-mcp-bank"])
    req.headers["Authorization"] = f"Bearer {minted['auth']['client_token']}"
    with pytest.raises(urllib.error.HTTPError) as wrong_audience:
        await asyncio.to_thread(urllib.request.urlopen, req, timeout=10)
    assert wrong_audience.value.code == 401
    # A token left alive shows in the operator's inventory.
    inventory = cli(mcp_stack, "leases", "--json")
    assert inventory.returncode == 0, inventory.stderr
    assert [r["lease_id"].rsplit("/", 1)[0] for r in json.loads(inventory.stdout)] == ["auth/token/create/mcp-bank"]
    root(mcp_stack).auth.token.revoke_accessor(minted["auth"]["accessor"])
    # The ledger names each lease by its accessor, issued and revoked, and holds no token.
    ledger = mcp_stack.deps.ledger.events(handle.id)
    issued = [e["lease_id"] for e in ledger if e["kind"] == "lease.issued"]
    revoked = [e["lease_id"] for e in ledger if e["kind"] == "lease.revoked"]
    assert sorted(issued) == sorted(revoked) == sorted(f"token-accessor:{e['accessor']}" for e in stdio + http)
    decoded = await decoded_history(client, handle)
    assert "transferred 700 from A-2" in decoded  # the payloads were decoded: the search means something
    text = json.dumps(ledger) + decoded
    assert all(token not in text for token in tokens)
    # The regulated read (declared so: the server's word counts for nothing) tainted the run.
    assert result["steps"][2]["summary"] == "balance of A-2: 1000"
    assert result["tainted"] is True
    assert live_mcp_leases(mcp_stack) == []
    # The operator's inventory sees MCP tokens too (none left), and lists both servers' pins.
    leases = cli(mcp_stack, "leases", "--json")
    assert leases.returncode == 0 and json.loads(leases.stdout) == [], leases.stderr
    listed = json.loads(cli(mcp_stack, "mcp", "list", "--json").stdout)
    assert {(r["server"], r["transport"]) for r in listed} == {("bank", "stdio"), ("bankhttp", "http")}
    assert all(r["pinned"] == ["lookup", "purge", "reverse", "transfer"] for r in listed)


async def test_denial_on_args_and_approval(mcp_stack: LocalStack) -> None:
    client = await mcp_stack.client()
    before = len(effects("bank"))
    async with mcp_stack.worker(client):
        denied = await run(
            mcp_stack, client, [{"tool": "bank.transfer", "args": {"account": "blocked", "amount_cents": 5}}]
        )
        with pytest.raises(WorkflowFailureError) as err:
            await asyncio.wait_for(denied.result(), timeout=60)
        assert "mcp.transfer.blocked-account" in str(err.value.cause)
        # Args the pinned inputSchema does not allow never reach the server.
        bad = await run(
            mcp_stack, client, [{"tool": "bank.transfer", "args": {"account": "A-1", "amount_cents": 5, "x": 1}}]
        )
        with pytest.raises(WorkflowFailureError) as err:
            await asyncio.wait_for(bad.result(), timeout=60)
        assert "args fail the pinned inputSchema" in str(err.value.cause)
        large = await run(
            mcp_stack, client, [{"tool": "bank.transfer", "args": {"account": "A-3", "amount_cents": 20000}}]
        )
        request = await pending_of(large)
        assert request.tool == "bank.transfer" and request.group == "finance"
        assert len(effects("bank")) == before  # nothing ran while it waited
        refused = await send_verdict(
            client, large.id, request.request_id, session=mcp_stack.person("mallory"), approve=True
        )
        assert not refused.accepted
        ok = await send_verdict(client, large.id, request.request_id, session=mcp_stack.person("alice"), approve=True)
        assert ok.accepted
        await asyncio.wait_for(large.result(), timeout=60)
    after = effects("bank")[before:]
    assert [(e["tool"], e["args"]) for e in after] == [("transfer", {"account": "A-3", "amount_cents": 20000})]
    assert mcp_stack.deps.ledger.events(denied.id) and not [
        e for e in mcp_stack.deps.ledger.events(denied.id) if e["kind"] == "lease.issued"
    ]


async def test_lying_annotations_grant_nothing(mcp_stack: LocalStack) -> None:
    """`purge` says readOnlyHint/non-destructive; declared irreversible, it still needs a person."""
    client = await mcp_stack.client()
    before = len(effects("bankhttp"))
    async with mcp_stack.worker(client):
        handle = await run(mcp_stack, client, [{"tool": "bankhttp.purge", "args": {"account": "A-9"}}])
        request = await pending_of(handle)
        assert request.group == "support-leads"
        rejected = await send_verdict(
            client, handle.id, request.request_id, session=mcp_stack.person("carol"), approve=False
        )
        assert rejected.accepted
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), timeout=60)
    assert len(effects("bankhttp")) == before


async def test_a_changed_definition_blocks_the_tool_until_reviewed(mcp_stack: LocalStack) -> None:
    client = await mcp_stack.client()
    (STATE / "bank" / "variant").write_text("v2")
    try:
        before = len(effects("bank"))
        async with mcp_stack.worker(client):
            handle = await run(mcp_stack, client, [{"tool": "bank.lookup", "args": {"account": "A-1"}}])
            with pytest.raises(WorkflowFailureError) as err:
                await asyncio.wait_for(handle.result(), timeout=60)
            assert "definition changed, review with `lockgate mcp review bank`" in str(err.value.cause)
            assert len(effects("bank")) == before
            # Failed closed at once (no retries), its lease revoked.
            ledger = mcp_stack.deps.ledger.events(handle.id)
            assert len([e for e in ledger if e["kind"] == "tool.failed"]) == 1
            assert {e["lease_id"] for e in ledger if e["kind"] == "lease.issued"} == {
                e["lease_id"] for e in ledger if e["kind"] == "lease.revoked"
            }
            # The other tools of the server keep their pins and still run.
            other = await run(
                mcp_stack, client, [{"tool": "bank.transfer", "args": {"account": "A-1", "amount_cents": 1}}]
            )
            await asyncio.wait_for(other.result(), timeout=60)
            review = cli(mcp_stack, "mcp", "review", "bank")
            assert review.returncode == 1, review.stderr
            assert "bank.lookup: changed" in review.stdout and "attacker.example" in review.stdout
            assert "bank.transfer: pinned" in review.stdout
            # Still blocked until a person pins the new definition.
            again = await run(mcp_stack, client, [{"tool": "bank.lookup", "args": {"account": "A-1"}}])
            with pytest.raises(WorkflowFailureError):
                await asyncio.wait_for(again.result(), timeout=60)
            assert cli(mcp_stack, "mcp", "pin", "bank").returncode == 0
            assert cli(mcp_stack, "mcp", "review", "bank").returncode == 0
            fixed = await run(mcp_stack, client, [{"tool": "bank.lookup", "args": {"account": "A-1"}}])
            await asyncio.wait_for(fixed.result(), timeout=60)
    finally:
        (STATE / "bank" / "variant").write_text("v1")
        assert cli(mcp_stack, "mcp", "pin", "bank").returncode == 0
    assert live_mcp_leases(mcp_stack) == []


async def test_a_server_that_dies_mid_call(mcp_stack: LocalStack) -> None:
    """The stdio server dies inside `transfer`: the attempt's token is revoked, the step retried
    with the same idempotency key, and it runs once."""
    client = await mcp_stack.client()
    (STATE / "bank" / "die-once").unlink(missing_ok=True)
    before = len(effects("bank"))
    async with mcp_stack.worker(client):
        handle = await run(
            mcp_stack, client, [{"tool": "bank.transfer", "args": {"account": "die", "amount_cents": 3}}]
        )
        await asyncio.wait_for(handle.result(), timeout=90)
    assert (STATE / "bank" / "die-once").exists()
    done = effects("bank")[before:]
    assert [(e["tool"], e["key"]) for e in done] == [("transfer", f"{handle.id}:1")]
    ledger = mcp_stack.deps.ledger.events(handle.id)
    issued = [e["lease_id"] for e in ledger if e["kind"] == "lease.issued"]
    revoked = {e["lease_id"] for e in ledger if e["kind"] == "lease.revoked"}
    assert len(issued) == 2 and set(issued) == revoked
    assert [e for e in ledger if e["kind"] == "tool.failed"]
    assert live_mcp_leases(mcp_stack) == []


async def test_a_failing_run_compensates_mcp_steps(mcp_stack: LocalStack) -> None:
    """A later step fails (blocked account): the earlier MCP transfer is reversed by its declared
    compensation, another governed MCP call with the step's idempotency key."""
    client = await mcp_stack.client()
    before = len(effects("bankhttp"))
    async with mcp_stack.worker(client):
        handle = await run(
            mcp_stack,
            client,
            [
                {"tool": "bankhttp.transfer", "args": {"account": "A-5", "amount_cents": 40}},
                {"tool": "bankhttp.transfer", "args": {"account": "blocked", "amount_cents": 40}},
            ],
        )
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), timeout=90)
    done = effects("bankhttp")[before:]
    assert [(e["tool"], e["args"]) for e in done] == [
        ("transfer", {"account": "A-5", "amount_cents": 40}),
        ("reverse", {"idempotency_key": f"{handle.id}:1"}),
    ]
    assert live_mcp_leases(mcp_stack) == []


async def test_a_definition_changed_during_the_call_withholds_its_result(mcp_stack: LocalStack) -> None:
    """The server changes `transfer` while it runs and sends `tools/list_changed`: lockgate lists
    again, sees a definition nobody approved and fails the step closed (no retry)."""
    client = await mcp_stack.client()
    (STATE / "bank" / "list-changed").touch()
    try:
        async with mcp_stack.worker(client):
            handle = await run(
                mcp_stack, client, [{"tool": "bank.transfer", "args": {"account": "A-7", "amount_cents": 9}}]
            )
            with pytest.raises(WorkflowFailureError) as err:
                await asyncio.wait_for(handle.result(), timeout=60)
        assert "definition changed, review with `lockgate mcp review bank`" in str(err.value.cause)
        failed = [e for e in mcp_stack.deps.ledger.events(handle.id) if e["kind"] == "tool.failed"]
        assert len(failed) == 1  # non-retryable: one attempt
    finally:
        (STATE / "bank" / "list-changed").unlink()
        (STATE / "bank" / "variant").write_text("v1")
    assert live_mcp_leases(mcp_stack) == []


async def test_an_http_server_that_dies_and_stays_down_is_compensated(mcp_stack: LocalStack) -> None:
    """The HTTP server dies inside `transfer` and stays down: the step is retried until its attempts
    run out, every attempt's token revoked, and the run's earlier stdio transfer is reversed."""
    client = await mcp_stack.client()
    (STATE / "bankhttp" / "die-once").unlink(missing_ok=True)
    before = len(effects("bank"))
    try:
        async with mcp_stack.worker(client):
            handle = await run(
                mcp_stack,
                client,
                [
                    {"tool": "bank.transfer", "args": {"account": "A-8", "amount_cents": 11}},
                    {"tool": "bankhttp.transfer", "args": {"account": "die", "amount_cents": 11}},
                ],
            )
            with pytest.raises(WorkflowFailureError) as err:
                await asyncio.wait_for(handle.result(), timeout=120)
        assert "server failed" in str(err.value.cause)
        assert _HTTP[0].poll() is not None  # it really died
        done = effects("bank")[before:]
        assert [(e["tool"], e["args"]) for e in done] == [
            ("transfer", {"account": "A-8", "amount_cents": 11}),
            ("reverse", {"idempotency_key": f"{handle.id}:1"}),
        ]
        ledger = mcp_stack.deps.ledger.events(handle.id)
        attempts = [e for e in ledger if e["kind"] == "tool.failed" and e["tool"] == "bankhttp.transfer"]
        assert len(attempts) == 6  # TOOL_CALL's attempts, each one failing as the server is gone
        issued = {e["lease_id"] for e in ledger if e["kind"] == "lease.issued"}
        assert issued == {e["lease_id"] for e in ledger if e["kind"] == "lease.revoked"}
        assert live_mcp_leases(mcp_stack) == []
    finally:
        stop_http()
        start_http()


def test_a_minted_token_is_a_lease_of_its_own_revoked_when_its_call_ends(mcp_stack: LocalStack) -> None:
    """A token role's secret path mints a token per call (a child of the run's identity), named in
    the ledger by its accessor: revoking that lease ends the token at once, while the run's identity
    lives on; revoking it again is a no-op."""
    vault = mcp_stack.deps.vault
    run_id = f"mcp-{uuid.uuid4().hex[:8]}"
    agent = mcp_stack.deps.agents.get("mcp-teller")
    assert agent is not None
    identity = vault.open_run(run_id, agent.name, agent.vault_policy, 120, "origin-m")
    try:
        lease, secret = vault.issue(run_id, "auth/token/create/mcp-bank")
        assert lease.lease_id.startswith("token-accessor:") and lease.secret_path == "auth/token/create/mcp-bank"
        token = secret["token"]
        assert token_alive(mcp_stack, token) and token not in lease.lease_id
        vault.revoke(lease.lease_id)
        assert not token_alive(mcp_stack, token)
        assert vault.identity_alive(identity.accessor)
        vault.revoke(lease.lease_id)  # already gone
    finally:
        vault.close_run(run_id, identity.accessor)
