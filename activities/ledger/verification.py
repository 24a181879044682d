"""Verification: every entry against its chain, its MAC and the signed heads, every checkpoint against
its predecessor, its Merkle root and its signature; and a run's evidence with its proofs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from lockgate.activities.ledger.store import LedgerStore
from lockgate.evidence import (
    AFTER_CLOSE,
    GENESIS,
    ChainChecker,
    ChainSummary,
    CheckpointRecord,
    EntryRecord,
    Head,
    check_checkpoint,
    inclusion_proof,
)

__all__ = ["PENDING_GRACE", "Verification", "VerifyReport"]

# `verify` counts entries younger than this without a checkpoint as pending, older ones as unproven.
PENDING_GRACE = 60.0


@dataclass
class VerifyReport:
    """What `verify` found. `ok` only if every entry is sound and proven (or still pending)."""

    url_name: str
    ledger_id: str | None
    entries: int = 0
    chains: int = 0
    checkpoints: int = 0
    proven: int = 0
    pending: int = 0
    unproven: int = 0
    proven_through: dict[str, Any] | None = None
    keys: dict[int, str] = field(default_factory=dict)
    witness: str = "not consulted"
    rows: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        from lockgate.evidence import fingerprint

        return {
            "intact": self.ok,
            "ledger_id": self.ledger_id,
            "entries": self.entries,
            "chains": self.chains,
            "checkpoints": self.checkpoints,
            "proven": self.proven,
            "pending": self.pending,
            "unproven": self.unproven,
            "proven_through": self.proven_through,
            "keys": {str(v): fingerprint(k) for v, k in sorted(self.keys.items())},
            "witness": self.witness,
            "rows": self.rows,
            "problems": self.problems,
        }


class Verification(LedgerStore):
    """Proofs and verification of the ledger."""

    # -- proofs --------------------------------------------------------------------------------
    def proofs(self, chain: str) -> list[dict[str, Any]]:
        """The signed heads that prove `chain`, each with its checkpoint and Merkle audit path: the
        newest (it covers every entry up to its size) and the first that sealed the chain final
        (anything signed past it is then visible), however many checkpoints a long run went through."""
        out = []
        with self.reader.connect() as conn:
            signed = conn.execute(
                text("SELECT checkpoint, idx, final FROM ledger_checkpoint_heads WHERE chain = :c ORDER BY checkpoint"),
                {"c": chain},
            ).all()
            first_final = next((r for r in signed if r[2]), None)
            chosen = {r[0]: r for r in [*([first_final] if first_final else []), *signed[-1:]]}
            for cp_seq, idx, _final in sorted(chosen.values()):
                heads = [
                    Head(str(c), int(n), str(h), bool(f))
                    for c, n, h, f in conn.execute(
                        text(
                            "SELECT chain, size, head, final FROM ledger_checkpoint_heads WHERE checkpoint = :cp "
                            "ORDER BY idx"
                        ),
                        {"cp": cp_seq},
                    )
                ]
                cp = conn.execute(
                    text("SELECT seq, body, hash, signature, at FROM ledger_checkpoints WHERE seq = :s"), {"s": cp_seq}
                ).first()
                if cp is None or not 0 <= int(idx) < len(heads):
                    continue  # the checkpoint row is gone: verify says so; the chain is unproven here
                head = heads[int(idx)]
                out.append(
                    {
                        "size": head.size,
                        "head": head.head,
                        "final": head.final,
                        "index": int(idx),
                        "path": inclusion_proof(int(idx), [h.leaf() for h in heads]),
                        "checkpoint": {
                            "seq": int(cp[0]),
                            "body": str(cp[1]),
                            "hash": str(cp[2]),
                            "signature": str(cp[3]),
                            "at": str(cp[4]),
                        },
                    }
                )
        return out

    def run_evidence(self, run_id: str) -> dict[str, Any]:
        """A run's entries (both of its chains) with every signed head of them: checkable offline
        with `lockgate.evidence.check_run_evidence` and the ledger key's public keys."""
        chains = []
        for chain in (run_id, run_id + AFTER_CLOSE):
            with self.reader.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT seq, chain, chain_seq, event_key, run_id, kind, at, data, prev_hash, hash, "
                        "recorded_at FROM ledger WHERE chain = :c ORDER BY chain_seq"
                    ),
                    {"c": chain},
                ).all()
            entries = [dict(zip(EntryRecord.__dataclass_fields__, r, strict=True)) for r in rows]
            proofs = self.proofs(chain)
            if entries or proofs:
                chains.append({"chain": chain, "entries": entries, "proofs": proofs})
        return {
            "ledger_id": self.ledger_id,
            "run_id": run_id,
            "chains": chains,
            "keys": {str(v): k for v, k in self.public_keys().items()},
        }

    # -- verification --------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Walks every chain and checkpoint; returns one line per problem found (empty: intact)."""
        return self.verify_report().problems

    def verify_report(
        self,
        *,
        trusted_keys: dict[int, str] | None = None,
        witness: dict[str, Any] | None = None,
        grace: float = PENDING_GRACE,
        batch: int = 5000,
    ) -> VerifyReport:
        """Streams the ledger: every entry against its chain and the signed heads, every checkpoint
        against its predecessor, its Merkle root and its signature. Memory stays bounded (rows are
        read in batches, one chain's signed heads at a time).

        Args:
            trusted_keys: key version -> public key (base64) from outside the ledger (Vault, a
                pinned file). Keys recorded in the ledger must match them. None: the ledger's own.
            witness: the newest checkpoint as witnessed outside the database; the ledger must hold
                it unchanged (else it was rolled back, truncated or replaced).
            grace: entries recorded less than this many seconds ago may still await a checkpoint.
        """
        report = VerifyReport(url_name=self.name, ledger_id=self.ledger_id or None)
        recorded = self.public_keys()
        report.keys = dict(recorded)
        keys = dict(recorded)
        if trusted_keys is not None:
            for v, k in recorded.items():
                if trusted_keys.get(v) != k:
                    report.problems.append(f"ledger key version {v} is not a trusted key (replaced or forged)")
            keys = {v: k for v, k in recorded.items() if trusted_keys.get(v) == k}
            for v, k in trusted_keys.items():
                keys.setdefault(v, k)

        # 1. the checkpoint chain, signatures and Merkle roots
        prev = GENESIS
        expected = 1
        last_cp: CheckpointRecord | None = None
        with self.reader.connect() as conn:
            cps = conn.execution_options(stream_results=True, yield_per=200).execute(
                text("SELECT seq, body, hash, signature, at FROM ledger_checkpoints ORDER BY seq")
            )
            with self.reader.connect() as heads_conn:
                for s, b, h, sig, at in cps:
                    cp = CheckpointRecord(int(s), str(b), str(h), str(sig), str(at))
                    if cp.seq != expected:
                        report.problems.append(f"checkpoint #{expected}: missing (next present is #{cp.seq})")
                    heads = [
                        Head(str(c), int(n), str(hh), bool(f))
                        for c, n, hh, f in heads_conn.execute(
                            text(
                                "SELECT chain, size, head, final FROM ledger_checkpoint_heads "
                                "WHERE checkpoint = :cp ORDER BY idx"
                            ),
                            {"cp": cp.seq},
                        )
                    ]
                    report.problems += check_checkpoint(cp, heads, ledger_id=self.ledger_id, prev_hash=prev, keys=keys)
                    report.checkpoints += 1
                    prev, expected, last_cp = cp.hash, cp.seq + 1, cp
        if last_cp is not None:
            report.proven_through = {"checkpoint": last_cp.seq, "at": last_cp.at, "hash": last_cp.hash}

        # 2. the outside witness: the newest checkpoint it saw must be here, unchanged
        if witness is not None:
            report.witness = f"checkpoint #{witness.get('seq')} witnessed at {witness.get('at')}"
            if witness.get("ledger_id") != self.ledger_id:
                report.problems.append(
                    f"the witness names ledger {witness.get('ledger_id')}, this database holds {self.ledger_id} "
                    "(replaced)"
                )
            else:
                with self.reader.connect() as conn:
                    row = conn.execute(
                        text("SELECT hash FROM ledger_checkpoints WHERE seq = :s"), {"s": witness.get("seq")}
                    ).first()
                if row is None or row[0] != witness.get("hash"):
                    report.problems.append(
                        f"checkpoint #{witness.get('seq')} witnessed outside the database is "
                        f"{'missing' if row is None else 'different'} here (rolled back, truncated or replaced)"
                    )

        # 3. every chain, merged with the heads the checkpoints signed for it
        summary = ChainSummary()
        pending_after = (datetime.now(UTC) - timedelta(seconds=grace)).isoformat() if grace > 0 else None
        checker = ChainChecker(summary, pending_after=pending_after)
        order = "" if self._sqlite else ' COLLATE "C"'  # bytewise: the merge below compares in Python
        with self.reader.connect() as econn, self.reader.connect() as hconn:
            entries = econn.execution_options(stream_results=True, yield_per=batch).execute(
                text(
                    "SELECT seq, chain, chain_seq, event_key, run_id, kind, at, data, prev_hash, hash, recorded_at, mac "
                    f"FROM ledger ORDER BY chain{order}, chain_seq"
                )
            )
            # Only heads of the checkpoints checked above: one written meanwhile waits for next time.
            signed = hconn.execution_options(stream_results=True, yield_per=batch).execute(
                text(
                    "SELECT chain, checkpoint, size, head, final FROM ledger_checkpoint_heads "
                    f"WHERE checkpoint <= :last ORDER BY chain{order}, checkpoint"
                ),
                {"last": last_cp.seq if last_cp else 0},
            )
            _merge(checker, self._macs_checked(entries, summary), _heads_by_chain(signed))
        report.rows = (
            "every row's MAC checked against the row key"
            if self.row_key is not None
            else "row MACs not checked (no access to the row key: only the hash chain and the signed heads)"
        )
        report.entries, report.chains = summary.entries, summary.chains
        report.proven, report.pending, report.unproven = summary.proven, summary.pending, summary.unproven
        report.problems += summary.problems
        if summary.dropped:
            report.problems.append(f"... and {summary.dropped} more problems")
        return report

    def _macs_checked(self, rows: Any, summary: ChainSummary) -> Iterator[EntryRecord]:
        for r in rows:
            e = EntryRecord(*r[:11])
            if self.row_key is not None and not self.row_key.check(e.hash, str(r[11] or "")):
                summary.problem(
                    f"seq {e.seq} (chain {e.chain} #{e.chain_seq}, {e.kind}, {e.event_key}): "
                    "not written by a lockgate worker (no valid row MAC)"
                )
            yield e


def _heads_by_chain(rows: Any) -> Iterator[tuple[str, list[tuple[int, Head]]]]:
    chain: str | None = None
    group: list[tuple[int, Head]] = []
    for c, cp, n, h, f in rows:
        if c != chain:
            if chain is not None:
                yield chain, group
            chain, group = str(c), []
        group.append((int(cp), Head(str(c), int(n), str(h), bool(f))))
    if chain is not None:
        yield chain, group


def _merge(checker: ChainChecker, entries: Iterator[EntryRecord], heads: Iterator[tuple[str, Any]]) -> None:
    """Walks two chain-ordered streams side by side (entries, signed heads): one chain at a time."""
    pending: EntryRecord | None = next(entries, None)
    signed = next(heads, None)

    def chain_entries(name: str) -> Iterator[EntryRecord]:
        nonlocal pending
        while pending is not None and pending.chain == name:
            yield pending
            pending = next(entries, None)

    while pending is not None or signed is not None:
        if signed is None or (pending is not None and pending.chain < signed[0]):
            assert pending is not None
            name = pending.chain
            checker.chain(name, chain_entries(name), [])
        elif pending is None or signed[0] < pending.chain:
            checker.chain(signed[0], iter(()), signed[1])
            signed = next(heads, None)
        else:
            name = pending.chain
            checker.chain(name, chain_entries(name), signed[1])
            signed = next(heads, None)
