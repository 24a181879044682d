"""The inbox's state, shared by every replica in the ledger's database: sessions, OIDC sign-ins under
way, which notifications went out, and sign-in failure counts. Replicas behind one load balancer
read and write the same rows, so they behave as one inbox, and a restart signs nobody out.

Sessions: the browser's cookie carries a random secret; a row holds only the secret's SHA-256, the
person it was issued to, the Vault token's expiry, and the person's Vault token sealed (AES-GCM)
under a key derived from the secret, with the row's other fields as associated data. Someone who
can write the table but holds no cookie cannot make a session for anyone: a row is found and opened
only with the secret; a sealed token copied under another hash or with another person or expiry does
not open; and the token that opens is asked of Vault (lookup-self) whose it is, which must be the
row's person (so sealing one's own token under someone else's name gets nothing).

Notifications are claimed before they are sent (one row per request and event, inserted by exactly
one replica): each goes out at most once, whatever the number of replicas.

The tables (`inbox_*`) are created on first use; they hold no evidence (the ledger's tables do).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    exists,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from lockgate.files import private_dir

__all__ = ["InboxState", "SessionRow", "SqlNotificationStore", "SqlThrottleStore", "session_hash"]

_META = MetaData()
SESSIONS = Table(
    "inbox_sessions",
    _META,
    Column("sid_hash", String(64), primary_key=True),
    Column("person", String(255), nullable=False),
    Column("entity_id", String(255), nullable=False),
    Column("method", String(32), nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("sealed", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)
OIDC = Table(
    "inbox_oidc",
    _META,
    Column("state", String(255), primary_key=True),
    Column("binding_hash", String(64), nullable=False),
    Column("nonce", String(255), nullable=False),
    Column("next", Text, nullable=False),
    Column("started", Float, nullable=False),
)
NOTIFICATIONS = Table(
    "inbox_notifications",
    _META,
    Column("run_id", String(255), primary_key=True),
    Column("request_id", String(255), primary_key=True),
    # "opened", or "ended" (closed or expired: one announcement either way).
    Column("event", String(16), primary_key=True),
    Column("status", String(16), nullable=False),  # skipped, sending, delivered, failed
    Column("replica", String(64), nullable=False),
    Column("at", Float, nullable=False),
    # The request's public fields (for the "ended" announcement), the delivery's outcome.
    Column("request", Text, nullable=False),
    Column("detail", Text, nullable=False),
)
THROTTLE = Table(
    "inbox_throttle",
    _META,
    Column("key", String(512), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("last", Float, nullable=False),
)

_INFO = b"lockgate inbox session v1"
# What an "ended" announcement needs of a request another replica saw open: nothing an agent or
# tool supplied beyond names (payload data stays in Temporal, encrypted when configured).
_PUBLIC = ("run_id", "request_id", "agent", "step", "tool", "group", "quorum", "expires_at")


def session_hash(secret: str) -> str:
    """What a session row is keyed by: the SHA-256 of the cookie's secret (256 random bits)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(secret: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret.encode())


def _aad(sid_hash: str, person: str, entity_id: str, method: str, expires_at: float | None) -> bytes:
    return json.dumps([sid_hash, person, entity_id, method, expires_at], separators=(",", ":")).encode()


@dataclass(frozen=True)
class SessionRow:
    """A session as stored (the token still sealed)."""

    sid_hash: str
    person: str
    entity_id: str
    method: str
    expires_at: float | None
    sealed: str

    def open(self, secret: str) -> str | None:
        """The Vault token, when `secret` is the cookie this row was made for and the row is as it
        was written; else None."""
        if session_hash(secret) != self.sid_hash:
            return None
        try:
            raw = base64.b64decode(self.sealed, validate=True)
            aad = _aad(self.sid_hash, self.person, self.entity_id, self.method, self.expires_at)
            return AESGCM(_key(secret)).decrypt(raw[:12], raw[12:], aad).decode()
        except (InvalidTag, ValueError):
            return None


def seal_session(
    secret: str, token: str, *, person: str, entity_id: str, method: str, expires_at: float | None
) -> SessionRow:
    sid_hash = session_hash(secret)
    nonce = os.urandom(12)
    sealed = AESGCM(_key(secret)).encrypt(nonce, token.encode(), _aad(sid_hash, person, entity_id, method, expires_at))
    return SessionRow(
        sid_hash=sid_hash,
        person=person,
        entity_id=entity_id,
        method=method,
        expires_at=expires_at,
        sealed=base64.b64encode(nonce + sealed).decode(),
    )


class InboxState:
    """The shared tables, on their own small connection pool (README "Connections": 2 + 2).

    Args:
        url: the ledger's SQLAlchemy URL (PostgreSQL for several replicas; SQLite for one host).
        pgbouncer: no server-side prepared statements (a transaction-mode PgBouncer in front).
    """

    POOL_SIZE = 2
    POOL_OVERFLOW = 2

    def __init__(self, url: str, *, pgbouncer: bool = False) -> None:
        self.url = url
        self.replica = f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"[:64]
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:" and not path.startswith("file:") and not Path(path).parent.exists():
                private_dir(Path(path).parent)
            self.engine: Engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        else:
            self.engine = create_engine(
                url,
                pool_pre_ping=True,
                pool_size=self.POOL_SIZE,
                max_overflow=self.POOL_OVERFLOW,
                connect_args={"prepare_threshold": None} if pgbouncer else {},
            )
        self._created = False
        self._lock = threading.Lock()

    def ready(self) -> Engine:
        if not self._created:
            with self._lock:
                if not self._created:
                    for attempt in range(3):
                        try:
                            _META.create_all(self.engine, checkfirst=True)
                            break
                        except (IntegrityError, ProgrammingError, OperationalError):
                            if attempt == 2:  # two replicas creating at once: the loser looks again
                                raise
                            time.sleep(0.2)
                    self._created = True
        return self.engine

    def dispose(self) -> None:
        self.engine.dispose()

    # -- sessions ------------------------------------------------------------------------------
    def put_session(self, row: SessionRow) -> None:
        with self.ready().begin() as conn:
            conn.execute(
                SESSIONS.insert().values(
                    sid_hash=row.sid_hash,
                    person=row.person,
                    entity_id=row.entity_id,
                    method=row.method,
                    expires_at=row.expires_at,
                    sealed=row.sealed,
                    created_at=time.time(),
                )
            )
            # Rows whose Vault token has expired sign nobody in: forget them.
            conn.execute(delete(SESSIONS).where(SESSIONS.c.expires_at < time.time() - 60))

    def session(self, sid_hash: str) -> SessionRow | None:
        with self.ready().connect() as conn:
            r = conn.execute(select(SESSIONS).where(SESSIONS.c.sid_hash == sid_hash)).first()
        if r is None:
            return None
        return SessionRow(
            sid_hash=r.sid_hash,
            person=r.person,
            entity_id=r.entity_id,
            method=r.method,
            expires_at=r.expires_at,
            sealed=r.sealed,
        )

    def drop_session(self, sid_hash: str) -> None:
        with self.ready().begin() as conn:
            conn.execute(delete(SESSIONS).where(SESSIONS.c.sid_hash == sid_hash))

    # -- OIDC sign-ins under way ---------------------------------------------------------------
    def put_oidc(self, state: str, binding: str, nonce: str, nxt: str) -> None:
        with self.ready().begin() as conn:
            conn.execute(
                OIDC.insert().values(
                    state=state, binding_hash=session_hash(binding), nonce=nonce, next=nxt, started=time.time()
                )
            )
            conn.execute(delete(OIDC).where(OIDC.c.started < time.time() - 3600))

    def oidc(self, state: str) -> tuple[str, str, str, float] | None:
        """(binding hash, nonce, next page, started) of the sign-in `state`, if under way."""
        with self.ready().connect() as conn:
            r = conn.execute(select(OIDC).where(OIDC.c.state == state)).first()
        return None if r is None else (r.binding_hash, r.nonce, r.next, r.started)

    def take_oidc(self, state: str) -> bool:
        """Ends the sign-in `state`; True for exactly one caller (one callback per sign-in)."""
        with self.ready().begin() as conn:
            return conn.execute(delete(OIDC).where(OIDC.c.state == state)).rowcount == 1

    # -- notifications -------------------------------------------------------------------------
    def claim(self, run_id: str, request_id: str, event: str, status: str, request: dict[str, Any]) -> bool:
        """Records that this replica announces (or, `skipped`, does not) `event` of a request: True
        when it is the first to, False when another replica (or an earlier run) already did."""
        public = {k: request[k] for k in _PUBLIC if k in request}
        try:
            with self.ready().begin() as conn:
                conn.execute(
                    NOTIFICATIONS.insert().values(
                        run_id=run_id,
                        request_id=request_id,
                        event=event,
                        status=status,
                        replica=self.replica,
                        at=time.time(),
                        request=json.dumps(public, default=str),
                        detail="",
                    )
                )
        except IntegrityError:
            return False
        return True

    def finish(self, run_id: str, request_id: str, event: str, status: str, detail: str) -> None:
        with self.ready().begin() as conn:
            conn.execute(
                NOTIFICATIONS.update()
                .where(
                    NOTIFICATIONS.c.run_id == run_id,
                    NOTIFICATIONS.c.request_id == request_id,
                    NOTIFICATIONS.c.event == event,
                )
                .values(status=status, detail=detail[:2000], at=time.time())
            )

    def announced_open(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Requests whose opening was recorded and whose end was not: what a replica starting now
        must still announce the end of."""
        ended = NOTIFICATIONS.alias("ended")
        query = select(NOTIFICATIONS.c.run_id, NOTIFICATIONS.c.request_id, NOTIFICATIONS.c.request).where(
            NOTIFICATIONS.c.event == "opened",
            NOTIFICATIONS.c.at > time.time() - 30 * 86400,
            ~exists().where(
                ended.c.run_id == NOTIFICATIONS.c.run_id,
                ended.c.request_id == NOTIFICATIONS.c.request_id,
                ended.c.event == "ended",
            ),
        )
        with self.ready().connect() as conn:
            return {(r.run_id, r.request_id): json.loads(r.request) for r in conn.execute(query)}

    def any_notification(self) -> bool:
        with self.ready().connect() as conn:
            return conn.execute(select(NOTIFICATIONS.c.run_id).limit(1)).first() is not None

    def failed_details(self, limit: int) -> list[str]:
        query = (
            select(NOTIFICATIONS.c.detail)
            .where(NOTIFICATIONS.c.status == "failed")
            .order_by(NOTIFICATIONS.c.at.desc())
            .limit(limit)
        )
        with self.ready().connect() as conn:
            return [r.detail for r in conn.execute(query)]

    def notifications(self, run_id: str) -> list[dict[str, Any]]:
        with self.ready().connect() as conn:
            rows = conn.execute(select(NOTIFICATIONS).where(NOTIFICATIONS.c.run_id == run_id)).mappings()
            return [dict(r) for r in rows]


class SqlNotificationStore:
    """The notifier's memory of what was announced, in `InboxState` (shared by replicas)."""

    shared = True

    def __init__(self, state: InboxState) -> None:
        self.state = state

    def claim(self, key: tuple[str, str], event: str, status: str, request: dict[str, Any]) -> bool:
        return self.state.claim(key[0], key[1], event, status, request)

    def finish(self, key: tuple[str, str], event: str, status: str, detail: str) -> None:
        self.state.finish(key[0], key[1], event, status, detail)

    def announced_open(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self.state.announced_open()

    def any(self) -> bool:
        return self.state.any_notification()

    def failed(self, limit: int) -> list[Any]:
        from datetime import datetime

        from lockgate.inbox.notify import DeliveryFailure

        out = []
        for detail in self.state.failed_details(limit):
            try:
                for f in json.loads(detail):
                    out.append(DeliveryFailure(**{**f, "at": datetime.fromisoformat(f["at"])}))
            except (ValueError, TypeError, KeyError):
                continue  # an unreadable detail (written by hand): nothing to show
        return out


# One statement per attempt: counted unless the key is at its limit within the window (a row per
# key, so concurrent attempts on any replica serialize on it and none slips past the limit).
_HIT = text(
    """
INSERT INTO inbox_throttle (key, count, last) VALUES (:key, 1, :now)
ON CONFLICT (key) DO UPDATE SET
    count = CASE WHEN :now - inbox_throttle.last >= :window THEN 1 ELSE inbox_throttle.count + 1 END,
    last = :now
WHERE inbox_throttle.count < :limit OR :now - inbox_throttle.last >= :window
RETURNING count
"""
)


class SqlThrottleStore:
    """`ThrottleStore` in `InboxState`: failure counts shared by every replica. Its clock must be
    wall-clock time (`time.time`): replicas compare each other's timestamps."""

    def __init__(self, state: InboxState) -> None:
        self.state = state

    def hit(self, key: str, limit: int, window: float, now: float) -> float | None:
        with self.state.ready().begin() as conn:
            counted = conn.execute(_HIT, {"key": key, "now": now, "window": window, "limit": limit}).first()
            if counted is not None:
                return None
            last = conn.execute(select(THROTTLE.c.last).where(THROTTLE.c.key == key)).scalar_one()
        return float(last) + window - now

    def undo(self, key: str) -> None:
        with self.state.ready().begin() as conn:
            conn.execute(THROTTLE.update().where(THROTTLE.c.key == key).values(count=THROTTLE.c.count - 1))
            conn.execute(delete(THROTTLE).where(THROTTLE.c.key == key, THROTTLE.c.count <= 0))

    def clear(self, key: str) -> None:
        with self.state.ready().begin() as conn:
            conn.execute(delete(THROTTLE).where(THROTTLE.c.key == key))

    def count(self, key: str) -> int:
        with self.state.ready().connect() as conn:
            return int(conn.execute(select(THROTTLE.c.count).where(THROTTLE.c.key == key)).scalar() or 0)
