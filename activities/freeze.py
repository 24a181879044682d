"""The kill switch's durable state, shared by every worker through the ledger database.

Every gate reads it (a primary-key lookup), so a freeze takes effect at the next gate on every
worker without a restart, and survives worker and server restarts. Every change is also a ledger
entry, with who and why.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from lockgate.activities.ledger import Ledger
from sqlmodel import Field, Session, SQLModel, select

__all__ = ["ALL", "Freeze", "FreezeStore"]

ALL = "*"


class Freeze(SQLModel, table=True):
    __tablename__ = "freezes"

    scope: str = Field(primary_key=True)  # an agent name, or "*" for every agent
    frozen: bool
    by: str
    reason: str
    at: str


class FreezeStore:
    # A gate tolerates a freeze being this stale; 0.5 s keeps a hot path at one read per half second.
    CACHE_SECONDS = 0.5

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, bool]] = (0.0, {})
        SQLModel.metadata.create_all(ledger.engine, tables=[Freeze.__table__])

    def _scopes(self) -> dict[str, bool]:
        with self._lock:
            stamp, scopes = self._cache
            if time.monotonic() - stamp < self.CACHE_SECONDS:
                return scopes
        with Session(self._ledger.engine) as session:
            scopes = {f.scope: f.frozen for f in session.exec(select(Freeze)).all()}
        with self._lock:
            self._cache = (time.monotonic(), scopes)
        return scopes

    def is_frozen(self, agent: str) -> bool:
        scopes = self._scopes()
        return scopes.get(ALL, False) or scopes.get(agent, False)

    def set(self, scope: str, frozen: bool, *, by: str, reason: str) -> None:
        now = datetime.now(UTC).isoformat()
        with Session(self._ledger.engine) as session, session.begin():
            row = session.get(Freeze, scope)
            if row is None:
                session.add(Freeze(scope=scope, frozen=frozen, by=by, reason=reason, at=now))
            else:
                row.frozen, row.by, row.reason, row.at = frozen, by, reason, now
        with self._lock:
            self._cache = (0.0, {})
        kind = "freeze" if frozen else "unfreeze"
        self._ledger.append(
            f"{kind}:{scope}:{now}", f"scope:{scope}", kind, {"scope": scope, "by": by, "reason": reason}
        )

    def state(self) -> list[Freeze]:
        with Session(self._ledger.engine) as session:
            return list(session.exec(select(Freeze)).all())
