"""Ledgers as a forger meets them: a signer with its own ed25519 key (the interface Transit
implements), a short story of two runs, and every way of tampering with the ledger file that
`lockgate verify` must report."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lockgate.activities.anchor import TransitAnchor
from lockgate.activities.ledger import Ledger
from lockgate.bootstrap import LEDGER_SIGNING_KEY
from lockgate.evidence import entry_hash
from lockgate.models import canonical_json

__all__ = [
    "AttackerKey",
    "LocalKey",
    "forge_row",
    "ledger_row",
    "ledger_story",
    "rechain",
    "rechain_order",
    "run_sql",
    "tamper",
]


class AttackerKey:
    """A signer with a key of the attacker's own (not Vault's): what a forger can produce."""

    key_name = LEDGER_SIGNING_KEY

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()

    def sign(self, message: bytes) -> str:
        return "vault:v1:" + base64.b64encode(self._key.sign(message)).decode()

    def public_keys(self) -> dict[int, str]:
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {1: base64.b64encode(raw).decode()}

    def write_witness(self, name: str, record: dict[str, Any]) -> None:
        pass

    def read_witness(self, name: str) -> dict[str, Any] | None:
        return None


def ledger_story(ledger: Ledger, closed: str, open_: str) -> None:
    """A closed run (sealed final at close) and a run still going."""
    ledger.append(f"run.opened:{closed}", closed, "run.opened", {"agent": "refund-agent", "initiator": "erin"})
    ledger.append(
        f"decision:{closed}/1", closed, "decision", {"step": 1, "tool": "refunds.issue", "outcome": "approval"}
    )
    ledger.append(f"approval.requested:{closed}:1.1", closed, "approval.requested", {"request_id": "1.1"})
    ledger.append(f"approval.expired:{closed}:1.1", closed, "approval.expired", {"request_id": "1.1"})
    ledger.append(f"run.closed:{closed}", closed, "run.closed", {"state": "failed"})
    assert ledger.seal() is not None
    for i in range(4):
        ledger.append(f"decision:{open_}/{i}", open_, "decision", {"step": i, "tool": "orders.lookup"})
    assert ledger.checkpoint() is not None


def run_sql(path: Path, *statements: str, params: tuple[Any, ...] = ()) -> None:
    with sqlite3.connect(path) as conn:
        for s in statements:
            conn.execute(s, params) if params else conn.execute(s)


def ledger_row(path: Path, where: str) -> dict[str, Any]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute(f"SELECT * FROM ledger WHERE {where}").fetchone())


def rechain(path: Path, chain: str) -> None:
    """What a careful forger does after deleting or inserting: renumber and re-hash the whole chain,
    and fix the writers' head row, so the chain is self-consistent again."""
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM ledger WHERE chain = ? ORDER BY chain_seq", (chain,))]
        conn.execute("UPDATE ledger SET chain_seq = chain_seq + 100000 WHERE chain = ?", (chain,))
        prev = "0" * 64
        for n, r in enumerate(rows, start=1):
            h = entry_hash(prev, chain, n, r["event_key"], r["run_id"], r["kind"], r["at"], r["data"])
            conn.execute(
                "UPDATE ledger SET chain_seq = ?, prev_hash = ?, hash = ? WHERE seq = ?", (n, prev, h, r["seq"])
            )
            prev = h
        conn.execute("UPDATE ledger_heads SET size = ?, head = ? WHERE chain = ?", (len(rows), prev, chain))


def forge_row(path: Path, chain: str, run_id: str, kind: str, data: dict[str, Any], at: str) -> None:
    """Appends a row with a correct hash and position, straight into the database."""
    with sqlite3.connect(path) as conn:
        n, prev = conn.execute(
            "SELECT chain_seq, hash FROM ledger WHERE chain = ? ORDER BY chain_seq DESC LIMIT 1", (chain,)
        ).fetchone()
        body = canonical_json(data)
        key = f"{kind}:{run_id}:forged"
        h = entry_hash(prev, chain, n + 1, key, run_id, kind, at, body)
        conn.execute(
            "INSERT INTO ledger (event_key, run_id, chain, chain_seq, kind, at, data, prev_hash, hash, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, run_id, chain, n + 1, kind, at, body, prev, h, at),
        )


def tamper(how: str, path: Path, closed: str, open_: str, anchor: TransitAnchor) -> str:
    """Tampers with the ledger file; returns a phrase `verify` must report."""
    if how == "edit":
        row = ledger_row(path, f"chain = '{closed}' AND chain_seq = 2")
        run_sql(path, f"UPDATE ledger SET data = ? WHERE seq = {row['seq']}", params=('{"outcome":"allow"}',))
        return "edited"
    if how == "delete":
        row = ledger_row(path, f"chain = '{closed}' AND chain_seq = 3")
        run_sql(path, f"DELETE FROM ledger WHERE seq = {row['seq']}")
        return "missing entry"
    if how == "truncate":
        # The last rows and the last checkpoint that covered them.
        run_sql(
            path,
            "DELETE FROM ledger WHERE seq IN (SELECT seq FROM ledger ORDER BY seq DESC LIMIT 2)",
            "DELETE FROM ledger_checkpoint_heads WHERE checkpoint = (SELECT max(seq) FROM ledger_checkpoints)",
            "DELETE FROM ledger_checkpoints WHERE seq = (SELECT max(seq) FROM ledger_checkpoints)",
        )
        return "rolled back, truncated or replaced"
    if how == "insert":
        row = ledger_row(path, f"chain = '{closed}' AND chain_seq = 2")
        run_sql(
            path,
            "INSERT INTO ledger (event_key, run_id, chain, chain_seq, kind, at, data, prev_hash, hash, recorded_at) "
            f"SELECT 'x:inserted', run_id, chain, 1000, 'approval.accepted', at, data, prev_hash, hash, recorded_at "
            f"FROM ledger WHERE seq = {row['seq']}",
        )
        rechain_order(path, closed, inserted_after=2)
        return "checkpoint #1 signed another entry here"
    if how == "rechain":
        row = ledger_row(path, f"chain = '{closed}' AND chain_seq = 2")
        run_sql(path, f"DELETE FROM ledger WHERE seq = {row['seq']}")
        rechain(path, closed)
        return "truncated or deleted"
    if how == "forge":
        approval = {"request_id": "1.1", "approver": "alice", "verdict": "approve", "accepted": True}
        forge_row(path, closed, closed, "approval.accepted", approval, "2026-01-01T00:00:00+00:00")
        return "sealed final"
    if how == "replace":
        # A whole new file: the same story, self-consistent, signed with the forger's own key.
        path.unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        forged = Ledger(f"sqlite:///{path}", signer=AttackerKey(), checkpoint_interval=None)
        ledger_story(forged, closed, open_)
        forged.dispose()
        return "not a trusted key"
    raise AssertionError(how)


def rechain_order(path: Path, chain: str, inserted_after: int) -> None:
    """Moves the inserted row (parked at #1000) to just after #`inserted_after`, then re-hashes."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE ledger SET chain_seq = chain_seq + 100000 WHERE chain = ? AND chain_seq > ? AND chain_seq < 1000",
            (chain, inserted_after),
        )
        conn.execute(
            "UPDATE ledger SET chain_seq = ? WHERE chain = ? AND chain_seq = 1000", (inserted_after + 1, chain)
        )
        conn.execute(
            "UPDATE ledger SET chain_seq = chain_seq - 100000 + 1 WHERE chain = ? AND chain_seq > 100000", (chain,)
        )
    rechain(path, chain)


class LocalKey(AttackerKey):
    """A signer with its own key that also keeps the witness (as Transit's anchor does in OpenBao)."""

    def __init__(self) -> None:
        super().__init__()
        self.witnessed: dict[str, dict[str, Any]] = {}

    def write_witness(self, name: str, record: dict[str, Any]) -> None:
        self.witnessed[name] = dict(record)

    def read_witness(self, name: str) -> dict[str, Any] | None:
        return self.witnessed.get(name)
