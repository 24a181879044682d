"""Tamper evidence, pure: entry hashes, per-run chains, Merkle-committed signed checkpoints, and the
streaming checks `lockgate verify` runs over a ledger or an evidence bundle. No I/O, no Vault: a
checkpoint's ed25519 signature is checked offline with `cryptography` against public keys the caller
trusts.

The shape (as transparency logs do it):
- every run has its own hash chain: entry n of a chain commits to entry n-1 (`prev_hash`), so
  writers of different runs never wait on each other;
- a checkpoint lists the heads (chain, size, head hash, final) of the chains that changed since the
  one before, as leaves of a Merkle tree; its body holds the tree's root and the previous
  checkpoint's hash (the checkpoints form a chain too), and is signed with a Vault Transit key
  nobody can export;
- a chain whose run closed is sealed `final`: an entry after its final head is tampering.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lockgate.models import canonical_json

__all__ = [
    "AFTER_CLOSE",
    "CHECKPOINT_FORMAT",
    "GENESIS",
    "ChainChecker",
    "ChainSummary",
    "CheckpointRecord",
    "EntryRecord",
    "Head",
    "RunProof",
    "check_checkpoint",
    "check_proof",
    "check_run_evidence",
    "checkpoint_body",
    "checkpoint_message",
    "entry_hash",
    "fingerprint",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "root_from_proof",
    "signature_version",
    "verify_signature",
]

GENESIS = "0" * 64
CHECKPOINT_FORMAT = "lockgate.checkpoint/v1"
# Entries a run receives after its chain was sealed (e.g. a late approval attempt, the archived
# history's digest) go to a chain of their own, so a sealed chain never grows.
AFTER_CLOSE = "~after-close"
CLOSING_KIND = "run.closed"


def entry_hash(
    prev_hash: str, chain: str, chain_seq: int, event_key: str, run_id: str, kind: str, at: str, data: str
) -> str:
    """sha256 over the previous hash and the entry's canonical content (`data` is canonical JSON)."""
    body = canonical_json(
        {"chain": chain, "n": chain_seq, "event_key": event_key, "run_id": run_id, "kind": kind, "at": at, "data": data}
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


# -- Merkle tree over chain heads (RFC 6962 hashing) ---------------------------------------------
@dataclass(frozen=True)
class Head:
    """One leaf of a checkpoint: a chain's size and head hash when it was signed."""

    chain: str
    size: int
    head: str
    final: bool = False

    def leaf(self) -> bytes:
        return leaf_hash(
            canonical_json({"chain": self.chain, "size": self.size, "head": self.head, "final": self.final}).encode()
        )


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(leaves: list[bytes]) -> str:
    def root(lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 1:
            return leaves[lo]
        k = _split(n)
        return _node(root(lo, lo + k), root(lo + k, hi))

    if not leaves:
        return hashlib.sha256(b"").hexdigest()
    return root(0, len(leaves)).hex()


def inclusion_proof(index: int, leaves: list[bytes]) -> list[str]:
    """The audit path of leaf `index` (innermost sibling first), as RFC 6962 PATH(m, D[n])."""

    def root(lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 1:
            return leaves[lo]
        k = _split(n)
        return _node(root(lo, lo + k), root(lo + k, hi))

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*path(m, lo, lo + k), root(lo + k, hi)]
        return [*path(m - k, lo + k, hi), root(lo, lo + k)]

    return [p.hex() for p in path(index, 0, len(leaves))]


def root_from_proof(index: int, count: int, leaf: bytes, proof: list[str]) -> str:
    """The root a leaf at `index` of `count` leaves implies through its audit path."""
    if not 0 <= index < count:
        raise ValueError(f"leaf index {index} outside a tree of {count}")

    def up(m: int, n: int, siblings: list[bytes]) -> bytes:
        if n == 1:
            if siblings:
                raise ValueError("audit path too long")
            return leaf
        if not siblings:
            raise ValueError("audit path too short")
        k = _split(n)
        if m < k:
            return _node(up(m, k, siblings[:-1]), siblings[-1])
        return _node(siblings[-1], up(m - k, n - k, siblings[:-1]))

    return up(index, count, [bytes.fromhex(p) for p in proof]).hex()


# -- checkpoints -----------------------------------------------------------------------------------
def checkpoint_body(ledger_id: str, seq: int, prev: str, at: str, heads: list[Head]) -> str:
    """The signed statement: the canonical JSON of what a checkpoint commits to."""
    return canonical_json(
        {
            "format": CHECKPOINT_FORMAT,
            "ledger": ledger_id,
            "seq": seq,
            "prev": prev,
            "at": at,
            "count": len(heads),
            "root": merkle_root([h.leaf() for h in heads]),
        }
    )


def checkpoint_message(body_hash: str) -> bytes:
    """What the Transit key signs: a domain-separated statement of the body's hash."""
    return f"{CHECKPOINT_FORMAT}:{body_hash}".encode()


def signature_version(signature: str) -> int:
    """The key version of a Transit signature `vault:v<N>:<base64>`."""
    parts = signature.split(":")
    if len(parts) != 3 or parts[0] != "vault" or not parts[1].startswith("v") or not parts[1][1:].isdigit():
        raise ValueError("not a Transit signature (vault:vN:...)")
    return int(parts[1][1:])


def verify_signature(public_key_b64: str, signature: str, message: bytes) -> bool:
    """Offline check of a Transit ed25519 signature (no Vault involved)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
        key.verify(base64.b64decode(signature.split(":")[2]), message)
    except (InvalidSignature, ValueError, IndexError):
        return False
    return True


def fingerprint(public_key_b64: str) -> str:
    return "sha256:" + hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest()[:16]


@dataclass(frozen=True)
class CheckpointRecord:
    seq: int
    body: str
    hash: str
    signature: str
    at: str


@dataclass(frozen=True)
class EntryRecord:
    seq: int
    chain: str
    chain_seq: int
    event_key: str
    run_id: str
    kind: str
    at: str
    data: str
    prev_hash: str
    hash: str
    recorded_at: str = ""


def check_checkpoint(
    cp: CheckpointRecord,
    heads: list[Head],
    *,
    ledger_id: str,
    prev_hash: str,
    keys: Mapping[int, str],
) -> list[str]:
    """Problems with one checkpoint: its body, its place in the checkpoint chain, its signature and
    the heads it commits to (empty: sound)."""
    where = f"checkpoint #{cp.seq}"
    problems = []
    if hashlib.sha256(cp.body.encode()).hexdigest() != cp.hash:
        problems.append(f"{where}: body does not match its hash (edited)")
    try:
        body = json.loads(cp.body)
    except ValueError:
        return [*problems, f"{where}: body is not JSON"]
    if body.get("format") != CHECKPOINT_FORMAT or body.get("seq") != cp.seq:
        problems.append(f"{where}: body names another format or position")
    if body.get("ledger") != ledger_id:
        problems.append(f"{where}: signed for another ledger ({body.get('ledger')})")
    if body.get("prev") != prev_hash:
        problems.append(f"{where}: does not follow the checkpoint before it (checkpoint chain broken)")
    chains = [h.chain for h in heads]
    if chains != sorted(set(chains)):
        problems.append(f"{where}: heads not in order or repeated")
    if body.get("count") != len(heads) or body.get("root") != merkle_root([h.leaf() for h in heads]):
        problems.append(f"{where}: heads do not match the signed Merkle root (edited, added or removed)")
    try:
        version = signature_version(cp.signature)
    except ValueError as err:
        return [*problems, f"{where}: {err}"]
    key = keys.get(version)
    if key is None:
        problems.append(f"{where}: signed with key version {version}, which no trusted key matches")
    elif not verify_signature(key, cp.signature, checkpoint_message(cp.hash)):
        problems.append(f"{where}: signature does not verify with key version {version} (forged or edited)")
    return problems


@dataclass
class ChainSummary:
    """What a walk found, for the report: how far each chain is proven."""

    entries: int = 0
    chains: int = 0
    proven: int = 0
    pending: int = 0
    unproven: int = 0
    problems: list[str] = field(default_factory=list)
    dropped: int = 0

    def problem(self, text: str, limit: int = 200) -> None:
        if len(self.problems) < limit:
            self.problems.append(text)
        else:
            self.dropped += 1


class ChainChecker:
    """Streams entries (ordered by chain, then position) against the signed heads of each chain.

    Memory is bounded by one chain's checkpointed heads, never by the ledger's size.
    """

    def __init__(self, summary: ChainSummary, *, pending_after: str | None) -> None:
        self.s = summary
        # Entries recorded at or after this (ISO) time without a checkpoint yet are "pending",
        # older ones "unproven" (a problem): the checkpointer runs at run close and periodically.
        self._pending_after = pending_after

    def chain(self, chain: str, entries: Iterable[EntryRecord], heads: list[tuple[int, Head]]) -> None:
        """Checks one chain: `heads` are (checkpoint seq, head) in checkpoint order."""
        s = self.s
        s.chains += 1
        by_size: dict[int, list[tuple[int, Head]]] = {}
        last_size = 0
        final_size: int | None = None
        for cp, h in heads:
            if h.size < last_size:
                s.problem(f"chain {chain}: checkpoint #{cp} signs a shorter chain ({h.size}) than before ({last_size})")
            if final_size is not None and h.size != final_size:
                s.problem(f"chain {chain}: checkpoint #{cp} extends a chain already sealed final at {final_size}")
            last_size = max(last_size, h.size)
            if h.final and final_size is None:
                final_size = h.size
            by_size.setdefault(h.size, []).append((cp, h))
        proven_to = last_size
        prev = GENESIS
        n = 0
        for e in entries:
            s.entries += 1
            n += 1
            where = f"seq {e.seq} (chain {chain} #{e.chain_seq})"
            if e.chain_seq != n:
                if e.chain_seq > n:
                    s.problem(f"{where}: missing entry before it (expected #{n}: deleted)")
                else:
                    s.problem(f"{where}: out of place (expected #{n})")
                n = e.chain_seq
            if e.prev_hash != prev:
                s.problem(f"{where}: prev_hash does not match the entry before it (inserted, deleted or re-chained)")
            recomputed = entry_hash(e.prev_hash, e.chain, e.chain_seq, e.event_key, e.run_id, e.kind, e.at, e.data)
            if recomputed != e.hash:
                s.problem(f"{where}: content does not match its hash (edited)")
            for cp, h in by_size.get(e.chain_seq, ()):
                if h.head != e.hash:
                    s.problem(f"{where}: checkpoint #{cp} signed another entry here (rewritten or re-chained)")
            if e.chain_seq <= proven_to:
                s.proven += 1
            elif final_size is not None:
                s.problem(f"{where}: appended after the run's chain was sealed final at #{final_size} (forged)")
            elif self._pending_after is not None and e.recorded_at >= self._pending_after:
                s.pending += 1
            else:
                s.unproven += 1
                s.problem(f"{where}: not covered by any signed checkpoint (unproven)")
            prev = e.hash
        if n < proven_to:
            s.problem(
                f"chain {chain}: ends at #{n} but checkpoints signed it up to #{proven_to} (truncated or deleted)"
            )


# -- one run's evidence: its chains, every signed head of them, with Merkle audit paths ----------
@dataclass
class RunProof:
    """What a run's evidence proves: per chain, the position its signed heads reach."""

    problems: list[str] = field(default_factory=list)
    proven_to: dict[str, int] = field(default_factory=dict)
    final: dict[str, bool] = field(default_factory=dict)
    entries: int = 0
    proven: int = 0
    pending: int = 0
    checkpoints: set[int] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems

    def is_proven(self, chain: str, position: int) -> bool:
        return not self.problems and position <= self.proven_to.get(chain, 0)


def check_proof(proof: Mapping[str, Any], chain: str, *, ledger_id: str, keys: Mapping[int, str]) -> list[str]:
    """Problems with one signed head of `chain`: the checkpoint's body and signature, and the head's
    inclusion in the checkpoint's Merkle root."""
    cp = proof.get("checkpoint") or {}
    where = f"chain {chain}: checkpoint #{cp.get('seq')}"
    problems: list[str] = []
    body_text = str(cp.get("body", ""))
    digest = hashlib.sha256(body_text.encode()).hexdigest()
    if digest != cp.get("hash"):
        problems.append(f"{where}: body does not match its hash (edited)")
    try:
        body = json.loads(body_text)
    except ValueError:
        return [*problems, f"{where}: body is not JSON"]
    if body.get("format") != CHECKPOINT_FORMAT or body.get("seq") != cp.get("seq"):
        problems.append(f"{where}: body names another format or position")
    if body.get("ledger") != ledger_id:
        problems.append(f"{where}: signed for another ledger ({body.get('ledger')})")
    signature = str(cp.get("signature", ""))
    try:
        version = signature_version(signature)
    except ValueError as err:
        return [*problems, f"{where}: {err}"]
    key = keys.get(version)
    if key is None:
        problems.append(f"{where}: signed with key version {version}, which no trusted key matches")
    elif not verify_signature(key, signature, checkpoint_message(digest)):
        problems.append(f"{where}: signature does not verify with key version {version} (forged or edited)")
    head = Head(chain, int(proof.get("size", 0)), str(proof.get("head", "")), bool(proof.get("final", False)))
    try:
        root = root_from_proof(int(proof.get("index", -1)), int(body.get("count", 0)), head.leaf(), list(proof["path"]))
    except (ValueError, KeyError, TypeError) as err:
        return [*problems, f"{where}: bad Merkle audit path ({err})"]
    if root != body.get("root"):
        problems.append(f"{where}: the head is not in the signed Merkle root (edited)")
    return problems


def check_run_evidence(
    evidence: Mapping[str, Any], *, keys: Mapping[int, str], pending_after: str | None = None
) -> RunProof:
    """Checks a run's chains against their signed heads (evidence as `Ledger.run_evidence` makes it).

    Every proof must verify; then each chain is walked entry by entry against the heads.
    """
    out = RunProof()
    ledger_id = str(evidence.get("ledger_id", ""))
    run_id = evidence.get("run_id")
    summary = ChainSummary()
    checker = ChainChecker(summary, pending_after=pending_after)
    for chain in evidence.get("chains", []):
        name = str(chain["chain"])
        if run_id is not None and name not in (run_id, run_id + AFTER_CLOSE):
            out.problems.append(f"chain {name} is not a chain of run {run_id}")
        heads: list[tuple[int, Head]] = []
        for proof in chain.get("proofs", []):
            out.problems += check_proof(proof, name, ledger_id=ledger_id, keys=keys)
            cp = int(proof["checkpoint"]["seq"])
            out.checkpoints.add(cp)
            heads.append((cp, Head(name, int(proof["size"]), str(proof["head"]), bool(proof.get("final", False)))))
        heads.sort(key=lambda item: item[0])
        records = []
        for e in chain.get("entries", []):
            record = EntryRecord(**{k: e[k] for k in EntryRecord.__dataclass_fields__ if k in e})
            if record.chain != name or (run_id is not None and record.run_id != run_id):
                out.problems.append(f"seq {record.seq}: recorded in chain {name} for another run or chain")
            records.append(record)
        before = summary.proven
        checker.chain(name, records, heads)
        out.proven_to[name] = max((h.size for _, h in heads), default=0)
        out.final[name] = any(h.final for _, h in heads)
        out.proven += summary.proven - before
    out.entries = summary.entries
    out.pending = summary.pending
    out.problems += summary.problems
    return out
