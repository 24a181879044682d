"""Regulated data is not readable in workflow history (scenario 26): payloads are encrypted under
Vault Transit data keys; the lockgate converter (worker, CLI, replay, audit) reads them, nobody else.

Each test runs its own worker on a fresh task queue, with encryption switched on or off explicitly,
so the module means the same whichever way the session's stack is configured.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hvac
import hvac.exceptions
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.converter import DataConverter

from lockgate import worker
from lockgate.activities.codec import ENCODING, PayloadKeyUnavailable, TransitCodec, VaultTransit, decode_events
from lockgate.bootstrap import PAYLOAD_KEY, PAYLOAD_READER_POLICY, PAYLOAD_WRITER_POLICY
from lockgate.config import Settings
from lockgate.ops import send_verdict
from tests.support.payloads import decoded_payloads
from tests.support.stack import Outside, cli, finish, pending_request, person, start

# The customer of order A-1001 in the seeded shop (lockgate/bootstrap.py): what customers.profile reads.
PROFILE = ("Ada Lovelace", "ada@example.com")


@asynccontextmanager
async def lockgate_worker(
    settings: Settings, deps: Any, payload_key: str | None, queue: str | None = None
) -> AsyncIterator[tuple[Client, str]]:
    """A client and a worker (on a fresh queue unless named), built as production builds them: its
    own converter, so its own data keys, used with the worker's AppRole identity."""
    configured = settings.model_copy(update={"payload_key": payload_key})
    client = await worker.connect(configured, deps.vault)
    queue = queue or f"codec-{uuid.uuid4().hex[:8]}"
    async with worker.build_worker(client, deps, task_queue=queue):
        yield client, queue


async def profile_run(client: Client, queue: str) -> WorkflowHandle[Any, Any]:
    """refund-agent with notify: it reads the customer's profile (regulated), then the egress step
    waits for support-leads; carol approves (an update, a memo update), and the run completes."""
    handle = await start(
        client, queue, "refund-agent", {"order_id": "A-1001", "amount_cents": 100, "reason": "late", "notify": True}
    )
    request = await pending_request(handle)
    assert request.tool == "customer.notify"
    assert (await send_verdict(client, handle.id, request.request_id, session=person("carol"), approve=True)).accepted
    assert await finish(handle) is None
    return handle


def raw_text(history: WorkflowHistory) -> str:
    """What anyone with access to Temporal reads: the JSON export plus every payload's bytes as the
    default converter would take them."""
    return history.to_json() + "\n".join(decoded_payloads(history.events))


def profile_result(history: WorkflowHistory) -> Payload:
    """The customers.profile activity's result payload (the activity scheduled with that name)."""
    scheduled = {
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "tool.customers.profile"
    }
    (result,) = [
        e.activity_task_completed_event_attributes.result.payloads[0]
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and e.activity_task_completed_event_attributes.scheduled_event_id in scheduled
    ]
    return result


def first_event(history: WorkflowHistory, event_type: int) -> Any:
    return next(e for e in history.events if e.event_type == event_type)


async def test_profile_is_unreadable_in_history_and_decodes_with_the_key(
    settings: Settings, deps: Any, worker_running: str
) -> None:
    async with lockgate_worker(settings, deps, PAYLOAD_KEY) as (client, queue):
        handle = await profile_run(client, queue)
        history = await handle.fetch_history()
        description = await handle.describe()

    # Nobody without the key reads the profile: not in the export, not in any payload's bytes.
    raw = raw_text(history)
    assert [v for v in PROFILE if v in raw] == []
    # The default converter cannot even make a value of the profile's result.
    result = profile_result(history)
    assert result.metadata["encoding"] == ENCODING
    assert result.metadata["encryption-key-id"] == PAYLOAD_KEY.encode()
    assert result.metadata["encryption-data-key"].startswith(b"vault:v")
    with pytest.raises(Exception, match="encoding"):
        DataConverter.default.payload_converter.from_payloads([result])
    # Workflow input, the signed approval (an update) and the pending-approvals memo are encrypted too.
    started = first_event(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    update = first_event(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)
    memo = first_event(history, EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED)
    for payload in (
        started.workflow_execution_started_event_attributes.input.payloads[0],
        update.workflow_execution_update_accepted_event_attributes.accepted_request.input.args.payloads[0],
        memo.workflow_properties_modified_event_attributes.upserted_memo.fields["pending"],
    ):
        assert payload.metadata["encoding"] == ENCODING
    # Search attributes stay plain (Temporal lists and filters on them) and carry no profile value.
    attributes = repr(description.search_attributes)
    assert "refund-agent" in attributes and [v for v in PROFILE if v in attributes] == []

    # The lockgate converter reads it all back.
    codec = client.data_converter.payload_codec
    assert isinstance(codec, TransitCodec)
    (outcome,) = await client.data_converter.decode([result])  # a ToolOutcome, as JSON
    assert (outcome["result"]["name"], outcome["result"]["email"]) == PROFILE
    decoded = "\n".join(decoded_payloads(decode_events(history.events, codec)))
    assert all(v in decoded for v in PROFILE)
    assert '"approver":"carol"' in decoded.replace(" ", "")


async def test_without_a_payload_key_history_is_in_clear(settings: Settings, deps: Any, worker_running: str) -> None:
    """The switch: no key, nothing encrypted (and the scan above is able to see the profile when it
    is there); encrypted runs of before still read wherever there is a Vault identity."""
    plain = settings.model_copy(update={"payload_key": None, "vault_token": None, "operator_token": None})
    assert worker.data_converter(plain) is worker.DATA_CONVERTER
    async with lockgate_worker(settings, deps, PAYLOAD_KEY) as (client, queue):
        encrypted = profile_result(await (await profile_run(client, queue)).fetch_history())
    async with lockgate_worker(settings, deps, None) as (client, queue):
        history = await (await profile_run(client, queue)).fetch_history()
        (outcome,) = await client.data_converter.decode([encrypted])
    assert all(v in raw_text(history) for v in PROFILE)
    assert profile_result(history).metadata["encoding"] == b"json/plain"
    assert outcome["result"]["email"] == PROFILE[1]


async def test_rotation_keeps_old_runs_readable(
    settings: Settings, deps: Any, worker_running: str, outside: Outside, env: dict[str, str]
) -> None:
    async with lockgate_worker(settings, deps, PAYLOAD_KEY) as (client, queue):
        old = await profile_run(client, queue)
    old_history = await old.fetch_history()
    old_version = int(profile_result(old_history).metadata["encryption-key-version"])

    outside.vault.secrets.transit.rotate_key(name=PAYLOAD_KEY)

    # A new worker on the same queue (new converter, so new data keys and an empty unwrap cache)
    # wraps under the new version, and still reads the old run: it replays it to answer the CLI's
    # status query (operator token), the audit decodes its history, the replayer replays it.
    encrypted = {**env, "LOCKGATE_PAYLOAD_KEY": PAYLOAD_KEY}
    async with lockgate_worker(settings, deps, PAYLOAD_KEY, queue) as (client, queue):
        new = await profile_run(client, queue)
        new_history = await new.fetch_history()
        assert int(profile_result(new_history).metadata["encryption-key-version"]) == old_version + 1
        (outcome,) = await client.data_converter.decode([profile_result(old_history)])
        assert outcome["result"]["email"] == PROFILE[1]

        status = await cli(encrypted, "status", old.id, "--json")
        assert status.returncode == 0, status.stderr
        steps = {s["tool"]: s for s in json.loads(status.stdout)["steps"]}
        assert json.loads(status.stdout)["state"] == "completed" and "customers.profile" in steps

        audit = await cli(encrypted, "audit", old.id, "--format", "json")
        assert audit.returncode == 0, audit.stderr
        summaries = [e["summary"] for e in json.loads(audit.stdout)["entries"] if e["kind"] == "history"]
        assert "run started: agent refund-agent by erin" in summaries[0]
        assert any("update: approve by carol (signed) on request" in s for s in summaries)

        replay = await cli(encrypted, "replay", old.id, new.id)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "2 runs replayed, 0 with mismatches" in replay.stdout


async def test_cli_reads_with_the_operators_token_or_fails_in_one_line(
    settings: Settings, deps: Any, worker_running: str, outside: Outside, env: dict[str, str]
) -> None:
    def token(*policies: str) -> str:
        return outside.vault.auth.token.create(policies=list(policies), ttl="10m")["auth"]["client_token"]

    encrypted = {**env, "LOCKGATE_PAYLOAD_KEY": PAYLOAD_KEY}
    async with lockgate_worker(settings, deps, PAYLOAD_KEY) as (client, queue):
        handle = await start(client, queue, "refund-agent", {"order_id": "A-1001", "amount_cents": 100})
        assert await finish(handle) is None
        await check_cli_access(handle, encrypted, token)


async def check_cli_access(handle: WorkflowHandle[Any, Any], encrypted: dict[str, str], token: Any) -> None:
    # No Vault token at all.
    none = await cli({**encrypted, "VAULT_TOKEN": ""}, "status", handle.id)
    assert none.returncode == 2 and none.stderr.count("\n") == 1 and "LOCKGATE_OPERATOR_TOKEN" in none.stderr
    # A token whose policies do not reach the payload key.
    denied = await cli({**encrypted, "LOCKGATE_OPERATOR_TOKEN": token("default")}, "status", handle.id)
    assert denied.returncode == 2 and denied.stderr.count("\n") == 1
    assert f"transit/decrypt/{PAYLOAD_KEY}" in denied.stderr and "Traceback" not in denied.stderr
    # An auditor without the key still gets the ledger's timeline, told why the history is missing.
    ledger_only = await cli({**encrypted, "LOCKGATE_OPERATOR_TOKEN": token("default")}, "audit", handle.id)
    assert ledger_only.returncode == 0 and "gate ALLOW" in ledger_only.stdout
    assert "history not shown" in ledger_only.stderr
    # A token Vault does not know.
    bogus = await cli({**encrypted, "LOCKGATE_OPERATOR_TOKEN": "hvs.not-a-token"}, "status", handle.id)
    assert bogus.returncode == 2 and bogus.stderr.count("\n") == 1 and "invalid or expired" in bogus.stderr
    # A reader's token (decrypt only) is enough to read.
    reader = await cli({**encrypted, "LOCKGATE_OPERATOR_TOKEN": token(PAYLOAD_READER_POLICY)}, "status", handle.id)
    assert reader.returncode == 0, reader.stderr
    assert f"run {handle.id}: completed" in reader.stdout


def test_worker_policy_has_exactly_the_transit_paths_it_needs(deps: Any, outside: Outside) -> None:
    policy = outside.vault.sys.read_policy(name="lockgate-worker")["data"]["rules"]
    transit = sorted(line.split('"')[1] for line in policy.splitlines() if '"transit/' in line)
    # Payloads (data keys, decrypt), the seal of engine-only state (MAC and check), people's public
    # keys (read), the ledger's checkpoint key: nothing else, and nothing that signs as a person.
    assert transit == sorted(
        [
            f"transit/datakey/plaintext/{PAYLOAD_KEY}",
            f"transit/decrypt/{PAYLOAD_KEY}",
            "transit/hmac/lockgate-seal/*",
            "transit/verify/lockgate-seal/*",
            "transit/keys/approver-*",
            # The ledger's checkpoints: sign with its key and read its public versions.
            "transit/sign/lockgate-ledger",
            "transit/keys/lockgate-ledger",
            # The ledger's rows: a MAC per row, with a key derived from this one (never exported).
            "transit/hmac/lockgate-ledger-rows/*",
        ]
    )
    approle: hvac.Client = deps.vault.client
    assert approle.adapter.post(f"/v1/transit/datakey/plaintext/{PAYLOAD_KEY}", json={})["data"]["ciphertext"]
    for forbidden in (f"/v1/transit/keys/{PAYLOAD_KEY}/rotate", f"/v1/transit/encrypt/{PAYLOAD_KEY}"):
        with pytest.raises(hvac.exceptions.Forbidden):
            approle.adapter.post(forbidden, json={"plaintext": ""})
    with pytest.raises(hvac.exceptions.Forbidden):
        approle.adapter.get(f"/v1/transit/export/encryption-key/{PAYLOAD_KEY}")


async def test_data_keys_renew_in_the_background_and_outlast_a_vault_outage(outside: Outside) -> None:
    """Past its TTL a data key keeps serving while a new one is fetched off the hot path; when Vault
    does not answer, encoding and decoding go on with the keys at hand (up to their maximum age)."""
    token = outside.vault.auth.token.create(policies=[PAYLOAD_WRITER_POLICY], ttl="10m")["auth"]["client_token"]
    live = hvac.Client(url=outside.settings.vault_addr, token=token)
    # hvac annotates timeout as int; it hands it to requests, which takes float seconds.
    dead = hvac.Client(url="http://127.0.0.1:9", token=token, timeout=0.5)  # pyright: ignore[reportArgumentType]
    vault = [live]
    codec = TransitCodec(VaultTransit(lambda: vault[0]), PAYLOAD_KEY, data_key_ttl=0.0)
    plain = worker.DATA_CONVERTER.payload_converter.to_payloads([dict(zip(("name", "email"), PROFILE, strict=True))])

    first = (await codec.encode(plain))[0]
    wrapped = {first.metadata["encryption-data-key"]}
    for _ in range(100):  # each encode past the TTL may start one background renewal
        wrapped.add((await codec.encode(plain))[0].metadata["encryption-data-key"])
        if len(wrapped) > 1:
            break
        await asyncio.sleep(0.02)
    assert len(wrapped) > 1, "the data key was never renewed"

    vault[0] = dead
    t0 = time.monotonic()
    during = [(await codec.encode(plain))[0] for _ in range(20)]
    assert time.monotonic() - t0 < 1.0, "encoding waited for an unreachable Vault"
    assert await codec.decode([first, *during]) == [plain[0]] * 21
    # A codec that has never seen these data keys needs Vault, and says so in one line.
    with pytest.raises(PayloadKeyUnavailable, match="did not answer"):
        await TransitCodec(VaultTransit(lambda: dead), None).decode([first])
