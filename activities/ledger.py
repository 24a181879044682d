"""The audit ledger: append-only, a hash chain per run, heads sealed in signed checkpoints.

Each run's entries form their own chain (entry n commits to entry n-1), so writers of different runs
never wait on one lock: an append locks only its run's head row. A checkpointer (at run close, and
periodically in every process that holds a signer) commits the heads that changed into a Merkle
tree, chains the checkpoint to the one before, and signs it with a Vault Transit key the writers may
use but nobody can export (`lockgate.activities.anchor`); the newest checkpoint is also witnessed
outside the database. `verify` streams the ledger in bounded memory and says up to where it is
proven (`lockgate.evidence` holds the pure checks).

Appends are idempotent by `event_key`, so an activity retried after a crash never writes a second
row. Entries hold ids, digests and summaries: never a secret value.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from psycopg import OperationalError as _PsycopgOperationalError
from sqlalchemy import Index, UniqueConstraint, event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Field, Session, SQLModel, create_engine, select
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from lockgate.errors import UserError
from lockgate.evidence import (
    AFTER_CLOSE,
    CLOSING_KIND,
    GENESIS,
    ChainChecker,
    ChainSummary,
    CheckpointRecord,
    EntryRecord,
    Head,
    check_checkpoint,
    checkpoint_body,
    checkpoint_message,
    entry_hash,
    inclusion_proof,
    signature_version,
)
from lockgate.files import private_dir, private_file
from lockgate.models import canonical_json
from lockgate.text import redact_url

__all__ = [
    "GENESIS",
    "Ledger",
    "LedgerEntry",
    "LedgerMissing",
    "PolicyBundleRecord",
    "Signer",
    "VerifyReport",
    "ledger_name",
]

log = logging.getLogger("lockgate.ledger")


class LedgerEntry(SQLModel, table=True):
    __tablename__ = "ledger"  # pyright: ignore[reportAssignmentType]  # sqlmodel types it as declared_attr
    __table_args__ = (UniqueConstraint("chain", "chain_seq", name="ledger_chain_position"),)

    seq: int | None = Field(default=None, primary_key=True)  # insertion order, for display only
    event_key: str = Field(unique=True, index=True)
    # No index of its own: a run's entries are its two chains, found by the (chain, chain_seq) index
    # (one index fewer to maintain on every append).
    run_id: str
    chain: str
    chain_seq: int
    kind: str
    at: str
    data: str
    prev_hash: str
    hash: str
    recorded_at: str = ""  # the writer's clock: not hashed, only tells pending from overdue


class ChainHeadRow(SQLModel, table=True):
    """Mutable state of the writers and the checkpointer: verification never trusts it."""

    __tablename__ = "ledger_heads"  # pyright: ignore[reportAssignmentType]  # sqlmodel types it as declared_attr

    chain: str = Field(primary_key=True)
    size: int = 0
    head: str = GENESIS
    closed: bool = False
    sealed_size: int = 0
    sealed_final: bool = False
    # Not indexed: every append rewrites this row, and an unindexed update stays in place (HOT);
    # the checkpointer scans the table (one row per run) instead.
    dirty: bool = True


class CheckpointRow(SQLModel, table=True):
    __tablename__ = "ledger_checkpoints"  # pyright: ignore[reportAssignmentType]  # sqlmodel types it as declared_attr

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    body: str
    hash: str
    signature: str
    at: str


class CheckpointHeadRow(SQLModel, table=True):
    __tablename__ = "ledger_checkpoint_heads"  # pyright: ignore[reportAssignmentType]  # sqlmodel types it as declared_attr
    __table_args__ = (Index("ledger_checkpoint_heads_chain", "chain", "checkpoint"),)

    checkpoint: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    idx: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    chain: str
    size: int
    head: str
    final: bool


class LedgerKeyRow(SQLModel, table=True):
    """Public keys of every signing key version, so old checkpoints verify after a rotation."""

    __tablename__ = "ledger_keys"  # pyright: ignore[reportAssignmentType]  # sqlmodel types it as declared_attr

    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    key_name: str
    public_key: str
    recorded_at: str


class LedgerMeta(SQLModel, table=True):
    __tablename__ = "ledger_meta"  # pyright: ignore[reportAssignmentType]  # sqlmodel types it as declared_attr

    name: str = Field(primary_key=True)
    value: str


class PolicyBundleRecord(SQLModel, table=True):
    __tablename__ = "policy_bundles"  # pyright: ignore[reportAssignmentType]  # sqlmodel types it as declared_attr

    hash: str = Field(primary_key=True)
    content: str
    registered_at: str


_TABLES = [
    SQLModel.metadata.tables[name]
    for name in (
        "ledger",
        "ledger_heads",
        "ledger_checkpoints",
        "ledger_checkpoint_heads",
        "ledger_keys",
        "ledger_meta",
        "policy_bundles",
    )
]


class Signer(Protocol):
    """Signs checkpoints with a key that cannot be exported (Vault Transit), and keeps a witness
    of the newest checkpoint outside the ledger's database."""

    key_name: str

    def sign(self, message: bytes) -> str: ...

    def public_keys(self) -> dict[int, str]: ...

    def write_witness(self, name: str, record: dict[str, Any]) -> None: ...

    def read_witness(self, name: str) -> dict[str, Any] | None: ...


class LedgerMissing(UserError):
    """No ledger at the configured URL (or an empty one): nothing to verify."""


def ledger_name(url: str) -> str:
    """A stable name for the ledger at `url` (the witness is kept under it): the database it points
    at, never its password."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.drivername.startswith("sqlite"):
        where = str(Path(u.database).resolve()) if u.database and u.database != ":memory:" else ":memory:"
    else:
        where = f"{u.host or ''}:{u.port or ''}/{u.database or ''}?{u.query.get('host', '')}"
    return hashlib.sha256(f"{u.get_backend_name()}|{where}".encode()).hexdigest()[:24]


# LEDGER_WRITE: a locked or briefly unreachable database is retried; past 15 s the activity fails
# and Temporal retries it (the event_key keeps that idempotent).
_db_call = retry(
    retry=retry_if_exception_type((OperationalError, _PsycopgOperationalError)),
    wait=wait_exponential(multiplier=0.05, max=1),
    stop=stop_after_delay(15),
    reraise=True,
)

# Checkpoints: at every run close and at this interval while anything changed.
CHECKPOINT_INTERVAL = 5.0
# How long a checkpoint waits after a run closes, so that runs closing together share a signature.
SEAL_COALESCE = 0.5
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
            "problems": self.problems,
        }


class Ledger:
    """The ledger at a SQLAlchemy URL (SQLite by default, PostgreSQL for many workers)."""

    def __init__(
        self,
        url: str,
        *,
        signer: Signer | None = None,
        checkpoint_interval: float | None = CHECKPOINT_INTERVAL,
        create: bool = True,
    ) -> None:
        self.url = url
        self.name = ledger_name(url)
        self._sqlite = url.startswith("sqlite")
        if self._sqlite:
            path = url.split("///", 1)[-1]
            if not create and (not path or path == ":memory:" or not Path(path).is_file()):
                raise LedgerMissing(f"no ledger at {redact_url(url)}")
            if create and path and path != ":memory:" and not path.startswith("file:"):
                # Evidence: the database (and its WAL and shm, which SQLite creates with the
                # database's mode) readable by this OS user only, in a folder only they can list.
                if not Path(path).parent.exists():
                    private_dir(Path(path).parent)
                for part in (path, f"{path}-wal", f"{path}-shm"):
                    if part == path or Path(part).exists():
                        private_file(part)
            self.engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

            @event.listens_for(self.engine, "connect")
            def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
                # WAL: readers never block the writer, and a commit is one append, not a rewrite.
                # synchronous=NORMAL keeps WAL durable across application crashes (only an OS crash
                # can lose the last commits, which the checkpoints and the witness then expose).
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
                dbapi_conn.execute("PRAGMA synchronous=NORMAL")

            @event.listens_for(self.engine, "begin")
            def _begin_immediate(conn: Any) -> None:
                # SQLite has one writer at a time anyway: take the write lock at BEGIN, so a
                # read-then-write transaction never fails to upgrade its lock.
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            # Readers (verify, audit, the checkpointer's scan) take no write lock: under WAL they
            # never block the writers, however long a streaming verify takes.
            self.reader = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

            @event.listens_for(self.reader, "connect")
            def _reader_connect(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None

            @event.listens_for(self.reader, "begin")
            def _begin_deferred(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN")
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=20)
            self.reader = self.engine
            # The one-statement append runs on plain psycopg connections in autocommit (its own
            # transaction, one round trip, a prepared statement): the hot path of every worker.
            self._raw = _RawPool(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
        if create:
            self._retire_single_chain_schema()
            if self._sqlite:
                SQLModel.metadata.create_all(self.engine, tables=_TABLES)
            else:
                # Workers starting together on a fresh database: one creates the tables at a time.
                with self.engine.begin() as conn:
                    conn.execute(text("SELECT pg_advisory_xact_lock(727275)"))
                    SQLModel.metadata.create_all(conn, tables=_TABLES)
            self.ledger_id: str = self._ensure_id()
        else:
            if not inspect(self.engine).has_table("ledger") or not inspect(self.engine).has_table("ledger_meta"):
                raise LedgerMissing(f"no ledger at {redact_url(url)}")
            # A ledger without an id was never written by lockgate (or its id was removed): a
            # checkpoint signed for any id then fails to match, as it should.
            self.ledger_id = self._meta("ledger_id") or ""
        self._signer = signer
        self._checkpoint_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a run closed: seal soon (see seal_soon)
        self._thread: threading.Thread | None = None
        if signer is not None and checkpoint_interval:
            self._thread = threading.Thread(
                target=self._checkpoint_loop, args=(checkpoint_interval,), name="lockgate-checkpoint", daemon=True
            )
            self._thread.start()

    # -- schema --------------------------------------------------------------------------------
    def _retire_single_chain_schema(self) -> None:
        """A ledger written before per-run chains is kept aside, untouched, and a new one begins."""
        insp = inspect(self.engine)
        if insp.has_table("ledger") and "chain" not in {c["name"] for c in insp.get_columns("ledger")}:
            legacy = f"ledger_single_chain_{datetime.now(UTC):%Y%m%d%H%M%S}"
            with self.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE ledger RENAME TO {legacy}"))
                for index in insp.get_indexes("ledger"):
                    conn.execute(text(f"DROP INDEX IF EXISTS {index['name']}"))
            log.warning("ledger: the single-chain ledger was kept as table %s; a per-run-chain ledger begins", legacy)

    def _meta(self, name: str) -> str | None:
        with Session(self.reader) as session:
            row = session.get(LedgerMeta, name)
            return row.value if row else None

    def _ensure_id(self) -> str:
        existing = self._meta("ledger_id")
        if existing:
            return existing
        try:
            with Session(self.engine) as session, session.begin():
                session.add(LedgerMeta(name="ledger_id", value=uuid.uuid4().hex))
                session.add(LedgerMeta(name="created_at", value=datetime.now(UTC).isoformat()))
        except IntegrityError:
            pass  # another process created it first
        value = self._meta("ledger_id")
        assert value is not None
        return value

    # -- appends -------------------------------------------------------------------------------
    @property
    def signer(self) -> Signer | None:
        return self._signer

    def _head(self, conn: Connection, chain: str, event_key: str) -> tuple[int, str, bool, bool]:
        """The chain's head row, locked for this transaction (created if new): (size, head, closed, dup)."""
        lock = "" if self._sqlite else " FOR UPDATE"
        query = text(
            "SELECT size, head, closed, EXISTS(SELECT 1 FROM ledger WHERE event_key = :k) "
            f"FROM ledger_heads WHERE chain = :c{lock}"
        )
        row = conn.execute(query, {"c": chain, "k": event_key}).first()
        if row is None:
            conn.execute(
                text(
                    "INSERT INTO ledger_heads (chain, size, head, closed, sealed_size, sealed_final, dirty) "
                    "VALUES (:c, 0, :g, false, 0, false, true) ON CONFLICT (chain) DO NOTHING"
                ),
                {"c": chain, "g": GENESIS},
            )
            row = conn.execute(query, {"c": chain, "k": event_key}).first()
            assert row is not None
        return int(row[0]), str(row[1]), bool(row[2]), bool(row[3])

    def append(self, event_key: str, run_id: str, kind: str, data: dict[str, Any], at: datetime | None = None) -> bool:
        """Appends one entry to its run's chain unless `event_key` is already there. Returns True if
        written. Only the run's own head row is locked: other runs append in parallel."""
        now = datetime.now(UTC).isoformat()
        stamp = at.isoformat() if at is not None else now
        body = canonical_json(data)
        if not self._sqlite:
            try:
                written = self._append_one_statement(event_key, run_id, kind, stamp, body, now)
            except _PsycopgOperationalError:
                written = None  # the retried path below takes over
            if written is not None:
                return written
        return self._append(event_key, run_id, kind, stamp, body, now)

    @_db_call
    def _append(self, event_key: str, run_id: str, kind: str, stamp: str, body: str, now: str) -> bool:
        chain = run_id
        with self.engine.begin() as conn:
            size, prev, closed, dup = self._head(conn, chain, event_key)
            if dup:
                return False
            if closed:
                chain = run_id + AFTER_CLOSE
                size, prev, _closed, dup = self._head(conn, chain, event_key)
            n = size + 1
            digest = entry_hash(prev, chain, n, event_key, run_id, kind, stamp, body)
            row = {
                "event_key": event_key,
                "run_id": run_id,
                "chain": chain,
                "n": n,
                "kind": kind,
                "at": stamp,
                "data": body,
                "prev": prev,
                "hash": digest,
                "rec": now,
                "closing": kind == CLOSING_KIND and chain == run_id,
            }
            conn.execute(_INSERT, row)
            conn.execute(_ADVANCE, row)
        return True

    def _append_one_statement(
        self, event_key: str, run_id: str, kind: str, stamp: str, body: str, now: str
    ) -> bool | None:
        """PostgreSQL's hot path: the whole append (lock the run's head row, hash, insert, advance)
        in one statement, one round trip, its own transaction. None: the chain is new or closed
        (the general path handles those)."""
        params = {
            "event_key": event_key,
            "run_id": run_id,
            "chain": run_id,
            "kind": kind,
            "at": stamp,
            "data": body,
            "rec": now,
            "closing": kind == CLOSING_KIND,
        }
        import psycopg

        try:
            with self._raw.connection() as conn:
                row = conn.execute(_PG_APPEND, params).fetchone()
        except psycopg.IntegrityError:
            with self.reader.connect() as conn:
                if conn.execute(text("SELECT 1 FROM ledger WHERE event_key = :k"), {"k": event_key}).first():
                    return False  # recorded before (a retried activity), or by a concurrent writer
            raise
        return None if row is None else True

    def try_append(self, *args: Any, **kwargs: Any) -> bool:
        import psycopg

        try:
            return self.append(*args, **kwargs)
        except (IntegrityError, psycopg.IntegrityError):
            return False  # a concurrent writer recorded the same event

    @_db_call
    def register_bundle(self, bundle_hash: str, content: dict[str, Any]) -> None:
        try:
            with Session(self.engine) as session, session.begin():
                if session.get(PolicyBundleRecord, bundle_hash) is None:
                    session.add(
                        PolicyBundleRecord(
                            hash=bundle_hash, content=json.dumps(content), registered_at=datetime.now(UTC).isoformat()
                        )
                    )
        except IntegrityError:
            pass  # registered by another worker meanwhile

    def bundle(self, bundle_hash: str) -> dict[str, Any] | None:
        with Session(self.reader) as session:
            row = session.get(PolicyBundleRecord, bundle_hash)
            return json.loads(row.content) if row else None

    # -- reads ---------------------------------------------------------------------------------
    def entries(self, run_id: str | None = None) -> list[LedgerEntry]:
        with Session(self.reader) as session:
            query = select(LedgerEntry).order_by(LedgerEntry.seq)  # type: ignore[arg-type]
            if run_id is not None:
                query = query.where(LedgerEntry.chain.in_([run_id, run_id + AFTER_CLOSE]))  # type: ignore[attr-defined]
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

    def chains_of(self, run_id: str) -> list[str]:
        with self.reader.connect() as conn:
            rows = conn.execute(
                text("SELECT DISTINCT chain FROM ledger WHERE chain IN (:a, :b)"),
                {"a": run_id, "b": run_id + AFTER_CLOSE},
            )
            return sorted(str(r[0]) for r in rows)

    def public_keys(self) -> dict[int, str]:
        with Session(self.reader) as session:
            return {k.version: k.public_key for k in session.exec(select(LedgerKeyRow)).all()}

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> int | None:
        """Signs the heads that changed since the last checkpoint. Returns the new checkpoint's
        number, or None when nothing changed (or no signer is configured). Concurrent checkpointers
        (threads or workers) each get their own number; none of them blocks an append while it signs."""
        if self._signer is None:
            return None
        with self._checkpoint_lock:
            for _attempt in range(10):
                try:
                    return self._checkpoint_once(self._signer)
                except IntegrityError:
                    continue  # another worker took this number: sign again on top of it
            raise RuntimeError("ledger checkpoint: lost the race ten times in a row")

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
            conn.rollback()
        heads = sorted(
            (Head(str(c), int(n), str(h), bool(closed)) for c, n, h, closed in dirty if int(n) > 0),
            key=lambda h: h.chain,
        )
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

    def _checkpoint_loop(self, interval: float) -> None:
        while True:
            self._wake.wait(interval)
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
                    "SELECT seq, chain, chain_seq, event_key, run_id, kind, at, data, prev_hash, hash, recorded_at "
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
            _merge(checker, (EntryRecord(*r) for r in entries), _heads_by_chain(signed))
        report.entries, report.chains = summary.entries, summary.chains
        report.proven, report.pending, report.unproven = summary.proven, summary.pending, summary.unproven
        report.problems += summary.problems
        if summary.dropped:
            report.problems.append(f"... and {summary.dropped} more problems")
        return report

    def dispose(self) -> None:
        pending = self._wake.is_set()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if pending:
                self.seal()  # runs closed since the last checkpoint: signed final before we go
        self.engine.dispose()
        self.reader.dispose()
        if not self._sqlite:
            self._raw.close()


class _RawPool:
    """A few plain psycopg connections in autocommit, shared by the threads of one process."""

    def __init__(self, conninfo: str, size: int = 16) -> None:
        import queue

        self._conninfo = conninfo
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._slots = threading.Semaphore(size)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        import psycopg

        self._slots.acquire()
        conn = None
        try:
            try:
                conn = self._idle.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty: open one more
                conn = psycopg.connect(self._conninfo, autocommit=True, prepare_threshold=0)
            yield conn
            self._idle.put(conn)
            conn = None
        finally:
            if conn is not None:
                conn.close()  # broken or failed mid-statement: never reused
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except Exception:  # noqa: BLE001 - empty
                return


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


# The entry hash computed by PostgreSQL exactly as `lockgate.evidence.entry_hash` computes it:
# sha256(prev_hash || canonical JSON of the entry), keys sorted, to_json escaping strings as Python's
# json.dumps(ensure_ascii=False) does (tests/test_ledger_evidence.py checks awkward text both ways).
_PG_APPEND = """
WITH h AS (
    SELECT chain, size + 1 AS n, head AS prev FROM ledger_heads
    WHERE chain = %(chain)s AND NOT closed FOR UPDATE
), b AS (
    SELECT h.chain, h.n, h.prev, encode(sha256(convert_to(h.prev
        || '{"at":' || CAST(to_json(CAST(%(at)s AS text)) AS text)
        || ',"chain":' || CAST(to_json(h.chain) AS text)
        || ',"data":' || CAST(to_json(CAST(%(data)s AS text)) AS text)
        || ',"event_key":' || CAST(to_json(CAST(%(event_key)s AS text)) AS text)
        || ',"kind":' || CAST(to_json(CAST(%(kind)s AS text)) AS text)
        || ',"n":' || CAST(h.n AS text)
        || ',"run_id":' || CAST(to_json(CAST(%(run_id)s AS text)) AS text)
        || '}', 'UTF8')), 'hex') AS hash
    FROM h
), e AS (
    INSERT INTO ledger (event_key, run_id, chain, chain_seq, kind, at, data, prev_hash, hash, recorded_at)
    SELECT %(event_key)s, %(run_id)s, b.chain, b.n, %(kind)s, %(at)s, %(data)s, b.prev, b.hash, %(rec)s FROM b
    RETURNING chain, chain_seq, hash
)
UPDATE ledger_heads SET size = e.chain_seq, head = e.hash, dirty = true,
    closed = (ledger_heads.closed OR %(closing)s)
FROM e WHERE ledger_heads.chain = e.chain
RETURNING e.chain_seq
"""

_INSERT = text(
    "INSERT INTO ledger (event_key, run_id, chain, chain_seq, kind, at, data, prev_hash, hash, recorded_at) "
    "VALUES (:event_key, :run_id, :chain, :n, :kind, :at, :data, :prev, :hash, :rec)"
)
_ADVANCE = text(
    "UPDATE ledger_heads SET size = :n, head = :hash, dirty = true, closed = (closed OR :closing) WHERE chain = :chain"
)
