"""A run's evidence checked offline (`check_run_evidence`, `check_proof`), each check alone (found by
`make mutation`): evidence made by a SQLite ledger signed with a local ed25519 key, then altered
in exactly one place. Each docstring names the check that must report it."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from dataclasses import replace
from typing import Any

import pytest

from lockgate.activities.ledger import Ledger
from lockgate.evidence import (
    AFTER_CLOSE,
    GENESIS,
    ChainChecker,
    ChainSummary,
    CheckpointRecord,
    EntryRecord,
    Head,
    RunProof,
    check_checkpoint,
    check_run_evidence,
    checkpoint_body,
    checkpoint_message,
    entry_hash,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    root_from_proof,
    signature_version,
)
from lockgate.models import canonical_json
from tests.support.ledger import LocalKey, ledger_story


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], LocalKey]:
    """The evidence of a closed run (sealed final, then one late entry in its after-close chain,
    checkpointed) and the key that signed it."""
    key = LocalKey()
    path = tmp_path_factory.mktemp("evidence") / "l.db"
    ledger = Ledger(f"sqlite:///{path}", signer=key, checkpoint_interval=None)
    closed, open_ = f"closed-{uuid.uuid4().hex[:6]}", f"open-{uuid.uuid4().hex[:6]}"
    ledger_story(ledger, closed, open_)
    ledger.append(f"late:{closed}", closed, "audit", {"late": True})
    assert ledger.checkpoint() is not None
    evidence = json.loads(json.dumps(ledger.run_evidence(closed)))
    ledger.dispose()
    return evidence, key


def _check(evidence: dict[str, Any], key: LocalKey, **kw: Any) -> RunProof:
    return check_run_evidence(evidence, keys=kw.pop("keys", key.public_keys()), **kw)


def _one(made: tuple[dict[str, Any], LocalKey], change: Any) -> list[str]:
    evidence, key = made
    altered = copy.deepcopy(evidence)
    change(altered)
    return _check(altered, key).problems


def _proof(evidence: dict[str, Any], n: int = 0) -> dict[str, Any]:
    return evidence["chains"][0]["proofs"][n]


def _cp(evidence: dict[str, Any]) -> dict[str, Any]:
    return _proof(evidence)["checkpoint"]


def test_intact_evidence_proves_both_chains_of_the_run(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: intact evidence has no problem and proves each chain to its signed size (the main
    chain sealed final), counting every entry (the baseline each alteration below differs from)."""
    evidence, key = made
    run_id = evidence["run_id"]
    proof = _check(evidence, key)
    assert proof.ok and proof.problems == []
    assert [c["chain"] for c in evidence["chains"]] == [run_id, run_id + AFTER_CLOSE]
    assert proof.proven_to == {run_id: 5, run_id + AFTER_CLOSE: 1}
    assert proof.final == {run_id: True, run_id + AFTER_CLOSE: False}
    assert (proof.entries, proof.proven, proof.pending) == (6, 6, 0)
    assert proof.checkpoints == {1, 3}  # sealed final at close; #2 holds only the open run
    assert proof.is_proven(run_id, 5) and not proof.is_proven(run_id, 6) and not proof.is_proven("other", 1)


def test_a_proof_is_no_proof_once_anything_is_wrong(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: `RunProof.ok` / `is_proven` are false as soon as any problem was found."""
    evidence, key = made
    proof = _check(evidence, key, keys={})
    assert not proof.ok and not proof.is_proven(evidence["run_id"], 1)


def test_an_edited_checkpoint_body_is_reported(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: `check_proof` compares the body with its hash."""
    problems = _one(made, lambda e: _cp(e).update(body=_cp(e)["body"].replace('"format"', '"format" ')))
    assert any("body does not match its hash (edited)" in p for p in problems), problems


def test_a_checkpoint_body_that_is_not_json_is_reported(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: `check_proof` reports a body that is not JSON (and stops there, not raises)."""
    problems = _one(made, lambda e: _cp(e).update(body="{not json"))
    assert any("body is not JSON" in p for p in problems), problems


def test_a_checkpoint_at_another_position_is_reported(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: the body's position must be the checkpoint's (`seq`)."""
    problems = _one(made, lambda e: _cp(e).update(seq=_cp(e)["seq"] + 7))
    assert any("body names another format or position" in p for p in problems), problems


def test_evidence_of_another_ledger_is_reported(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: the body must name the evidence's ledger."""
    problems = _one(made, lambda e: e.update(ledger_id="another-ledger"))
    assert any("signed for another ledger" in p for p in problems), problems


def test_a_malformed_signature_is_reported(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: a signature that is not `vault:vN:...` is a problem (not an error)."""
    problems = _one(made, lambda e: _cp(e).update(signature="v1:abc"))
    assert any("checkpoint #" in p and "signature" in p for p in problems), problems


def test_a_signature_of_an_untrusted_key_version_is_reported(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: the signature's key version must be one of the trusted keys."""
    evidence, key = made
    problems = _check(evidence, key, keys={2: key.public_keys()[1]}).problems
    assert any("which no trusted key matches" in p for p in problems), problems


def test_a_signature_by_another_key_is_reported(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: the signature must verify with the trusted key of its version."""
    evidence, key = made
    problems = _check(evidence, key, keys=LocalKey().public_keys()).problems
    assert any("does not verify with key version 1" in p for p in problems), problems


def test_a_head_outside_the_signed_root_is_reported(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: the head must be in the checkpoint's Merkle root (its audit path leads there)."""
    problems = _one(made, lambda e: _proof(e).update(head="0" * 64))
    assert any("the head is not in the signed Merkle root" in p for p in problems), problems
    problems = _one(made, lambda e: _proof(e).update(final=not _proof(e).get("final", False)))
    assert any("the head is not in the signed Merkle root" in p for p in problems), problems


def test_a_broken_audit_path_is_reported(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: a missing or out-of-range audit path, or a missing leaf index, is a problem (not an
    error)."""
    problems = _one(made, lambda e: _proof(e).pop("path"))
    assert any("bad Merkle audit path" in p for p in problems), problems
    problems = _one(made, lambda e: _proof(e).update(index=10**6))
    assert any("bad Merkle audit path" in p for p in problems), problems
    problems = _one(made, lambda e: _proof(e).pop("index"))
    assert any("bad Merkle audit path (leaf index -1" in p for p in problems), problems


def test_a_chain_of_another_run_is_reported(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: only the run's own two chains belong in its evidence."""
    problems = _one(made, lambda e: e.update(run_id=e["run_id"] + "x"))
    assert any("is not a chain of run" in p for p in problems), problems


def test_an_entry_of_another_run_or_chain_is_reported(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: each entry must be recorded in its chain for this run (run id and chain alone)."""
    problems = _one(made, lambda e: e["chains"][0]["entries"][1].update(run_id="another-run"))
    assert any("for another run or chain" in p for p in problems), problems
    problems = _one(made, lambda e: e["chains"][0]["entries"][1].update(chain="another-chain"))
    assert any("for another run or chain" in p for p in problems), problems


def test_every_entry_and_proof_is_walked(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: the chain checker sees each entry against the signed heads: an entry dropped from
    the evidence, or edited, is reported."""
    problems = _one(made, lambda e: e["chains"][0]["entries"].pop(2))
    assert any("missing entry" in p or "prev_hash" in p for p in problems), problems
    problems = _one(made, lambda e: e["chains"][0]["entries"][2].update(data='{"edited":1}'))
    assert any("content does not match its hash (edited)" in p for p in problems), problems


# -- the chain checker and audit paths alone, on hand-made chains -------------------------------------
def _chain(n: int, recorded_at: str = "2026-11-23T00:00:00+00:00") -> list[EntryRecord]:
    out, prev = [], GENESIS
    for i in range(1, n + 1):
        args = (prev, "c", i, f"e:{i}", "r", "decision", "2026-11-23T00:00:00+00:00", "{}")
        h = entry_hash(*args)
        out.append(EntryRecord(i, "c", i, f"e:{i}", "r", "decision", args[6], "{}", prev, h, recorded_at))
        prev = h
    return out


def _walk(entries: list[EntryRecord], heads: list[tuple[int, Head]], pending_after: str | None = None) -> ChainSummary:
    summary = ChainSummary()
    ChainChecker(summary, pending_after=pending_after).chain("c", entries, heads)
    return summary


def test_a_chain_re_signed_at_the_same_size_is_sound_but_never_extended_after_final() -> None:
    """Control: successive checkpoints may sign a chain at the same size (`<`, not `<=`, is shorter),
    a final chain re-signed at its final size is sound, one signed longer after final is not, and a
    later checkpoint signing it shorter is reported."""
    entries = _chain(3)
    head = {n: Head("c", n, entries[n - 1].hash, False) for n in (2, 3)}
    same = _walk(entries, [(1, head[3]), (2, head[3])])
    assert same.problems == [] and same.proven == 3
    final = Head("c", 2, entries[1].hash, True)
    resigned = _walk(entries[:2], [(1, final), (2, final)])
    assert resigned.problems == [] and resigned.proven == 2
    extended = _walk(entries, [(1, final), (2, head[3])])
    assert any("extends a chain already sealed final at 2" in p for p in extended.problems), extended.problems
    shorter = _walk(entries, [(1, head[3]), (2, head[2])])
    assert any("checkpoint #2 signs a shorter chain (2) than before (3)" in p for p in shorter.problems), (
        shorter.problems
    )


def test_an_entry_recorded_exactly_at_the_grace_cut_off_is_pending() -> None:
    """Control: pending means recorded at or after the cut-off (`>=`)."""
    entries = _chain(1, recorded_at="2026-11-23T10:00:00+00:00")
    at_cut = _walk(entries, [], pending_after="2026-11-23T10:00:00+00:00")
    assert (at_cut.pending, at_cut.unproven, at_cut.problems) == (1, 0, [])
    after = _walk(entries, [], pending_after="2026-11-23T10:00:01+00:00")
    assert after.unproven == 1 and after.problems


def test_an_audit_path_for_a_leaf_past_the_tree_is_refused() -> None:
    """Control: `root_from_proof` takes leaf indexes 0..count-1 only (index == count is outside)."""
    leaves = [leaf_hash(bytes([i])) for i in range(4)]
    path = inclusion_proof(3, leaves)
    assert root_from_proof(3, 4, leaves[3], path) == merkle_root(leaves)
    with pytest.raises(ValueError, match="outside a tree of 4"):
        root_from_proof(4, 4, leaves[3], path)


def test_a_proof_without_a_final_flag_is_not_final(made: tuple[dict[str, Any], LocalKey]) -> None:
    """Control: a head whose proof names no `final` is not final (the after-close chain's proof
    without the flag still verifies, as the open chain it is)."""
    evidence, key = made
    altered = copy.deepcopy(evidence)
    for proof in altered["chains"][1]["proofs"]:
        assert proof.pop("final", False) is False
    proof = _check(altered, key)
    assert proof.problems == [] and proof.final[evidence["run_id"] + AFTER_CLOSE] is False


# -- one checkpoint alone (`check_checkpoint`), made by hand and altered in one place ----------------
KEY = LocalKey()
LEDGER, PREV, AT = "ledger-1", "p" * 64, "2026-11-23T00:00:00+00:00"
HEADS = [Head("a", 1, "1" * 64, False), Head("b", 2, "2" * 64, True)]


def _checkpoint(body: str | None = None, seq: int = 3, signer: LocalKey = KEY) -> CheckpointRecord:
    body = body if body is not None else checkpoint_body(LEDGER, seq, PREV, AT, HEADS)
    digest = hashlib.sha256(body.encode()).hexdigest()
    return CheckpointRecord(seq, body, digest, signer.sign(checkpoint_message(digest)), AT)


def _problems(cp: CheckpointRecord, heads: list[Head] = HEADS, **kw: Any) -> list[str]:
    args: dict[str, Any] = {"ledger_id": LEDGER, "prev_hash": PREV, "keys": KEY.public_keys(), **kw}
    return check_checkpoint(cp, heads, **args)


def _body(**change: Any) -> str:
    body = json.loads(checkpoint_body(LEDGER, 3, PREV, AT, HEADS))
    return canonical_json({**body, **change})


def test_a_sound_checkpoint_has_no_problem() -> None:
    """Control: the baseline every alteration below differs from in one place."""
    assert _problems(_checkpoint()) == []


@pytest.mark.parametrize(
    ("alter", "phrase"),
    [
        (lambda cp: replace(cp, body=cp.body.replace(AT, "2026-11-24T00:00:00+00:00")), "body does not match its hash"),
        (lambda cp: _checkpoint(body="{not json"), "body is not JSON"),
        (lambda cp: replace(cp, seq=4), "another format or position"),
        (lambda cp: _checkpoint(body=_body(format="other")), "another format or position"),
        (lambda cp: _checkpoint(body=_body(ledger="other")), "signed for another ledger"),
        (lambda cp: _checkpoint(body=_body(prev="q" * 64)), "does not follow the checkpoint before it"),
        (lambda cp: _checkpoint(body=_body(count=3)), "heads do not match the signed Merkle root"),
        (lambda cp: _checkpoint(body=_body(root="0" * 64)), "heads do not match the signed Merkle root"),
        (lambda cp: replace(cp, signature="vault:1:abc"), "not a Transit signature"),
        (lambda cp: _checkpoint(signer=LocalKey()), "signature does not verify with key version 1"),
    ],
)
def test_each_alteration_of_a_checkpoint_is_reported(alter: Any, phrase: str) -> None:
    """Control: `check_checkpoint`'s checks, one alteration each (hash, JSON, position, format,
    ledger, predecessor, head count, Merkle root, signature form, signature)."""
    problems = _problems(alter(_checkpoint()))
    assert any(phrase in p for p in problems), problems


def test_heads_out_of_order_or_repeated_are_reported() -> None:
    """Control: the heads a checkpoint commits to are sorted by chain, each once (the body signs
    exactly these heads, so only the order check can object)."""
    for heads in (HEADS[::-1], [HEADS[0], HEADS[0]]):
        cp = _checkpoint(body=checkpoint_body(LEDGER, 3, PREV, AT, heads))
        assert any("heads not in order or repeated" in p for p in _problems(cp, heads)), heads


def test_a_checkpoint_signed_with_an_untrusted_key_version_is_reported() -> None:
    """Control: the signature's key version must be a trusted key."""
    assert any("which no trusted key matches" in p for p in _problems(_checkpoint(), keys={}))


@pytest.mark.parametrize("signature", ["vault:v1", "xault:v1:QUJD", "vault:1:QUJD", "vault:vx:QUJD"])
def test_only_transit_signatures_have_a_key_version(signature: str) -> None:
    """Control: `signature_version` requires each part of `vault:vN:<sig>`."""
    with pytest.raises(ValueError, match="not a Transit signature"):
        signature_version(signature)
    assert signature_version("vault:v12:QUJD") == 12


def test_an_audit_path_of_the_wrong_length_is_refused() -> None:
    """Control: `root_from_proof` refuses a path longer or shorter than the tree is deep."""
    leaves = [leaf_hash(bytes([i])) for i in range(4)]
    path = inclusion_proof(1, leaves)
    with pytest.raises(ValueError, match="too long"):
        root_from_proof(1, 4, leaves[1], [path[0], *path])
    with pytest.raises(ValueError, match="too short"):
        root_from_proof(1, 4, leaves[1], path[1:])


def test_an_entry_not_linked_to_the_one_before_is_reported() -> None:
    """Control: each entry's prev_hash must be the hash of the entry before it (an entry re-hashed
    over another predecessor: its own hash and position are consistent)."""
    entries = _chain(3)
    e = entries[1]
    relinked = entry_hash("x" * 64, e.chain, e.chain_seq, e.event_key, e.run_id, e.kind, e.at, e.data)
    entries[1] = replace(e, prev_hash="x" * 64, hash=relinked)
    summary = _walk(entries, [], pending_after="0")
    assert any("#2): prev_hash does not match the entry before it" in p for p in summary.problems), summary.problems
    assert not any("content does not match" in p for p in summary.problems), summary.problems


def test_an_entry_out_of_place_is_reported() -> None:
    """Control: an entry at a position already passed is out of place (not only a missing one)."""
    e1, e2, e3 = _chain(3)
    problems = _walk([e1, e3, e2], [], pending_after="0").problems
    assert any("out of place (expected #4)" in p for p in problems), problems
    assert any("missing entry before it (expected #2" in p for p in problems), problems
