"""The kill switch's durable state, shared by every worker through the ledger database.

Every gate reads it (a primary-key lookup), so a freeze takes effect at the next gate on every
worker without a restart, and survives worker and server restarts. Every change is also a ledger
entry, with who and why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Field, Session, SQLModel, select

from lockgate.activities.ledger import Ledger

__all__ = ["ALL", "Freeze", "FreezeStore"]

ALL = "*"


class Freeze(SQLModel, table=True):
    __tablename__ = "freezes"  # pyright: ignore[reportAssignmentType]  # sqlmodel types it as declared_attr

    scope: str = Field(primary_key=True)  # an agent name, or "*" for every agent
    frozen: bool
    by: str
    reason: str
    at: str
    # The operator's signed freeze/unfreeze statement (JSON): an unfreeze counts only if it verifies.
    evidence: str = ""


class FreezeStore:
    # A gate tolerates a freeze being this stale; 0.5 s keeps a hot path at one read per half second.
    CACHE_SECONDS = 0.5

    def __init__(self, ledger: Ledger, verify: Callable[[Freeze], bool] | None = None) -> None:
        self._ledger = ledger
        # Workers pass a verifier: an unfreeze whose evidence does not verify (a row written by
        # anyone with database access) keeps the scope frozen. Fail closed.
        self._verify = verify
        self._verified: dict[tuple[str, str, str], bool] = {}
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, bool]] = (0.0, {})
        SQLModel.metadata.create_all(ledger.engine, tables=[SQLModel.metadata.tables["freezes"]])

    def _scopes(self) -> dict[str, bool]:
        with self._lock:
            stamp, scopes = self._cache
            if time.monotonic() - stamp < self.CACHE_SECONDS:
                return scopes
        with Session(self._ledger.engine) as session:
            rows = list(session.exec(select(Freeze)).all())
        # Verified outside the read: verifying may write to the ledger (archived keys, refusals).
        scopes = {f.scope: f.frozen or not self._counts(f) for f in rows}
        with self._lock:
            self._cache = (time.monotonic(), scopes)
        return scopes

    def _counts(self, row: Freeze) -> bool:
        """Whether an unfreeze row may lift its freeze (verified once per row)."""
        if self._verify is None:
            return True
        key = (row.scope, row.at, row.evidence)
        if key not in self._verified:
            self._verified[key] = self._verify(row)
            if not self._verified[key]:
                self._ledger.try_append(
                    f"unfreeze.refused:{row.scope}:{row.at}",
                    f"scope:{row.scope}",
                    "unfreeze.refused",
                    {"scope": row.scope, "by": row.by, "reason": "the unfreeze is not signed by an operator"},
                )
        return self._verified[key]

    def is_frozen(self, agent: str) -> bool:
        scopes = self._scopes()
        return scopes.get(ALL, False) or scopes.get(agent, False)

    def set(self, scope: str, frozen: bool, *, by: str, reason: str, evidence: str = "") -> None:
        now = datetime.now(UTC).isoformat()
        with Session(self._ledger.engine) as session, session.begin():
            row = session.get(Freeze, scope)
            if row is None:
                session.add(Freeze(scope=scope, frozen=frozen, by=by, reason=reason, at=now, evidence=evidence))
            else:
                row.frozen, row.by, row.reason, row.at, row.evidence = frozen, by, reason, now, evidence
        with self._lock:
            self._cache = (0.0, {})
        kind = "freeze" if frozen else "unfreeze"
        self._ledger.append(
            f"{kind}:{scope}:{now}", f"scope:{scope}", kind, {"scope": scope, "by": by, "reason": reason}
        )

    def state(self) -> list[Freeze]:
        with Session(self._ledger.engine) as session:
            return list(session.exec(select(Freeze)).all())


def unfreeze_verifier(people: Any) -> Callable[[Freeze], bool]:
    """Checks an unfreeze row's evidence: signed by a member of `operators` for exactly that scope."""
    from lockgate.activities.identity import Refused
    from lockgate.people import SignedStatement

    def verify(row: Freeze) -> bool:
        try:
            signed = SignedStatement.model_validate_json(row.evidence)
            act = people.verify(signed, act="unfreeze", expect={"scope": row.scope}, max_age=timedelta(days=3650))
        except (ValueError, Refused):
            return False
        return "operators" in act.groups

    return verify
