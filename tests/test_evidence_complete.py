"""Evidence is complete or it fails (issue 26.6), attacked: gutted bundles (each part removed alone,
and the after-close fragment alone), a bundle re-signed with a foreign key, a pinned anchor others
could have written, and encrypted histories replayed with every server stopped."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio.client import Client

import tests.test_evidence_bundle as _bundle_tests
from lockgate.evidence import AFTER_CLOSE, Head, checkpoint_body, checkpoint_message, entry_hash
from lockgate.export import verify_bundle
from tests.support.offline import offline
from tests.support.stack import cli, finish, start

# The exported bundle of a run with an approval, and the clear worker it ran on: shared fixtures.
clear = _bundle_tests.clear
exported = _bundle_tests.exported

Gut = Callable[[dict[str, Any]], None]


def _main(b: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in b["chains"] if c["chain"] == b["run_id"])


def _guts() -> dict[str, tuple[Gut, str]]:
    """Each part of a bundle removed alone, and what the report must name as missing."""

    def main_chain(b: dict[str, Any]) -> None:
        b["chains"] = [c for c in b["chains"] if c["chain"] != b["run_id"]]

    def after_close_fragment_only(b: dict[str, Any]) -> None:
        # The reported attack: the main chain, policy bundles and approvals stripped at once.
        b["chains"] = [c for c in b["chains"] if c["chain"].endswith(AFTER_CLOSE)]
        b["policy_bundles"] = {}
        b["approvals"] = []

    def opening(b: dict[str, Any]) -> None:
        entries = _main(b)["entries"]  # the start's authorization (start.decision) comes first
        del entries[next(i for i, e in enumerate(entries) if e["kind"] == "run.opened")]

    def closing(b: dict[str, Any]) -> None:
        del _main(b)["entries"][-1]

    def final_head(b: dict[str, Any]) -> None:
        main = _main(b)
        main["proofs"] = [p for p in main["proofs"] if not p["final"]]

    def policy_bundles(b: dict[str, Any]) -> None:
        b["policy_bundles"] = {}

    def approvals(b: dict[str, Any]) -> None:
        b["approvals"] = []

    def approval_entry(b: dict[str, Any]) -> None:
        main = _main(b)
        main["entries"] = [e for e in main["entries"] if e["kind"] != "approval.accepted"]
        b["approvals"] = [a for a in b["approvals"] if a["kind"] != "approval.accepted"]

    def histories(b: dict[str, Any]) -> None:
        b["histories"] = []

    def archived_record(b: dict[str, Any]) -> None:
        b["chains"] = [c for c in b["chains"] if not c["chain"].endswith(AFTER_CLOSE)]

    return {
        "main_chain": (main_chain, "main chain"),
        "after_close_fragment_only": (after_close_fragment_only, "main chain"),
        "opening": (opening, "run.opened"),
        "closing": (closing, "run.closed"),
        "final_head": (final_head, "signed final head"),
        "policy_bundles": (policy_bundles, "policy bundle"),
        "approvals": (approvals, "approval evidence"),
        "approval_entry": (approval_entry, "approval.accepted of request"),
        "histories": (histories, "history"),
        "archived_record": (archived_record, "history.archived"),
    }


def _keys(exported: dict[str, Any]) -> dict[int, str]:
    return {int(v): k for v, k in json.loads(exported["keys"].read_text()).items()}


def test_each_part_removed_alone_is_named_missing(exported: dict[str, Any]) -> None:
    bundle = json.loads(exported["path"].read_text())
    keys = _keys(exported)
    whole = verify_bundle(bundle, trusted_keys=keys, trust="--keys")
    assert whole.ok and whole.anchored and not whole.missing, whole.problems
    for name, (gut, named) in _guts().items():
        gutted = copy.deepcopy(bundle)
        gut(gutted)
        report = verify_bundle(gutted, trusted_keys=keys, trust="--keys")
        assert not report.ok, f"{name}: reported intact"
        assert any(named in m for m in report.missing), f"{name}: {named!r} not named in {report.missing}"


async def test_the_after_close_fragment_fails_verify_with_its_missing_parts(
    exported: dict[str, Any], env: dict[str, str], tmp_path: Path
) -> None:
    bundle = json.loads(exported["path"].read_text())
    _guts()["after_close_fragment_only"][0](bundle)
    path = tmp_path / "fragment.json"
    path.write_text(json.dumps(bundle))
    dead = offline(env, tmp_path)
    text = await cli(dead, "verify", "--bundle", str(path), "--keys", str(exported["keys"]))
    assert text.returncode == 1, text.stdout + text.stderr
    assert f"missing: the run's main chain {exported['run_id']}" in text.stdout
    assert "bundle NOT intact" in text.stdout
    as_json = await cli(dead, "verify", "--bundle", str(path), "--keys", str(exported["keys"]), "--json")
    doc = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and not doc["intact"] and doc["anchored"] and doc["missing"]


def _resign(bundle: dict[str, Any], signer: Ed25519PrivateKey) -> None:
    """A forger's best: every chain rewritten (a decision turned into an allow), re-chained, and
    committed by checkpoints signed with a key of the forger's own, which the bundle then carries."""
    for chain in bundle["chains"]:
        prev = "0" * 64
        for e in chain["entries"]:
            if e["kind"] == "decision":
                e["data"] = e["data"].replace('"outcome":"approval"', '"outcome":"allow"')
            e["prev_hash"] = prev
            e["hash"] = entry_hash(
                prev, e["chain"], e["chain_seq"], e["event_key"], e["run_id"], e["kind"], e["at"], e["data"]
            )
            prev = e["hash"]
        final = chain["chain"] == bundle["run_id"]
        head = Head(chain["chain"], len(chain["entries"]), prev, final)
        body = checkpoint_body(bundle["ledger_id"], 900, "0" * 64, "2026-01-01T00:00:00Z", [head])
        digest = hashlib.sha256(body.encode()).hexdigest()
        signature = "vault:v1:" + base64.b64encode(signer.sign(checkpoint_message(digest))).decode()
        chain["proofs"] = [
            {
                "size": head.size,
                "head": head.head,
                "final": final,
                "index": 0,
                "path": [],
                "checkpoint": {"seq": 900, "body": body, "hash": digest, "signature": signature, "at": "x"},
            }
        ]
    public = signer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    bundle["keys"] = {"1": base64.b64encode(public).decode()}


def _anchor(state: Path, keys: dict[str, str], mode: int = 0o600) -> Path:
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state / "ledger-anchor.json"
    path.write_text(json.dumps({"keys": keys}))
    path.chmod(mode)
    return path


async def test_a_bundle_re_signed_with_a_foreign_key_is_refused_or_unanchored(
    exported: dict[str, Any], env: dict[str, str], tmp_path: Path
) -> None:
    genuine = json.loads(exported["keys"].read_text())
    forged = json.loads(exported["path"].read_text())
    _resign(forged, Ed25519PrivateKey.generate())
    forged_path = tmp_path / "forged.json"
    forged_path.write_text(json.dumps(forged))
    forged_keys = tmp_path / "forged-keys.json"
    forged_keys.write_text(json.dumps(forged["keys"]))

    # The forgery is consistent in itself: against its own key it would pass. Nothing else may.
    assert verify_bundle(forged, trusted_keys={1: forged["keys"]["1"]}, trust="forger").ok

    dead = offline(env, tmp_path)
    keyed = await cli(dead, "verify", "--bundle", str(forged_path), "--keys", str(exported["keys"]))
    assert keyed.returncode == 1 and "is not a trusted key" in keyed.stdout, keyed.stdout

    bare = await cli(dead, "verify", "--bundle", str(forged_path), "--json")
    doc = json.loads(bare.stdout)
    assert bare.returncode == 1 and doc["anchored"] is False and not doc["intact"]
    text = await cli(dead, "verify", "--bundle", str(forged_path))
    assert "UNANCHORED" in text.stdout, text.stdout

    # A pinned anchor carrying the forger's key that others could have written is refused.
    state = Path(dead["LOCKGATE_STATE_DIR"])
    anchor = _anchor(state, forged["keys"], mode=0o666)
    for label, prepare in (
        ("group/world-writable", lambda: anchor.chmod(0o620)),
        ("foreign-owned", lambda: (anchor.chmod(0o600), os.chown(anchor, 4242, 4242))),
        ("writable directory", lambda: (os.chown(anchor, os.geteuid(), -1), state.chmod(0o777))),
    ):
        prepare()
        refused = await cli(dead, "verify", "--bundle", str(forged_path), "--json")
        doc = json.loads(refused.stdout)
        assert refused.returncode == 1 and doc["anchored"] is False, (label, refused.stdout)
        assert "REFUSED" in doc["trusted_keys_from"], (label, doc["trusted_keys_from"])
    state.chmod(0o700)
    anchor.unlink()
    (state / "ledger-anchor.json").symlink_to(forged_keys)
    linked = await cli(dead, "verify", "--bundle", str(forged_path), "--json")
    assert linked.returncode == 1 and "symbolic link" in json.loads(linked.stdout)["trusted_keys_from"]
    (state / "ledger-anchor.json").unlink()

    # The owner's own anchor (0600, genuine keys) anchors offline: genuine intact, forgery refused.
    _anchor(state, genuine)
    ok = await cli(dead, "verify", "--bundle", str(exported["path"]), "--json")
    doc = json.loads(ok.stdout)
    assert ok.returncode == 0 and doc["intact"] and doc["anchored"], ok.stdout
    caught = await cli(dead, "verify", "--bundle", str(forged_path))
    assert caught.returncode == 1 and "is not a trusted key" in caught.stdout


# -- encrypted histories, offline --------------------------------------------------------------------
@pytest.fixture(scope="module")
async def encrypted(settings: Any, deps: Any) -> AsyncIterator[tuple[Client, str]]:
    """A worker that encrypts every payload (the dev stack's default), on its own queue."""
    from lockgate import worker
    from lockgate.bootstrap import PAYLOAD_KEY

    client = await worker.connect(settings.model_copy(update={"payload_key": PAYLOAD_KEY}), deps.vault)
    queue = f"enc-{uuid.uuid4().hex[:8]}"
    async with worker.build_worker(client, deps, task_queue=queue):
        yield client, queue


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "MISMATCH" not in result.stdout, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


async def test_an_encrypted_bundle_replays_offline_with_the_auditors_key_only(
    encrypted: tuple[Client, str], env: dict[str, str], tmp_path: Path
) -> None:
    from lockgate.bootstrap import PAYLOAD_KEY

    client, queue = encrypted
    handle = await start(client, queue, "refund-agent", {"order_id": "A-1001", "amount_cents": 120})
    assert await finish(handle) is None
    enc_env = {**env, "LOCKGATE_PAYLOAD_KEY": PAYLOAD_KEY}
    made = await cli(enc_env, "auditor-key", str(tmp_path / "auditor"))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "auditor").stat().st_mode & 0o077 == 0
    other = await cli(enc_env, "auditor-key", str(tmp_path / "other"))
    assert other.returncode == 0

    sealed = tmp_path / "sealed.json"
    exp = await cli(
        enc_env, "audit", handle.id, "--export", str(sealed), "--auditor-key", str(tmp_path / "auditor.pub")
    )
    assert exp.returncode == 0 and "verified" in exp.stderr, exp.stdout + exp.stderr
    bare = tmp_path / "bare.json"
    exp2 = await cli(enc_env, "audit", handle.id, "--export", str(bare))
    assert exp2.returncode == 0 and "--auditor-key" in exp2.stderr, exp2.stderr
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(json.loads((Path(env["LOCKGATE_STATE_DIR"]) / "ledger-anchor.json").read_text())["keys"])
    )
    doc = json.loads(sealed.read_text())
    raw = json.dumps(doc["histories"])
    assert "binary/encrypted" in json.dumps(doc["histories"]) or "YmluYXJ5L2VuY3J5cHRlZA" in raw
    assert "A-1001" not in raw  # the bundle holds no payload in clear

    dead = offline(env, tmp_path)
    replayed = await cli(
        dead, "replay", "--history", str(sealed), "--keys", str(keys), "--key", str(tmp_path / "auditor"), "--json"
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    (report,) = json.loads(replayed.stdout)
    assert report["ok"] and report["decisions"] >= 2 and report["histories"] == 1

    # Without the key, with another auditor's key, or with the keys left out: one line, exit 2.
    assert "--key" in _one_line(await cli(dead, "replay", "--history", str(sealed), "--keys", str(keys)))
    assert "sealed for auditor key" in _one_line(
        await cli(dead, "replay", "--history", str(sealed), "--keys", str(keys), "--key", str(tmp_path / "other"))
    )
    assert "--auditor-key" in _one_line(await cli(dead, "replay", "--history", str(bare), "--keys", str(keys)))

    # A sealed key altered: it opens nothing (and never yields another history).
    altered = copy.deepcopy(doc)
    item = next(iter(altered["payload_keys"]["keys"].values()))
    blob = bytearray(base64.b64decode(item["sealed"]))
    blob[-1] ^= 1
    item["sealed"] = base64.b64encode(bytes(blob)).decode()
    altered_path = tmp_path / "altered.json"
    altered_path.write_text(json.dumps(altered))
    assert "do not open" in _one_line(
        await cli(
            dead, "replay", "--history", str(altered_path), "--keys", str(keys), "--key", str(tmp_path / "auditor")
        )
    )

    # The bundle verifies offline like any other (the sealed keys are not evidence of anything).
    verified = await cli(dead, "verify", "--bundle", str(sealed), "--keys", str(keys))
    assert verified.returncode == 0, verified.stdout

    # A history exported with the Temporal CLI, still encrypted: one line, exit 2, never a mismatch.
    temporal = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    shown = await asyncio.to_thread(
        subprocess.run,
        [temporal, "workflow", "show", "-w", handle.id, "-o", "json", "--address", env["LOCKGATE_TEMPORAL_ADDRESS"]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    plain = tmp_path / "history.json"
    plain.write_text(shown.stdout)
    assert "encrypted" in _one_line(await cli(dead, "replay", "--history", str(plain)))
