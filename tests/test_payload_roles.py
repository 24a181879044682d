"""Who may read what (issue 27): decrypting payloads is a role (the reader groups' identity policy),
encrypting is all a person starting a run needs. Attacked as mallory (no group) and erin (a requester):
their own Vault tokens, the codec server, the CLI and the inbox read no regulated payload."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from temporalio.client import Client

from lockgate.bootstrap import PAYLOAD_KEY, PAYLOAD_READER_GROUPS, PAYLOAD_READER_POLICY
from lockgate.config import Settings
from tests.support.inbox import served_inbox, sign_in
from tests.support.stack import Outside, as_person, cli, finish, pending_request, person, start
from tests.test_codec_server import SECRET, codec_server, encrypted_body, post, values  # noqa: F401 - fixture

WITHHELD = "payload withheld: requires group auditors, operators or an approver group"
REFUND = {"order_id": "A-1001", "amount_cents": 100}


def capabilities(settings: Settings, name: str, path: str) -> list[str]:
    client = person(name).client()
    resp = client.adapter.post("/v1/sys/capabilities-self", json={"paths": [path]})
    return list(resp["data"][path])


def test_only_the_reader_groups_may_decrypt(settings: Settings, outside: Outside) -> None:
    decrypt, datakey = f"transit/decrypt/{PAYLOAD_KEY}", f"transit/datakey/plaintext/{PAYLOAD_KEY}"
    for name in ("mallory", "erin"):
        assert capabilities(settings, name, decrypt) == ["deny"], name
        assert capabilities(settings, name, datakey) == ["update"], name
    for name in ("alice", "carol", "frank"):
        assert capabilities(settings, name, decrypt) == ["update"], name
    # The role is the group's identity policy, not a person's token policy.
    for group in PAYLOAD_READER_GROUPS:
        data = outside.vault.adapter.get(f"/v1/identity/group/name/{group}")["data"]
        assert data["policies"] == [PAYLOAD_READER_POLICY], group
    assert outside.vault.adapter.get("/v1/identity/group/name/requesters")["data"]["policies"] in (None, [])


async def test_the_codec_server_decodes_for_readers_only(codec_server: str, settings: Settings, deps: Any) -> None:  # noqa: F811
    body = await encrypted_body(settings, deps)
    for name in ("mallory", "erin"):
        refused = await asyncio.to_thread(post, f"{codec_server}/decode", body, person(name).token)
        assert refused.status_code == 403, name
        assert refused.json()["error"].startswith(WITHHELD), refused.json()
        assert "Ada" not in refused.text
    ok = await asyncio.to_thread(post, f"{codec_server}/decode", body, person("carol").token)
    assert ok.status_code == 200 and values(ok)[0] == SECRET


async def test_a_requester_starts_and_learns_the_outcome_but_reads_no_payload(
    env: dict[str, str], worker_running: str
) -> None:
    erin = as_person(env, "erin")
    waited = await cli(erin, "run", "refund-agent", "--input", json.dumps(REFUND), "--wait", "--json")
    assert waited.returncode == 0, waited.stderr
    status = json.loads(waited.stdout)
    assert status["state"] == "completed" and WITHHELD in status["error"]
    assert status["steps"] == [] and status["initiator"] == "?"
    run_id = status["run_id"]

    refused = await cli(erin, "status", run_id)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"lockgate: {WITHHELD} (this Vault token may not use transit/decrypt/")

    audit = await cli(erin, "audit", run_id)
    assert audit.returncode == 0, audit.stderr
    assert f"run status and history not shown: {WITHHELD}" in audit.stderr
    assert "refund-agent.issue-refunds" in audit.stdout  # the ledger (no payloads) is still shown

    reader = await cli(as_person(env, "carol"), "status", run_id, "--json")
    assert reader.returncode == 0 and json.loads(reader.stdout)["initiator"] == "erin"


async def test_the_inbox_shows_arguments_only_to_readers(
    settings: Settings, client: Client, worker_running: str
) -> None:
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1002", "amount_cents": 25000})
    req = await pending_request(handle)
    url = f"/runs/{handle.id}/requests/{req.request_id}"
    try:
        async with served_inbox(settings, client) as (base, _inbox):
            for name, reads in (("mallory", False), ("erin", False), ("alice", True)):
                async with httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=30) as http:
                    await sign_in(http, name)
                    card = (await http.get(url)).text
                    assert ("25000" in card) is reads, name  # the amount argument
                    assert (WITHHELD in card) is not reads, name
                    assert req.args_digest in card  # what an approver signs is never withheld
    finally:
        await handle.cancel()
        await finish(handle)
