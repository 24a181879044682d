"""Evidence that outlives the servers (scenario 25): an exported bundle verifies and its histories
replay with every server stopped, any change to it is detected; a history exported with the Temporal
CLI replays offline; audit and replay keep working from the archive once the server deleted a run;
every line of a step names its tool."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from lockgate.export import verify_bundle
from lockgate.replay import replay_files
from lockgate.spec import registry
from tests.support.offline import offline
from tests.support.stack import as_person, cli, finish, pending_request, start


@pytest.fixture(scope="module")
async def clear(settings: Any, deps: Any) -> AsyncIterator[tuple[Client, str]]:
    """A worker whose payloads are in clear: what replays with every server stopped. (Encrypted
    histories replay offline only from a decrypted copy, or with a Vault token that may decrypt.)"""
    from lockgate import worker

    client = await worker.connect(settings.model_copy(update={"payload_key": None}), deps.vault)
    queue = f"clear-{uuid.uuid4().hex[:8]}"
    async with worker.build_worker(client, deps, task_queue=queue):
        yield client, queue


@pytest.fixture(scope="module")
async def exported(clear: tuple[Client, str], env: dict[str, str], tmp_path_factory: Any) -> dict[str, Any]:
    """A run with an approval (a refused attempt, then alice's), exported as an evidence bundle."""
    client, queue = clear
    handle = await start(client, queue, "refund-agent", {"order_id": "A-1002", "amount_cents": 15000})
    req = await pending_request(handle)
    # People's CLIs in clear too: the history holds nothing encrypted.
    clear_env = {**env, "LOCKGATE_PAYLOAD_KEY": ""}
    refused = await cli(as_person(clear_env, "mallory"), "approve", handle.id, req.request_id)
    assert refused.returncode == 2
    ok = await cli(as_person(clear_env, "alice"), "approve", handle.id, req.request_id, "--reason", "checked")
    assert ok.returncode == 0, ok.stderr
    assert await finish(handle) is None
    out = tmp_path_factory.mktemp("bundle")
    path = out / "evidence.json"
    result = await cli(env, "audit", handle.id, "--export", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified" in result.stderr
    keys = out / "keys.json"
    pinned = json.loads((Path(env["LOCKGATE_STATE_DIR"]) / "ledger-anchor.json").read_text())["keys"]
    keys.write_text(json.dumps(pinned))
    return {"run_id": handle.id, "path": path, "keys": keys, "audit": result.stdout, "dir": out}


async def test_bundle_verifies_and_replays_with_every_server_stopped(
    exported: dict[str, Any], env: dict[str, str], tmp_path: Path
) -> None:
    bundle = json.loads(exported["path"].read_text())
    assert {h["run_id"] for h in bundle["histories"]} and bundle["policy_bundles"]
    approvals = [a for a in bundle["approvals"] if a["kind"] == "approval.accepted"]
    assert [a["approver"] for a in approvals] == ["alice"]
    assert any(a["kind"] == "approval.refused" and a["approver"] == "mallory" for a in bundle["approvals"])

    dead = offline(env, tmp_path)
    verified = await cli(dead, "verify", "--bundle", str(exported["path"]), "--keys", str(exported["keys"]))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "bundle intact" in verified.stdout and "histories: 1" in verified.stdout
    replayed = await cli(dead, "replay", "--history", str(exported["path"]), "--keys", str(exported["keys"]), "--json")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    (report,) = json.loads(replayed.stdout)
    assert report["ok"] and report["run_id"] == exported["run_id"] and report["decisions"] >= 3

    # Without a trusted key the bundle's own keys prove nothing.
    unanchored = await cli(dead, "verify", "--bundle", str(exported["path"]))
    assert unanchored.returncode == 1 and "no trusted public key" in unanchored.stdout


def _decode(payload: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(payload["data"]))


def _encode(payload: dict[str, Any], value: Any) -> None:
    payload["data"] = base64.b64encode(json.dumps(value).encode()).decode()


def _changes() -> dict[str, Any]:
    """Ways to change a bundle: each must be detected."""

    def entry_data(b: dict[str, Any]) -> None:
        e = next(e for c in b["chains"] for e in c["entries"] if e["kind"] == "approval.accepted")
        e["data"] = e["data"].replace('"alice"', '"carol"')

    def entry_dropped(b: dict[str, Any]) -> None:
        entries = b["chains"][0]["entries"]
        del entries[len(entries) // 2]

    def entry_rehashed(b: dict[str, Any]) -> None:
        # A forger who recomputes the chain after an edit still cannot produce the signed head.
        from lockgate.evidence import entry_hash

        chain = b["chains"][0]
        prev = "0" * 64
        for e in chain["entries"]:
            if e["kind"] == "decision":
                e["data"] = e["data"].replace('"outcome":"approval"', '"outcome":"allow"')
            e["prev_hash"] = prev
            e["hash"] = entry_hash(
                prev, e["chain"], e["chain_seq"], e["event_key"], e["run_id"], e["kind"], e["at"], e["data"]
            )
            prev = e["hash"]

    def history_signal(b: dict[str, Any]) -> None:
        # The approval (a signed statement in an update): who signed it is changed.
        for ev in b["histories"][0]["history"]["events"]:
            attrs = ev.get("workflowExecutionUpdateAcceptedEventAttributes")
            if attrs and attrs["acceptedRequest"]["input"]["name"] == "approve":
                payload = attrs["acceptedRequest"]["input"]["args"]["payloads"][0]
                value = _decode(payload)
                person = value["statement"]["person"]
                value["statement"]["person"] = "mallory" if person == "alice" else "alice"
                _encode(payload, value)

    def history_event_dropped(b: dict[str, Any]) -> None:
        del b["histories"][0]["history"]["events"][-3]

    def history_dropped(b: dict[str, Any]) -> None:
        b["histories"].clear()

    def proof_path(b: dict[str, Any]) -> None:
        proof = b["chains"][0]["proofs"][-1]
        proof["head"] = "f" * 64

    def signature(b: dict[str, Any]) -> None:
        cp = b["chains"][0]["proofs"][-1]["checkpoint"]
        raw = bytearray(base64.b64decode(cp["signature"].split(":")[2]))
        raw[0] ^= 1
        cp["signature"] = ":".join([*cp["signature"].split(":")[:2], base64.b64encode(bytes(raw)).decode()])

    def checkpoint_body(b: dict[str, Any]) -> None:
        cp = b["chains"][0]["proofs"][-1]["checkpoint"]
        cp["body"] = cp["body"].replace('"at":"', '"at":"1')

    def policy_text(b: dict[str, Any]) -> None:
        content = next(iter(b["policy_bundles"].values()))
        name = next(iter(content["policies"]))
        content["policies"][name] = content["policies"][name].replace("permit", "forbid", 1)

    def approvals(b: dict[str, Any]) -> None:
        b["approvals"][-1]["approver"] = "bob"

    def keys(b: dict[str, Any]) -> None:
        b["keys"] = {v: base64.b64encode(bytes(32)).decode() for v in b["keys"]}

    def extra_field(b: dict[str, Any]) -> None:
        b["note"] = "approved by the CFO"

    return {f.__name__: f for f in (entry_data, entry_dropped, entry_rehashed, history_signal, history_event_dropped,
                                    history_dropped, proof_path, signature, checkpoint_body, policy_text, approvals,
                                    keys, extra_field)}  # fmt: skip


def test_any_change_to_the_bundle_is_detected(exported: dict[str, Any]) -> None:
    bundle = json.loads(exported["path"].read_text())
    keys = {int(v): k for v, k in json.loads(exported["keys"].read_text()).items()}
    assert verify_bundle(bundle, trusted_keys=keys).ok
    for name, change in _changes().items():
        changed = copy.deepcopy(bundle)
        change(changed)
        report = verify_bundle(changed, trusted_keys=keys)
        assert not report.ok, f"{name}: not detected"


async def test_changed_bundle_fails_verify_and_replay_offline(
    exported: dict[str, Any], env: dict[str, str], tmp_path: Path
) -> None:
    bundle = json.loads(exported["path"].read_text())
    _changes()["history_signal"](bundle)
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(bundle))
    dead = offline(env, tmp_path)
    verified = await cli(dead, "verify", "--bundle", str(path), "--keys", str(exported["keys"]))
    assert verified.returncode == 1 and "does not match the digest the ledger recorded" in verified.stdout
    replayed = await cli(dead, "replay", "--history", str(path), "--keys", str(exported["keys"]))
    assert replayed.returncode == 1 and "MISMATCH" in replayed.stdout


def test_the_timeline_names_the_tool_on_every_step_line_and_the_approver(exported: dict[str, Any]) -> None:
    lines = [line for line in exported["audit"].splitlines() if line[14:19] == "step "]
    assert lines, exported["audit"]
    for line in lines:
        assert "refunds.issue" in line or "orders.lookup" in line, line
    approvals = [line for line in lines if "approval.accepted" in line]
    assert len(approvals) == 1 and "approve by alice" in approvals[0] and "refunds.issue" in approvals[0]
    refused = [line for line in lines if "approval.refused" in line]
    assert refused and "mallory" in refused[0] and "refunds.issue" in refused[0]


async def test_history_exported_with_the_temporal_cli_replays_offline(
    clear: tuple[Client, str], env: dict[str, str], tmp_path: Path
) -> None:
    client, queue = clear
    handle = await start(client, queue, "refund-agent", {"order_id": "A-1001", "amount_cents": 140})
    assert await finish(handle) is None
    temporal = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    path = tmp_path / "history.json"
    # Off the event loop: the session's in-process worker keeps serving meanwhile.
    shown = await asyncio.to_thread(
        subprocess.run,
        [temporal, "workflow", "show", "-w", handle.id, "-o", "json", "--address", env["LOCKGATE_TEMPORAL_ADDRESS"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    path.write_text(shown.stdout)
    dead = offline(env, tmp_path)
    # The current policy dir hashes as the recorded bundle: the decisions are re-checked against it.
    result = await cli(dead, "replay", "--history", str(path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = json.loads(result.stdout)
    assert report["ok"] and report["run_id"] == handle.id and report["decisions"] == 2

    # A recorded decision changed in the exported history: the re-check disagrees.
    doc = json.loads(shown.stdout)
    for ev in doc["events"]:
        attrs = ev.get("activityTaskCompletedEventAttributes")
        if attrs:
            payload = attrs["result"]["payloads"][0]
            value = _decode(payload)
            if isinstance(value, dict) and "decision" in value:
                value["decision"]["policy_ids"] = ["refund-agent.something-else"]
                _encode(payload, value)
                break
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(doc))
    bad = await cli(dead, "replay", "--history", str(changed))
    assert bad.returncode == 1 and "re-evaluated" in bad.stdout, bad.stdout + bad.stderr

    # A history cut short of an activity it recorded: the code would take another path.
    doc = json.loads(shown.stdout)
    doc["events"] = [e for e in doc["events"] if "activityTaskScheduledEventAttributes" not in e][:12]
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(doc))
    cut_result = await cli(dead, "replay", "--history", str(cut))
    assert cut_result.returncode == 1, cut_result.stdout + cut_result.stderr


async def test_audit_and_replay_outlive_the_servers_retention(
    client: Client, worker_running: str, env: dict[str, str], settings: Any
) -> None:
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 150})
    assert await finish(handle) is None
    archived = await cli(env, "archive", "--json")
    assert archived.returncode == 0, archived.stderr
    assert handle.id in json.loads(archived.stdout)["archived"]
    await client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=settings.namespace, workflow_execution=WorkflowExecution(workflow_id=handle.id)
        )
    )
    deadline = time.monotonic() + 120  # the server deletes in the background: slow on a busy machine
    while True:
        try:
            await client.get_workflow_handle(handle.id).describe()
        except RPCError as err:
            assert err.status == RPCStatusCode.NOT_FOUND
            break
        assert time.monotonic() < deadline, "the server did not delete the run"
        await asyncio.sleep(0.2)

    audit = await cli(env, "audit", handle.id)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "the Temporal server no longer has this run" in audit.stdout and "run completed" in audit.stdout
    replay = await cli(env, "replay", handle.id, "--json")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    (report,) = json.loads(replay.stdout)
    assert report["ok"] and report["histories"] == 1 and report["source"].startswith("archive")
    assert report["decisions"] == 2


async def test_replay_files_rejects_what_is_not_a_history(tmp_path: Path) -> None:
    from lockgate import worker
    from lockgate.errors import UserError

    path = tmp_path / "x.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(UserError):
        await replay_files([str(path)], registry, worker.DATA_CONVERTER)
