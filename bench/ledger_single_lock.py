"""The ledger design lockgate replaced, kept for the bench's same-run anchor: one global hash chain,
every append behind one lock (a PostgreSQL advisory lock), exactly as its `append` did (the code
of lockgate's ledger before per-run chains, trimmed to appends)."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlmodel import Field, SQLModel, create_engine

from lockgate.models import canonical_json

__all__ = ["SingleLockLedger"]

GENESIS = "0" * 64


class SingleChainEntry(SQLModel, table=True):
    __tablename__ = "single_chain_ledger"  # pyright: ignore[reportAssignmentType]  # sqlmodel types it as declared_attr

    seq: int | None = Field(default=None, primary_key=True)
    event_key: str = Field(unique=True, index=True)
    run_id: str = Field(index=True)
    kind: str
    at: str
    data: str
    prev_hash: str
    hash: str


def entry_hash(prev_hash: str, seq: int, event_key: str, run_id: str, kind: str, at: str, data: str) -> str:
    body = canonical_json({"seq": seq, "event_key": event_key, "run_id": run_id, "kind": kind, "at": at, "data": data})
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


_EXISTS = text("SELECT 1 FROM single_chain_ledger WHERE event_key = :k")
_LAST = text("SELECT seq, hash FROM single_chain_ledger ORDER BY seq DESC LIMIT 1")
_INSERT = text(
    "INSERT INTO single_chain_ledger (seq, event_key, run_id, kind, at, data, prev_hash, hash) "
    "VALUES (:seq, :event_key, :run_id, :kind, :at, :data, :prev_hash, :hash)"
)


class SingleLockLedger:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, pool_pre_ping=True)
        self._local = threading.Lock()
        SQLModel.metadata.create_all(self.engine, tables=[SQLModel.metadata.tables["single_chain_ledger"]])

    def append(self, event_key: str, run_id: str, kind: str, data: dict[str, Any], at: datetime | None = None) -> bool:
        stamp = (at or datetime.now(UTC)).isoformat()
        body = canonical_json(data)
        with self._local, self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
            if conn.execute(_EXISTS, {"k": event_key}).first() is not None:
                return False
            last = conn.execute(_LAST).first()
            seq = int(last[0]) + 1 if last else 1
            prev = str(last[1]) if last else GENESIS
            conn.execute(
                _INSERT,
                {
                    "seq": seq,
                    "event_key": event_key,
                    "run_id": run_id,
                    "kind": kind,
                    "at": stamp,
                    "data": body,
                    "prev_hash": prev,
                    "hash": entry_hash(prev, seq, event_key, run_id, kind, stamp, body),
                },
            )
        return True
