"""The kill switch's durable state, shared by every worker through the ledger database.

Every gate reads it (a primary-key lookup), so a freeze takes effect at the next gate on every
worker without a restart, and survives worker and server restarts. Every change is also a ledger
entry, with who and why.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Field, Session, SQLModel, select

from lockgate.activities.ledger import GENESIS, Ledger, LedgerEntry
from lockgate.people import SignedStatement

__all__ = ["ALL", "Freeze", "FreezeStore"]

ALL = "*"
SCOPE_PREFIX = "scope:"  # a scope's freezes and unfreezes are the ledger chain "scope:<scope>"


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
        self._cache: tuple[float, dict[str, bool]] = (0.0, {})  # the table: a ledger migration

    def _scopes(self) -> dict[str, bool]:
        with self._lock:
            stamp, scopes = self._cache
            if time.monotonic() - stamp < self.CACHE_SECONDS:
                return scopes
        with Session(self._ledger.engine) as session:
            rows = list(session.exec(select(Freeze)).all())
        # The table is a fast index: it may add a freeze, never lift one. What lifts a freeze is a
        # verified unfreeze on the scope's chain in the ledger (deleting a table row changes nothing).
        scopes = {f.scope: True for f in rows if f.frozen}
        chains: dict[str, list[LedgerEntry]] = {}
        for e in self._ledger.entries_of_chains(SCOPE_PREFIX):
            chains.setdefault(e.chain, []).append(e)
        marks = self._ledger.chain_marks(SCOPE_PREFIX)
        for chain in {*chains, *marks}:
            scope = chain.removeprefix(SCOPE_PREFIX)
            # Verified outside the read: verifying may write to the ledger (archived keys, refusals).
            if self._chain_frozen(chains.get(chain, []), marks.get(chain, {})):
                scopes[scope] = True
        with self._lock:
            self._cache = (time.monotonic(), scopes)
        return scopes

    def _chain_frozen(self, rows: list[LedgerEntry], marks: dict[int, str]) -> bool:
        """Fail closed: frozen once any freeze, any row no worker wrote, or any gap is on the scope's
        chain, until a later unfreeze signed by an operator lifts it. The unfreeze must be newer
        than every row before it, and authentic (a worker's MAC) when the chain has a gap."""
        frozen = False
        gap = False
        latest = ""
        prev_n, prev_h = 0, GENESIS
        for e in sorted(rows, key=lambda r: r.chain_seq):
            if e.chain_seq != prev_n + 1 or e.prev_hash != prev_h or marks.get(e.chain_seq, e.hash) != e.hash:
                gap = frozen = True  # a row deleted, or rewritten after it was signed
            prev_n, prev_h = e.chain_seq, e.hash
            authentic = self._ledger.row_problem(e) is None
            if e.kind == "unfreeze" and (authentic or not gap) and self._lifts(e, latest):
                frozen = False
            elif e.kind == "unfreeze":
                frozen = frozen or not authentic
            elif e.kind == "freeze" or not authentic:
                frozen = True
            latest = max(latest, e.at)
        if max(marks, default=0) > prev_n:
            frozen = True  # rows the head and the signed checkpoints count are gone (deleted)
        return frozen

    def _lifts(self, e: LedgerEntry, after: str) -> bool:
        """Whether an unfreeze entry is an operator's signed unfreeze of its scope, signed after
        every entry before it (an old statement copied into a new row lifts nothing)."""
        data = json.loads(e.data)
        scope = str(data.get("scope", ""))
        if e.chain != SCOPE_PREFIX + scope:
            return False
        if self._verify is None:
            return True
        evidence = str(data.get("evidence", ""))
        key = (scope, e.hash, evidence)
        if key not in self._verified:
            row = Freeze(scope=scope, frozen=False, by=str(data.get("by", "")), reason="", at=e.at, evidence=evidence)
            ok = self._verify(row)
            if ok:
                signed_at = SignedStatement.model_validate_json(evidence).statement.at.isoformat()
                ok = signed_at > after
            self._verified[key] = ok
            if not ok:
                self._ledger.try_append(
                    f"unfreeze.refused:{scope}:{e.hash[:32]}",
                    f"scope:{scope}",
                    "unfreeze.refused",
                    {
                        "scope": scope,
                        "by": row.by,
                        "reason": "the unfreeze is not signed by an operator after the freeze",
                    },
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
            f"{kind}:{scope}:{now}",
            SCOPE_PREFIX + scope,
            kind,
            {"scope": scope, "by": by, "reason": reason, "evidence": evidence},
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
