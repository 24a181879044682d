"""No secret value appears in history, search attributes, logs, the ledger or CLI output (scenario 16).

The secrets scanned for are the ones actually issued during the test: every dynamic Postgres password
and username, every run token, plus the worker's AppRole secret id, the Vault root token, the Postgres
superuser password.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from temporalio.client import Client

from lockgate.activities.codec import TransitCodec, decode_events
from lockgate.config import Settings
from lockgate.ops import send_verdict
from tests.support.payloads import decoded_payloads
from tests.support.stack import cli, finish, pending_request, person, start


async def handle_status(handle: Any) -> Any:
    from lockgate.models import RunStatus

    return await handle.query("status", result_type=RunStatus)


async def test_no_secret_leaves_its_activity(
    client: Client,
    worker_running: str,
    deps: Any,
    settings: Settings,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    issued: list[str] = []
    vault = deps.vault
    real_issue, real_token = vault.issue, vault._run_token

    def issue(run_id: str, path: str) -> Any:
        lease, secret = real_issue(run_id, path)
        issued.extend([secret["password"], secret["username"]])
        return lease, secret

    def run_token(run_id: str) -> str:
        token = real_token(run_id)
        issued.append(token)
        return token

    monkeypatch.setattr(vault, "issue", issue)
    monkeypatch.setattr(vault, "_run_token", run_token)

    happy = await start(client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 200})
    gated = await start(client, worker_running, "refund-agent", {"order_id": "A-1002", "amount_cents": 20000})
    request = await pending_request(gated)
    await send_verdict(client, gated.id, request.request_id, session=person("bob"), approve=True)
    failing = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1003", "amount_cents": 100}},
                {"tool": "customer.notify", "args": {"order_id": "A-1003", "message": "hello"}},
            ]
        },
    )
    for handle in (happy, gated, failing):
        await finish(handle)

    secrets = set(issued) | {settings.vault_secret_id, settings.vault_token}
    secrets |= {env["LOCKGATE_PG_PASSWORD"], env["LOCKGATE_DEV_PASSWORD"]}
    secrets = {s for s in secrets if s and len(s) >= 8}
    assert len(issued) >= 10, "the flows issued credentials"

    haystacks: dict[str, str] = {}
    codec = client.data_converter.payload_codec
    assert codec is None or isinstance(codec, TransitCodec)
    async for wf in client.list_workflows():
        handle = client.get_workflow_handle(wf.id, run_id=wf.run_id)
        history = await handle.fetch_history()
        # Payloads are base64 in the JSON export: scan their decoded bytes as well, and, when they
        # are encrypted, what they decrypt to (anyone with the payload key would read it).
        events = decode_events(history.events, codec) if codec else history.events
        haystacks[f"history {wf.id}"] = history.to_json() + "\n".join(decoded_payloads(events))
        haystacks[f"search attributes {wf.id}"] = repr(wf.typed_search_attributes) + repr(wf.search_attributes)
    haystacks["ledger"] = "\n".join(f"{e.event_key} {e.run_id} {e.kind} {e.data}" for e in deps.ledger.entries())
    haystacks["logs"] = "\n".join(r.getMessage() + str(r.args) for r in caplog.records)
    for args in (
        ["status", happy.id, "--json"],
        ["audit", gated.id, "--format", "json"],
        ["audit", failing.id],
        ["leases", "--json"],
        ["pending", "--json"],
        ["dev", "status", "--json"],
    ):
        result = await cli(env, *args)
        haystacks[f"cli {' '.join(args)}"] = result.stdout + result.stderr

    assert len(haystacks) > 10
    # The scan looks where the ids are: lease ids (not secrets) do appear in history and ledger.
    lease_ids = [s.lease_id for s in (await handle_status(happy)).steps if s.lease_id]
    assert lease_ids and all(i in haystacks[f"history {happy.id}"] and i in haystacks["ledger"] for i in lease_ids)
    leaks = [(where, s[:4] + "…") for where, text in haystacks.items() for s in secrets if s in text]
    assert leaks == []
