"""Checkpoints: the heads that changed, committed into a Merkle tree, chained to the checkpoint before
and signed with the ledger's Transit key; only what lockgate wrote (authentic, contiguous rows up to
the head) is ever signed."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from lockgate.activities.ledger.store import LedgerRead, LedgerStore, Signer, log
from lockgate.evidence import (
    GENESIS,
    EntryRecord,
    Head,
    checkpoint_body,
    checkpoint_message,
    signature_version,
)

__all__ = ["RACE_SECONDS", "SEAL_COALESCE", "Checkpointing"]

# How long a checkpoint waits after a run closes, so that runs closing together share a signature.
SEAL_COALESCE = 0.5
# How long one checkpoint keeps retrying after losing the race for its number to another checkpointer.
RACE_SECONDS = 30.0


class Checkpointing(LedgerStore):
    """The ledger's checkpointer (a thread in every process that holds a signer)."""

    # Periodic passes in this process; a worker of a cluster turns them off (see `_checkpoint_loop`).
    periodic_checkpoints: bool = True

    def _start(self, checkpoint_interval: float | None) -> None:
        if self._signer is not None and checkpoint_interval:
            self._thread = threading.Thread(
                target=self._checkpoint_loop, args=(checkpoint_interval,), name="lockgate-checkpoint", daemon=True
            )
            self._thread.start()

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> int | None:
        """Signs the heads that changed since the last checkpoint. Returns the new checkpoint's
        number, or None when nothing changed (or no signer is configured). Concurrent checkpointers
        (threads or workers) each get their own number; none of them blocks an append while it signs."""
        if self._signer is None:
            return None
        with self._checkpoint_lock:
            deadline = time.monotonic() + RACE_SECONDS
            while True:
                try:
                    return self._checkpoint_once(self._signer)
                except IntegrityError:
                    # Another checkpointer took this number. Signing again on top of it is safe: what
                    # it signed is no longer dirty. Past the deadline this pass just stops; the
                    # heads stay dirty and the next pass (or the winner's next one) signs them.
                    if time.monotonic() > deadline:
                        log.info("ledger: checkpoint skipped after losing races for %.0f s", RACE_SECONDS)
                        return None
                    time.sleep(random.uniform(0.005, 0.05))  # noqa: S311 - jitter, not a secret

    def _checkpoint_once(self, signer: Signer) -> int | None:
        with self.reader.connect() as conn:
            dirty = conn.execute(
                text(
                    "SELECT chain, size, head, closed FROM ledger_heads h "
                    "WHERE dirty AND (size > sealed_size OR (closed AND NOT sealed_final)) "
                    # A chain once signed final is never signed again: rows after its end are forged.
                    "AND NOT EXISTS (SELECT 1 FROM ledger_checkpoint_heads s WHERE s.chain = h.chain AND s.final) "
                    "ORDER BY chain"
                )
            ).all()
            if not dirty:
                return None
            last = conn.execute(text("SELECT seq, hash FROM ledger_checkpoints ORDER BY seq DESC LIMIT 1")).first()
            # Only what lockgate wrote is signed: a chain with a row no worker wrote (or a gap, or a
            # head row that does not match its entries) waits, and is reported.
            refused = LedgerRead()
            for c, n, h, _closed in dirty:
                why = self._unsealable(conn, str(c), int(n), str(h))
                if why is not None:
                    refused.gaps.add(str(c))
                    refused.problems.append(f"chain {c}: not signed: {why}")
            conn.rollback()
        if refused.problems:
            self._report_unauthentic(refused)
        heads = sorted(
            (
                Head(str(c), int(n), str(h), bool(closed))
                for c, n, h, closed in dirty
                if int(n) > 0 and str(c) not in refused.gaps
            ),
            key=lambda h: h.chain,
        )
        if not heads:
            return None
        seq = int(last[0]) + 1 if last else 1
        prev = str(last[1]) if last else GENESIS
        at = datetime.now(UTC).isoformat()
        body = checkpoint_body(self.ledger_id, seq, prev, at, heads)
        digest = hashlib.sha256(body.encode()).hexdigest()
        # Signed outside any transaction: Vault's round trip never holds a lock writers need.
        signature = signer.sign(checkpoint_message(digest))
        version = signature_version(signature)
        known = self.public_keys()
        fresh = {} if version in known else signer.public_keys()
        with self.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO ledger_checkpoints (seq, body, hash, signature, at) VALUES (:s, :b, :h, :sig, :at)"),
                {"s": seq, "b": body, "h": digest, "sig": signature, "at": at},
            )
            if heads:
                conn.execute(
                    text(
                        "INSERT INTO ledger_checkpoint_heads (checkpoint, idx, chain, size, head, final) "
                        "VALUES (:cp, :i, :c, :n, :h, :f)"
                    ),
                    [
                        {"cp": seq, "i": i, "c": h.chain, "n": h.size, "h": h.head, "f": h.final}
                        for i, h in enumerate(heads)
                    ],
                )
                conn.execute(
                    text(
                        "UPDATE ledger_heads SET sealed_size = :n, sealed_final = :f, "
                        "dirty = (size > :n OR (closed AND NOT :f)) WHERE chain = :c AND sealed_size <= :n"
                    ),
                    [{"c": h.chain, "n": h.size, "f": h.final} for h in heads],
                )
            for v, key in fresh.items():
                if v not in known:
                    conn.execute(
                        text(
                            "INSERT INTO ledger_keys (version, key_name, public_key, recorded_at) "
                            "VALUES (:v, :k, :p, :at) ON CONFLICT (version) DO NOTHING"
                        ),
                        {"v": v, "k": signer.key_name, "p": key, "at": at},
                    )
        try:
            signer.write_witness(
                self.name, {"ledger_id": self.ledger_id, "seq": seq, "hash": digest, "signature": signature, "at": at}
            )
        except Exception as err:  # noqa: BLE001 - the checkpoint stands; the next one witnesses again
            log.warning("ledger: checkpoint #%d signed but not witnessed: %s", seq, err)
        return seq

    def _unsealable(self, conn: Connection, chain: str, size: int, head: str) -> str | None:
        """Why the chain's head may not be signed (None: every entry since its last signed head is
        contiguous, authentic and ends at this head)."""
        signed = conn.execute(
            text("SELECT size, head FROM ledger_checkpoint_heads WHERE chain = :c ORDER BY checkpoint DESC LIMIT 1"),
            {"c": chain},
        ).first()
        n, prev = (int(signed[0]), str(signed[1])) if signed else (0, GENESIS)
        rows = conn.execute(
            text(
                "SELECT seq, chain, chain_seq, event_key, run_id, kind, at, data, prev_hash, hash, recorded_at, mac "
                # Up to the head read above: rows appended meanwhile wait for the next checkpoint.
                "FROM ledger WHERE chain = :c AND chain_seq > :n AND chain_seq <= :size ORDER BY chain_seq"
            ),
            {"c": chain, "n": n, "size": size},
        )
        for r in rows:
            e = EntryRecord(*r[:11])
            if e.chain_seq != n + 1 or e.prev_hash != prev:
                return f"entry #{n + 1} is missing or was replaced (deleted in the database)"
            why = self.row_problem(e, str(r[11] or ""))
            if why is not None:
                return f"#{e.chain_seq} ({e.kind}, {e.event_key}): {why}"
            n, prev = e.chain_seq, e.hash
        if n != size or prev != head:
            return f"its head row ({size}, {head[:12]}) does not match its entries ({n}, {prev[:12]})"
        return None

    def _checkpoint_loop(self, interval: float) -> None:
        while True:
            # Without periodic passes (a worker in a cluster: `lockgate.background` signs what
            # changed, once per cluster) this thread only coalesces the seals of closing runs.
            self._wake.wait(interval if self.periodic_checkpoints else None)
            if self._stop.is_set():
                return
            if self._wake.is_set():
                # Runs closing meanwhile share this checkpoint's one signature.
                self._stop.wait(SEAL_COALESCE)
                self._wake.clear()
            try:
                self.checkpoint()
            except Exception as err:  # noqa: BLE001 - retried at the next interval; verify shows the gap
                log.warning("ledger: periodic checkpoint failed: %s", err)

    def seal(self) -> int | None:
        """A checkpoint now, for callers that just closed a run: never raises (the periodic pass
        retries, and `verify` shows what is not yet proven)."""
        try:
            return self.checkpoint()
        except Exception as err:  # noqa: BLE001
            log.warning("ledger: checkpoint at run close failed (the periodic pass retries): %s", err)
            return None

    def seal_soon(self) -> None:
        """As `seal`, for a run that just closed, without making it wait for Vault's signature:
        the checkpointer signs within SEAL_COALESCE, one signature for every run closed meanwhile
        (and `dispose` signs what is still pending). Without a checkpointer, seals now."""
        if self._thread is None:
            self.seal()
            return
        self._wake.set()

    def dispose(self) -> None:
        pending = self._wake.is_set()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if pending:
                self.seal()  # runs closed since the last checkpoint: signed final before we go
        super().dispose()
