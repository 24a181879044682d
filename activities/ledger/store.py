"""The ledger's storage: the tables, appends (each row hashed into its run's chain and MACed with
the worker's row key) and the one authenticated read path (`read`, and `entries`, `events` and
`typed` over it). Checkpointing and verification build on it (`checkpoints`, `verification`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from psycopg import OperationalError as _PsycopgOperationalError
from sqlalchemy import Index, UniqueConstraint, and_, event, inspect, or_, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import Field, Session, SQLModel, create_engine, select
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from lockgate.activities.ledger import events
from lockgate.activities.ledger.rowkey import RowKey, RowKeySource
from lockgate.errors import UserError
from lockgate.evidence import (
    AFTER_CLOSE,
    CLOSING_KIND,
    GENESIS,
    EntryRecord,
    entry_hash,
)
from lockgate.files import private_dir, private_file
from lockgate.models import canonical_json
from lockgate.text import redact_url

__all__ = [
    "CHECKPOINT_INTERVAL",
    "LEDGER_RUN_ID",
    "UNAUTHENTIC_KIND",
    "LedgerEntry",
    "LedgerMissing",
    "LedgerRead",
    "LedgerStore",
    "PolicyBundleRecord",
    "PoolLimits",
    "Signer",
    "ledger_name",
]

log = logging.getLogger("lockgate.ledger")

E = TypeVar("E", bound=events.LedgerEvent)


# How long a ledger transaction holding a chain's lock may sit idle before the server ends it.
IDLE_TRANSACTION_SECONDS = 15


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
    # The writer's MAC of the row (lockgate.activities.ledger.rowkey): not hashed; a row without a
    # valid one was not written by a lockgate worker.
    mac: str = Field(default="", sa_column_kwargs={"server_default": ""})


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


# Where the ledger records what it found wrong with itself (rows it refused), once per finding.
LEDGER_RUN_ID = "lockgate.ledger"
UNAUTHENTIC_KIND = "ledger.unauthenticated"


@dataclass
class LedgerRead:
    """Entries a reader may act on, and what was refused (one line each)."""

    entries: list[LedgerEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    forged: list[LedgerEntry] = field(default_factory=list)
    gaps: set[str] = field(default_factory=set)

    def refuse(self, e: LedgerEntry, why: str) -> None:
        self.problems.append(f"chain {e.chain} #{e.chain_seq} ({e.kind}, {e.event_key}): {why}")


# Runs whose rows the gate's ledger check keeps (`LedgerStore.run_events`), most recent first. A
# view only saves work while its run keeps calling tools: runs waiting (for an approval, a timer)
# held 512 views at about 90 KiB each, which made a waiting run cost the worker 2.09x a plain one
# in memory (1.57x without the views). 64 covers the runs in flight of a busy worker.
RUN_VIEWS = 64
# Rows found authentic, kept to skip hashing them again (`row_problem`): a bound, not a policy.
AUTHENTIC_ROWS = 8192


@dataclass(frozen=True)
class _RunView:
    heads: dict[str, tuple[int, str]]  # chain -> (chain_seq, hash) of its last row read
    rows: tuple[tuple[int, dict[str, Any]], ...]  # (seq, event), in seq order


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


@dataclass(frozen=True)
class PoolLimits:
    """How many PostgreSQL connections one process's ledger may hold: at most `most` (the
    SQLAlchemy pool's `size` + `overflow`, plus `raw` plain connections for the one-statement
    append). A caller past the limit waits up to `timeout` seconds for a connection, then fails
    (and Temporal retries the activity). Ignored for SQLite.

    Attributes:
        size: connections the SQLAlchemy pool keeps open.
        overflow: more it may open under load (closed when returned).
        raw: plain psycopg connections for appends.
        timeout: seconds to wait for a free connection.
        pgbouncer: a transaction-mode PgBouncer sits in front: no server-side prepared statements
            (psycopg `prepare_threshold=None`); every statement is its own or within one transaction.
    """

    size: int = 10
    overflow: int = 10
    raw: int = 10
    timeout: float = 30.0
    pgbouncer: bool = False

    @property
    def most(self) -> int:
        return self.size + self.overflow + self.raw


class LedgerStore:
    """The ledger at a SQLAlchemy URL (SQLite by default, PostgreSQL for many workers): storage."""

    def __init__(
        self,
        url: str,
        *,
        signer: Signer | None = None,
        checkpoint_interval: float | None = CHECKPOINT_INTERVAL,
        create: bool = True,
        row_key: RowKeySource | None = None,
        strict_events: bool = False,
        pool: PoolLimits | None = None,
    ) -> None:
        self.url = url
        self.pool = pool = pool or PoolLimits()
        # Workers and the CLI write every kind lockgate knows in its model's shape (events.EVENTS);
        # a bare ledger (benchmarks, storage tests) takes any dict.
        self._strict_events = strict_events
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
            # Bounded: at most pool.most connections per process (README "Connections").
            self.engine = create_engine(
                url,
                pool_pre_ping=True,
                pool_size=pool.size,
                max_overflow=pool.overflow,
                pool_timeout=pool.timeout,
                # PgBouncer in transaction mode hands each transaction to any server connection:
                # a statement prepared on one is unknown on the next.
                connect_args={**_PG_LIVENESS, **({"prepare_threshold": None} if pool.pgbouncer else {})},
            )
            self.reader = self.engine
            # The one-statement append runs on plain psycopg connections in autocommit (its own
            # transaction, one round trip, a prepared statement unless behind PgBouncer): the hot
            # path of every worker.
            self._raw = _RawPool(
                make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                size=pool.raw,
                prepare=not pool.pgbouncer,
            )
        if create:
            self._schema()
            self.ledger_id: str = self._ensure_id()
        else:
            if not inspect(self.engine).has_table("ledger") or not inspect(self.engine).has_table("ledger_meta"):
                raise LedgerMissing(f"no ledger at {redact_url(url)}")
            from lockgate.activities.ledger import migrate

            try:
                migrate.check(self.engine)  # read as this code knows it, or say why not
            except migrate.LedgerSchemaError:
                self.engine.dispose()
                raise
            # A ledger without an id was never written by lockgate (or its id was removed): a
            # checkpoint signed for any id then fails to match, as it should.
            self.ledger_id = self._meta("ledger_id") or ""
        # Rows this process appends carry its MAC; reads and checkpoints accept only rows whose MAC
        # verifies. Without a row key (a shell with no access to it) MACs cannot be checked.
        try:
            self.row_key: RowKey | None = row_key(self.ledger_id) if row_key is not None else None
        except BaseException:
            self.engine.dispose()
            self.reader.dispose()
            if not self._sqlite:
                self._raw.close()
            raise
        self._reported: set[str] = set()
        self._authentic: dict[tuple[str, int], tuple[Any, ...]] = {}
        # The gate's per-run view (`run_events`): each run's authenticated rows as events, and
        # where each of its chains stood when last read.
        self._runs: OrderedDict[str, _RunView] = OrderedDict()
        self._runs_lock = threading.Lock()
        self._heads_seen: dict[str, tuple[int, str]] = {}  # chain -> (size, head) this process last wrote
        self._heads_lock = threading.Lock()
        self._signer = signer
        self._checkpoint_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a run closed: seal soon (see seal_soon)
        self._thread: threading.Thread | None = None
        self._start(checkpoint_interval)

    def _start(self, checkpoint_interval: float | None) -> None:
        """Starts background work (the checkpointer: `Checkpointing`)."""

    # -- schema --------------------------------------------------------------------------------
    def _schema(self) -> None:
        """The schema this code knows, or a clear error: a database behind it is migrated when this
        role may (a dev ledger, the migration role); a runtime role without DDL rights is told to
        run `lockgate migrate`. Nothing is ever set aside or recreated."""
        from lockgate.activities.ledger import migrate

        try:
            migrate.check(self.engine)
            return
        except migrate.LedgerSchemaError as behind:
            try:
                migrate.upgrade_engine(self.engine)
            except DBAPIError as err:
                self.engine.dispose()
                raise migrate.LedgerSchemaError(f"{behind} (this role cannot: {err.orig})") from None
            except migrate.LedgerSchemaError:
                self.engine.dispose()
                raise

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
        if not self._sqlite:
            # The other side of a partition: a worker cut off while it holds the lock leaves its
            # backend idle in this transaction, and every other worker's append to the run waits
            # until PostgreSQL notices the client is gone (TCP keepalive: hours by default). The
            # server ends this transaction once it is idle that long (its statements follow one
            # another: never seconds apart). Transaction-scoped, so also behind PgBouncer.
            conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {IDLE_TRANSACTION_SECONDS * 1000}"))
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
        if self._strict_events:
            events.validate(kind, data)  # a kind lockgate writes is written in its model's shape
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
                "mac": self.row_key.mac(digest) if self.row_key is not None else "",
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
        self._saw_head(chain, n, digest)
        return True

    def _saw_head(self, chain: str, size: int, head: str) -> None:
        with self._heads_lock:
            if len(self._heads_seen) >= 4096:
                self._heads_seen.clear()  # a bound, not a cache policy: a miss costs one locked append
            self._heads_seen[chain] = (size, head)

    def _append_one_statement(
        self, event_key: str, run_id: str, kind: str, stamp: str, body: str, now: str
    ) -> bool | None:
        """PostgreSQL's hot path: the whole append (lock the run's head row, check it is still the
        head this process last wrote, insert, advance) in one statement, one round trip, its own
        transaction. The hash and its MAC are computed here, never by the database. None: the chain
        is new, closed, or moved on by another writer (the general path handles those)."""
        with self._heads_lock:
            seen = self._heads_seen.get(run_id)
        if seen is None:
            return None
        size, prev = seen
        n = size + 1
        digest = entry_hash(prev, run_id, n, event_key, run_id, kind, stamp, body)
        params = {
            "event_key": event_key,
            "run_id": run_id,
            "chain": run_id,
            "kind": kind,
            "at": stamp,
            "data": body,
            "rec": now,
            "closing": kind == CLOSING_KIND,
            "size": size,
            "n": n,
            "prev": prev,
            "hash": digest,
            "mac": self.row_key.mac(digest) if self.row_key is not None else "",
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
        if row is None:
            return None
        self._saw_head(run_id, n, digest)
        return True

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
    def row_problem(self, e: LedgerEntry | EntryRecord, mac: str | None = None) -> str | None:
        """Why a row is not authentic (None: it is): its hash does not match its content (edited), or
        it carries no valid MAC of a lockgate worker (written in the database directly). Without a
        row key only the hash can be checked."""
        tag = mac if mac is not None else getattr(e, "mac", "")
        row = (e.prev_hash, e.chain, e.chain_seq, e.event_key, e.run_id, e.kind, e.at, e.data, e.hash, tag)
        # A row found authentic once is found so again while every byte of it is the same: a gate
        # re-reads its run's entries, and comparing is cheaper than hashing them all again.
        if self._authentic.get((e.chain, e.chain_seq)) == row:
            return None
        digest = entry_hash(e.prev_hash, e.chain, e.chain_seq, e.event_key, e.run_id, e.kind, e.at, e.data)
        if digest != e.hash:
            return "its content does not match its hash (edited in the database)"
        if self.row_key is not None and not self.row_key.check(e.hash, tag):
            return "not written by a lockgate worker (no valid row MAC)"
        if len(self._authentic) >= AUTHENTIC_ROWS:
            self._authentic.clear()
        self._authentic[(e.chain, e.chain_seq)] = row
        return None

    def read(self, run_id: str | None = None, *, chains: list[str] | None = None) -> LedgerRead:
        """The authenticated entries of a run (both of its chains), of `chains`, or of the whole
        ledger, in insertion order; what was refused is in `problems` (and logged, and recorded
        once by a process holding the row key)."""
        with Session(self.reader) as session:
            query = select(LedgerEntry)
            if run_id is not None:
                chains = [*(chains or []), run_id, run_id + AFTER_CLOSE]
            if chains is not None:
                query = query.where(LedgerEntry.chain.in_(chains))  # type: ignore[attr-defined]
            rows = list(session.exec(query).all())
        rows.sort(key=lambda e: (e.chain, e.chain_seq))
        out = LedgerRead()
        last: tuple[str, int, str] = ("", 0, GENESIS)
        for e in rows:
            n_prev, h_prev = (last[1], last[2]) if last[0] == e.chain else (0, GENESIS)
            if e.chain_seq != n_prev + 1 or e.prev_hash != h_prev:
                out.gaps.add(e.chain)
                out.refuse(e, f"entry #{n_prev + 1} before it is missing or was replaced (deleted in the database)")
            last = (e.chain, e.chain_seq, e.hash)
            problem = self.row_problem(e)
            if problem is not None:
                out.refuse(e, problem)
                out.forged.append(e)
                continue
            out.entries.append(e)
        out.entries.sort(key=lambda e: e.seq or 0)
        if out.problems:
            self._report_unauthentic(out)
        return out

    def _report_unauthentic(self, found: LedgerRead) -> None:
        for line in found.problems:
            if line in self._reported:
                continue
            self._reported.add(line)
            log.warning("ledger: ignored %s", line)
            if self.row_key is not None:
                digest = hashlib.sha256(line.encode()).hexdigest()[:32]
                with contextlib.suppress(Exception):
                    self.try_append(
                        f"{UNAUTHENTIC_KIND}:{digest}", LEDGER_RUN_ID, UNAUTHENTIC_KIND, {"problem": line[:1000]}
                    )

    def entries(
        self, run_id: str | None = None, *, kind: str | None = None, authenticated: bool = True
    ) -> list[LedgerEntry]:
        """A run's entries (or every entry; of `kind` only, if given), in insertion order: only
        authenticated ones unless `authenticated=False` (display and export, which show and prove
        everything)."""
        if authenticated:
            return [e for e in self.read(run_id).entries if kind is None or e.kind == kind]
        with Session(self.reader) as session:
            query = select(LedgerEntry).order_by(LedgerEntry.seq)  # type: ignore[arg-type]
            if run_id is not None:
                query = query.where(LedgerEntry.chain.in_([run_id, run_id + AFTER_CLOSE]))  # type: ignore[attr-defined]
            if kind is not None:
                query = query.where(LedgerEntry.kind == kind)
            return list(session.exec(query).all())

    def entries_of_chains(self, prefix: str) -> list[LedgerEntry]:
        """Every row (authentic or not: check `row_problem`) of the chains named `prefix...`."""
        with Session(self.reader) as session:
            query = select(LedgerEntry).where(LedgerEntry.chain.startswith(prefix))  # type: ignore[attr-defined]
            return list(session.exec(query.order_by(LedgerEntry.chain, LedgerEntry.chain_seq)).all())  # type: ignore[arg-type]

    def chain_marks(self, prefix: str) -> dict[str, dict[int, str]]:
        """What the chains named `prefix...` must still hold: for each, position -> hash of its head
        row and of every head a checkpoint signed. A row missing at or below one of them, or with
        another hash there, was deleted or rewritten in the database."""
        marks: dict[str, dict[int, str]] = {}
        with self.reader.connect() as conn:
            for c, n, h in conn.execute(
                text("SELECT chain, size, head FROM ledger_checkpoint_heads WHERE chain LIKE :p"), {"p": _like(prefix)}
            ):
                marks.setdefault(str(c), {})[int(n)] = str(h)
            for c, n, h in conn.execute(
                text("SELECT chain, size, head FROM ledger_heads WHERE chain LIKE :p"), {"p": _like(prefix)}
            ):
                marks.setdefault(str(c), {}).setdefault(int(n), str(h))
        return marks

    def run_ids_with(self, kind: str) -> list[str]:
        """Runs that have at least one entry of `kind` (e.g. outstanding compensations)."""
        with Session(self.engine) as session:
            query = select(LedgerEntry.run_id).where(LedgerEntry.kind == kind).distinct()
            return sorted(session.exec(query).all())

    def events(self, run_id: str, *, kind: str | None = None) -> list[dict[str, Any]]:
        """A run's authenticated entries as dicts (seq, kind, at, event_key and the data)."""
        return [
            {"seq": e.seq, "kind": e.kind, "at": e.at, "event_key": e.event_key, **json.loads(e.data)}
            for e in self.entries(run_id, kind=kind)
        ]

    def run_events(self, run_id: str) -> list[dict[str, Any]]:
        """`events(run_id)` for the gate's check of a run's state (activities/runstate.py), read
        incrementally: the rows this process already read and authenticated for the run are kept,
        and only the rows after each chain's last known one are fetched and checked (hash, row MAC,
        and that each links to the one before it). A new row that does not check out, or a first
        read that found a problem, falls back to `events` (the whole read, as before), and nothing
        is kept for the run until a read of it is clean.

        A row kept here was authentic when it was read; one deleted or edited in the database
        afterwards still counts here (the gate's state only ever gets stricter that way), and is
        what `lockgate verify`, the audit and every other read report."""
        chains = (run_id, run_id + AFTER_CLOSE)
        heads: dict[str, tuple[int, str]] = {}
        rows: list[tuple[int, dict[str, Any]]] = []
        with self._runs_lock:
            view = self._runs.get(run_id)
            if view is not None:
                self._runs.move_to_end(run_id)
                heads, rows = dict(view.heads), list(view.rows)
        if view is None:
            read = self.read(run_id)
            if read.problems:
                return [self._event(e) for e in read.entries]
            for e in read.entries:
                if e.chain_seq > heads.get(e.chain, (0, GENESIS))[0]:
                    heads[e.chain] = (e.chain_seq, e.hash)
                rows.append((e.seq or 0, self._event(e)))
        else:
            after = [
                and_(LedgerEntry.chain == c, LedgerEntry.chain_seq > heads.get(c, (0, GENESIS))[0])  # type: ignore[arg-type]
                for c in chains
            ]
            with Session(self.reader) as session:
                new = list(session.exec(select(LedgerEntry).where(or_(*after))).all())
            new.sort(key=lambda e: (e.chain, e.chain_seq))
            for e in new:
                n, h = heads.get(e.chain, (0, GENESIS))
                if e.chain_seq != n + 1 or e.prev_hash != h or self.row_problem(e) is not None:
                    with self._runs_lock:
                        self._runs.pop(run_id, None)
                    return self.events(run_id)  # the whole read: it refuses, reports and records
                heads[e.chain] = (e.chain_seq, e.hash)
                rows.append((e.seq or 0, self._event(e)))
            rows.sort(key=lambda r: r[0])
        with self._runs_lock:
            self._runs[run_id] = _RunView(heads=heads, rows=tuple(rows))
            self._runs.move_to_end(run_id)
            while len(self._runs) > RUN_VIEWS:
                self._runs.popitem(last=False)
        return [dict(d) for _, d in rows]

    @staticmethod
    def _event(e: LedgerEntry) -> dict[str, Any]:
        return {"seq": e.seq, "kind": e.kind, "at": e.at, "event_key": e.event_key, **json.loads(e.data)}

    def typed(self, run_id: str, model: type[E]) -> list[tuple[LedgerEntry, E]]:
        """A run's authenticated entries of `model`'s kinds, each with its typed data (entries
        whose data does not fit the model are refused and reported like unauthenticated rows)."""
        out: list[tuple[LedgerEntry, E]] = []
        bad = LedgerRead()
        for e in self.entries(run_id):
            if e.kind in model.kinds:
                try:
                    out.append((e, model.model_validate_json(e.data)))
                except ValueError as err:
                    bad.refuse(e, f"its data does not fit {model.__name__}: {err}")
        if bad.problems:
            self._report_unauthentic(bad)
        return out

    def check_workflow_event(self, event: Any, info: Any) -> None:
        """`audit.record`'s guard: a workflow records only facts about its own run, of the kinds a
        workflow witnesses (`events.WORKFLOW_KINDS`). A refusal changes nothing but is recorded on
        the calling workflow's own chain, and fails the activity for good.

        Args:
            event: The `AuditEvent` the workflow sent.
            info: The activity's `temporalio.activity.Info` (facts from Temporal's server).
        """
        try:
            events.check_workflow_event(event, str(info.workflow_id))
        except events.WorkflowEventRefused as err:
            from temporalio.exceptions import ApplicationError

            caller = str(info.workflow_id)
            self.try_append(
                f"audit.refused:{caller}:{hashlib.sha256(event.event_key.encode()).hexdigest()[:24]}",
                caller,
                "audit.refused",
                {"kind": event.kind, "run_id": event.run_id, "reason": str(err), "workflow_type": info.workflow_type},
            )
            raise ApplicationError(str(err), type=err.type, non_retryable=True) from None

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

    def dispose(self) -> None:
        self.engine.dispose()
        self.reader.dispose()
        if not self._sqlite:
            self._raw.close()


# A ledger connection whose server became unreachable without closing it (a network partition drops
# packets: nothing resets the connection) fails within seconds instead of hanging for TCP's
# retransmission timeout (minutes), holding the activity, the workflow task and the worker's drain:
# unacknowledged data for 10 s, or an idle connection unanswered for ~11 s, closes it (libpq ignores
# these for Unix sockets). tests/test_chaos_hosts.py cuts a host off from PostgreSQL.
_PG_LIVENESS: dict[str, Any] = {
    "connect_timeout": 5,
    "tcp_user_timeout": 10_000,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


class _RawPool:
    """A few plain psycopg connections in autocommit, shared by the threads of one process."""

    def __init__(self, conninfo: str, size: int = 16, *, prepare: bool = True) -> None:
        import queue

        self._conninfo = conninfo
        self._prepare_threshold = 0 if prepare else None
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
                conn = psycopg.connect(
                    self._conninfo, autocommit=True, prepare_threshold=self._prepare_threshold, **_PG_LIVENESS
                )
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


def _like(prefix: str) -> str:
    if any(c in prefix for c in "%_\\"):
        raise ValueError(f"not a plain chain prefix: {prefix!r}")
    return prefix + "%"


# The append in one statement: lock the run's head row, only if it is still the head this process
# last wrote (else nothing happens and the locked path takes over), insert the row (hash and MAC
# computed by the writer) and advance the head.
_PG_APPEND = """
WITH h AS (
    SELECT chain FROM ledger_heads
    WHERE chain = %(chain)s AND NOT closed AND size = %(size)s AND head = %(prev)s FOR UPDATE
), e AS (
    INSERT INTO ledger (event_key, run_id, chain, chain_seq, kind, at, data, prev_hash, hash, recorded_at, mac)
    SELECT %(event_key)s, %(run_id)s, h.chain, %(n)s, %(kind)s, %(at)s, %(data)s, %(prev)s, %(hash)s, %(rec)s,
        %(mac)s FROM h
    RETURNING chain, chain_seq, hash
)
UPDATE ledger_heads SET size = e.chain_seq, head = e.hash, dirty = true,
    closed = (ledger_heads.closed OR %(closing)s)
FROM e WHERE ledger_heads.chain = e.chain
RETURNING e.chain_seq
"""

_INSERT = text(
    "INSERT INTO ledger (event_key, run_id, chain, chain_seq, kind, at, data, prev_hash, hash, recorded_at, mac) "
    "VALUES (:event_key, :run_id, :chain, :n, :kind, :at, :data, :prev, :hash, :rec, :mac)"
)
_ADVANCE = text(
    "UPDATE ledger_heads SET size = :n, head = :hash, dirty = true, closed = (closed OR :closing) WHERE chain = :chain"
)
