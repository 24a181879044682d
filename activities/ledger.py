"""The audit ledger: append-only and hash-chained, in any SQLAlchemy database (sqlmodel).

Each entry's hash covers its content and the previous entry's hash, so editing, inserting or deleting
a row breaks the chain from there on (`verify`). Appends are idempotent by `event_key`, so an activity
retried after a crash never writes a second row. Entries hold ids, digests and summaries: never a
secret value.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Field, Session, SQLModel, create_engine, select
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from lockgate.models import canonical_json

__all__ = ["GENESIS", "Ledger", "LedgerEntry", "PolicyBundleRecord"]

GENESIS = "0" * 64


class LedgerEntry(SQLModel, table=True):
    __tablename__ = "ledger"

    seq: int | None = Field(default=None, primary_key=True)
    event_key: str = Field(unique=True, index=True)
    run_id: str = Field(index=True)
    kind: str
    at: str
    data: str
    prev_hash: str
    hash: str


class PolicyBundleRecord(SQLModel, table=True):
    __tablename__ = "policy_bundles"

    hash: str = Field(primary_key=True)
    content: str
    registered_at: str


def entry_hash(prev_hash: str, seq: int, event_key: str, run_id: str, kind: str, at: str, data: str) -> str:
    body = canonical_json({"seq": seq, "event_key": event_key, "run_id": run_id, "kind": kind, "at": at, "data": data})
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


# LEDGER_WRITE: a locked or briefly unreachable database is retried; past 15 s the activity fails
# and Temporal retries it (the event_key keeps that idempotent).
_db_call = retry(
    retry=retry_if_exception_type(OperationalError),
    wait=wait_exponential(multiplier=0.05, max=1),
    stop=stop_after_delay(15),
    reraise=True,
)


_EXISTS = text("SELECT 1 FROM ledger WHERE event_key = :k")
_LAST = text("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1")
_INSERT = text(
    "INSERT INTO ledger (seq, event_key, run_id, kind, at, data, prev_hash, hash) "
    "VALUES (:seq, :event_key, :run_id, :kind, :at, :data, :prev_hash, :hash)"
)


class Ledger:
    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite = url.startswith("sqlite")
        if self._sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

            @event.listens_for(self.engine, "connect")
            def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
                # WAL: readers never block the writer, and a commit is one append, not a rewrite.
                # synchronous=NORMAL keeps WAL durable across application crashes (only an OS crash
                # can lose the last commits; the hash chain still verifies).
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
                dbapi_conn.execute("PRAGMA synchronous=NORMAL")

            @event.listens_for(self.engine, "begin")
            def _begin_immediate(conn: Any) -> None:
                # The chain needs writers in single file: take the write lock at BEGIN.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._local = threading.Lock()
        SQLModel.metadata.create_all(self.engine, tables=[LedgerEntry.__table__, PolicyBundleRecord.__table__])

    @_db_call
    def append(self, event_key: str, run_id: str, kind: str, data: dict[str, Any], at: datetime | None = None) -> bool:
        """Appends one entry unless `event_key` is already there. Returns True if written."""
        stamp = (at or datetime.now(UTC)).isoformat()
        body = canonical_json(data)
        # Plain SQL on the hot path: every gate and tool call appends here.
        with self._local, self.engine.begin() as conn:
            if not self._sqlite:
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

    def try_append(self, *args: Any, **kwargs: Any) -> bool:
        try:
            return self.append(*args, **kwargs)
        except IntegrityError:
            return False  # a concurrent writer recorded the same event

    @_db_call
    def register_bundle(self, bundle_hash: str, content: dict[str, Any]) -> None:
        with self._local, Session(self.engine) as session, session.begin():
            if session.get(PolicyBundleRecord, bundle_hash) is None:
                session.add(
                    PolicyBundleRecord(
                        hash=bundle_hash,
                        content=json.dumps(content),
                        registered_at=datetime.now(UTC).isoformat(),
                    )
                )

    def bundle(self, bundle_hash: str) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            row = session.get(PolicyBundleRecord, bundle_hash)
            return json.loads(row.content) if row else None

    def entries(self, run_id: str | None = None) -> list[LedgerEntry]:
        with Session(self.engine) as session:
            query = select(LedgerEntry).order_by(LedgerEntry.seq)  # type: ignore[arg-type]
            if run_id is not None:
                query = query.where(LedgerEntry.run_id == run_id)
            return list(session.exec(query).all())

    def run_ids_with(self, kind: str) -> list[str]:
        """Runs that have at least one entry of `kind` (e.g. outstanding compensations)."""
        with Session(self.engine) as session:
            query = select(LedgerEntry.run_id).where(LedgerEntry.kind == kind).distinct()
            return sorted(session.exec(query).all())

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return [
            {"seq": e.seq, "kind": e.kind, "at": e.at, "event_key": e.event_key, **json.loads(e.data)}
            for e in self.entries(run_id)
        ]

    def verify(self) -> list[str]:
        """Walks the whole chain; returns one line per problem found (empty: intact)."""
        problems: list[str] = []
        prev = GENESIS
        expected_seq = 1
        for e in self.entries():
            if e.seq != expected_seq:
                problems.append(f"seq {expected_seq}: missing entry (next present is {e.seq})")
            if e.prev_hash != prev:
                problems.append(f"seq {e.seq}: prev_hash does not match the entry before it")
            recomputed = entry_hash(e.prev_hash, e.seq or 0, e.event_key, e.run_id, e.kind, e.at, e.data)
            if recomputed != e.hash:
                problems.append(f"seq {e.seq}: content does not match its hash (edited)")
            prev = e.hash
            expected_seq = (e.seq or 0) + 1
        return problems

    def dispose(self) -> None:
        self.engine.dispose()
