"""Team bundles as a supply chain, kept in the ledger: published, signed, switched, shadowed.

Everything lives on the ledger chain `policy:<team>` (hash-chained, checkpointed): a publication
(the bundle's files, its hash, who, a diff summary), each owner's signature of it, each switch
(promote or rollback to a hash at sequence number N) and each shadow candidate. People write these
rows from the CLI: a row's authority is never the row, only the owners' Transit signatures in it,
which every worker verifies (`PolicyStore.in_force`). Someone with write access to the database can
add rows, but not signatures: a switch without a quorum of owners' signatures of exactly (team, N,
hash) switches nothing, and each worker records what it refused (`policy.refused`, MAC'd).

Workers report what they loaded on `worker:<id>` (`policy.loaded`), shadow decisions go to
`shadow:<team>` (`shadow.decision`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from lockgate.activities.ledger import GENESIS, Ledger, LedgerEntry
from lockgate.gates.bundles import owners_group
from lockgate.people import Act, SignedStatement

__all__ = ["POLICY_CHAIN", "InForce", "PolicyStore", "Refusal"]

log = logging.getLogger("lockgate.policystore")

POLICY_CHAIN = "policy:"
WORKER_CHAIN = "worker:"
SHADOW_CHAIN = "shadow:"
# A signature of a bundle or a switch does not expire: the bundle is what was reviewed.
_FOREVER = timedelta(days=36500)


class Refusal(Exception):
    """Why a team's bundle in force cannot be established or used."""


@dataclass(frozen=True)
class InForce:
    """The team's bundle in force, as established from owners' signatures.

    Attributes:
        team: The team.
        seq: The switch's sequence number (1, 2, ...).
        hash: The bundle hash in force.
        kind: `promote` or `rollback`.
        signers: The owners whose signatures made the switch.
        files: The bundle's files, as published.
    """

    team: str
    seq: int
    hash: str
    kind: str
    signers: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)


def _data(e: LedgerEntry) -> dict[str, Any]:
    try:
        value = json.loads(e.data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class PolicyStore:
    """The policy chain of each team, read and written through the ledger.

    Args:
        ledger: The ledger (workers: with their row key; the CLI: without).
        verify: A person's signed statement -> (person, groups), raising on anything wrong
            (workers pass `PeopleDirectory`-backed `people_verifier`). Without it nothing verifies.
        quorum: How many distinct owners must sign a bundle and a switch.
    """

    def __init__(
        self,
        ledger: Ledger,
        verify: Callable[[SignedStatement, Act, dict[str, Any]], tuple[str, tuple[str, ...]]] | None = None,
        quorum: int = 2,
        *,
        claimed: bool = False,
    ) -> None:
        self._ledger = ledger
        self._verify = verify
        # Display only (the CLI, which has no worker's view of people): take each row's `by` at
        # its word. Workers never do: they pass `verify`.
        self._claimed = claimed and verify is None
        self.quorum = max(1, quorum)
        self._checked: dict[tuple[str, str], str | None] = {}  # (entry hash, evidence) -> signer or None
        self._lock = threading.Lock()

    # -- writes (people, through the CLI) -----------------------------------------------------------
    def _append(self, team: str, kind: str, key: str, data: dict[str, Any]) -> None:
        self._ledger.append(f"{kind}:{team}:{key}", POLICY_CHAIN + team, kind, data)

    def publish(self, artifact: dict[str, Any], signed: SignedStatement, diff: dict[str, Any]) -> None:
        """Records a publication: the files, their hash, who published, what changed; the
        publisher's signature counts as the first owner's."""
        team = str(artifact["team"])
        self._append(
            team,
            "policy.published",
            f"{artifact['hash']}:{signed.digest()[:16]}",
            {
                "team": team,
                "hash": artifact["hash"],
                "namespace": artifact["namespace"],
                "files": artifact["files"],
                "by": signed.statement.person,
                "diff": diff,
                "evidence": signed.model_dump_json(),
            },
        )

    def sign(self, team: str, bundle_hash: str, signed: SignedStatement) -> None:
        self._append(
            team,
            "policy.signed",
            f"{bundle_hash}:{signed.digest()[:16]}",
            {"team": team, "hash": bundle_hash, "by": signed.statement.person, "evidence": signed.model_dump_json()},
        )

    def switch(self, team: str, seq: int, bundle_hash: str, kind: str, signed: SignedStatement) -> None:
        self._append(
            team,
            "policy.switch",
            f"{seq}:{signed.digest()[:16]}",
            {
                "team": team,
                "seq": seq,
                "hash": bundle_hash,
                "kind": kind,
                "by": signed.statement.person,
                "evidence": signed.model_dump_json(),
            },
        )

    def shadow(self, team: str, bundle_hash: str, signed: SignedStatement) -> None:
        """A candidate to decide beside the live bundle (`bundle_hash` "" stops shadowing)."""
        self._append(
            team,
            "policy.shadow",
            signed.digest()[:16],
            {"team": team, "hash": bundle_hash, "by": signed.statement.person, "evidence": signed.model_dump_json()},
        )

    # -- reads ------------------------------------------------------------------------------------
    def entries(self, team: str | None = None) -> list[LedgerEntry]:
        prefix = POLICY_CHAIN + (team or "")
        rows = self._ledger.entries_of_chains(prefix)
        return [e for e in rows if team is None or e.chain == prefix]

    def heads(self) -> tuple[tuple[str, int, str], ...]:
        """Each policy chain's (name, size, head hash): one small read that changes whenever a row
        is appended (workers re-read the chains only then)."""
        from sqlalchemy import text

        with self._ledger.reader.connect() as conn:
            rows = conn.execute(
                text("SELECT chain, size, head FROM ledger_heads WHERE chain LIKE :p ORDER BY chain"),
                {"p": POLICY_CHAIN + "%"},
            )
            return tuple((str(c), int(n), str(h)) for c, n, h in rows)

    def teams(self) -> list[str]:
        return sorted({e.chain.removeprefix(POLICY_CHAIN) for e in self.entries()})

    def publications(self, team: str) -> dict[str, dict[str, Any]]:
        """hash -> the first publication of it (files, by, diff)."""
        out: dict[str, dict[str, Any]] = {}
        for e in self.entries(team):
            if e.kind == "policy.published":
                d = _data(e)
                out.setdefault(str(d.get("hash")), {**d, "at": e.at})
        return out

    def switches(self, team: str) -> list[dict[str, Any]]:
        return [{**_data(e), "at": e.at} for e in self.entries(team) if e.kind == "policy.switch"]

    def _signer(self, e: LedgerEntry, act: Act, expect: dict[str, Any], team: str) -> str | None:
        """The owner who signed this row's evidence for exactly `expect`, else None (recorded)."""
        evidence = str(_data(e).get("evidence", ""))
        key = (e.hash, json.dumps(expect, sort_keys=True))
        with self._lock:
            if key in self._checked:
                return self._checked[key]
        signer: str | None = None
        why = ""
        if self._claimed:
            return str(_data(e).get("by") or "") or None
        if self._verify is None:
            why = "no verifier"
        else:
            try:
                signed = SignedStatement.model_validate_json(evidence)
                person, groups = self._verify(signed, act, expect)
                if owners_group(team) in groups:
                    signer = person
                else:
                    why = f"{person} is not in {owners_group(team)}"
            except Exception as err:  # noqa: BLE001 - any problem with the evidence: it counts for nothing
                why = str(err) or type(err).__name__
        with self._lock:
            self._checked[key] = signer
        if signer is None and self._verify is not None:
            self.refuse(team, e.hash, f"{e.kind} by {_data(e).get('by')!r} does not count: {why}")
        return signer

    def signers(self, team: str, bundle_hash: str) -> list[str]:
        """The distinct owners whose verified signatures the bundle carries."""
        out: set[str] = set()
        for e in self.entries(team):
            if e.kind in ("policy.published", "policy.signed") and _data(e).get("hash") == bundle_hash:
                who = self._signer(e, "policy-sign", {"team": team, "hash": bundle_hash}, team)
                if who:
                    out.add(who)
        return sorted(out)

    def files(self, team: str, bundle_hash: str) -> dict[str, str] | None:
        pub = self.publications(team).get(bundle_hash)
        files = pub.get("files") if pub else None
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else None

    def in_force(self, team: str) -> InForce | None:
        """The bundle in force for `team`: the highest-numbered switch a quorum of owners signed
        for exactly (team, seq, hash), of a bundle a quorum of owners signed. None if none.

        Raises:
            Refusal: a switch has quorum but its bundle does not (recorded).
        """
        entries = self.entries(team)
        gap = self._gap(team, entries)
        if gap is not None:
            raise Refusal(f"team {team}'s policy chain {gap}: its rows were deleted or rewritten in the database")
        by: dict[tuple[int, str, str], set[str]] = {}
        for e in entries:
            if e.kind != "policy.switch":
                continue
            d = _data(e)
            try:
                seq, bundle_hash, kind = int(d["seq"]), str(d["hash"]), str(d["kind"])
            except (KeyError, TypeError, ValueError):
                continue
            expect = {"team": team, "seq": seq, "hash": bundle_hash, "kind": kind}
            who = self._signer(e, "policy-switch", expect, team)
            if who:
                by.setdefault((seq, bundle_hash, kind), set()).add(who)
        made = sorted((k for k, people in by.items() if len(people) >= self.quorum), reverse=True)
        if not made:
            return None
        seq, bundle_hash, kind = made[0]
        signed = self.signers(team, bundle_hash)
        if len(signed) < self.quorum:
            raise Refusal(
                f"bundle {bundle_hash[:12]} is switched in but signed by {len(signed)} of {self.quorum} owners"
            )
        files = self.files(team, bundle_hash)
        if files is None:
            raise Refusal(f"bundle {bundle_hash[:12]} is switched in but was never published")
        return InForce(team, seq, bundle_hash, kind, tuple(sorted(by[made[0]])), files)

    def _gap(self, team: str, rows: list[LedgerEntry]) -> str | None:
        """Where the team's chain no longer holds what its head and the signed checkpoints count
        (a newer switch deleted to bring back an older signed one, a row rewritten), or None."""
        chain = POLICY_CHAIN + team
        marks = self._ledger.chain_marks(chain).get(chain, {})
        prev_n, prev_h = 0, GENESIS
        for e in rows:
            if e.chain_seq != prev_n + 1 or e.prev_hash != prev_h or marks.get(e.chain_seq, e.hash) != e.hash:
                return f"breaks at row {e.chain_seq}"
            prev_n, prev_h = e.chain_seq, e.hash
        if max(marks, default=0) > prev_n:
            return f"ends at row {prev_n} where {max(marks)} were counted"
        return None

    def shadow_of(self, team: str) -> tuple[str, dict[str, str]] | None:
        """The team's shadow candidate (hash, files), set by a verified owner; None if none."""
        latest: tuple[str, str] | None = None
        for e in self.entries(team):
            if e.kind != "policy.shadow":
                continue
            d = _data(e)
            bundle_hash = str(d.get("hash", ""))
            if self._signer(e, "policy-shadow", {"team": team, "hash": bundle_hash}, team):
                latest = (bundle_hash, e.at)
        if latest is None or not latest[0]:
            return None
        files = self.files(team, latest[0])
        return (latest[0], files) if files is not None else None

    # -- what workers write (MAC'd rows) -----------------------------------------------------------
    def refuse(self, team: str, about: str, reason: str) -> None:
        log.error("POLICY REFUSED (team %s): %s", team, reason)
        self._ledger.try_append(
            f"policy.refused:{team}:{about}:{hashlib.sha256(reason.encode()).hexdigest()[:16]}",
            POLICY_CHAIN + team,
            "policy.refused",
            {"team": team, "about": about, "reason": reason[:500]},
        )

    def loaded(self, worker: str, bundles: dict[str, str], problems: dict[str, str], at: str) -> None:
        """A worker's heartbeat: which bundle (hash) it decides each team's agents with."""
        self._ledger.try_append(
            f"policy.loaded:{worker}:{at}",
            WORKER_CHAIN + worker,
            "policy.loaded",
            {"worker": worker, "bundles": bundles, "problems": problems},
        )

    def heartbeats(self) -> dict[str, dict[str, Any]]:
        """worker -> its latest heartbeat (authentic rows only), with `at`."""
        out: dict[str, dict[str, Any]] = {}
        for e in self._ledger.entries_of_chains(WORKER_CHAIN):
            if e.kind == "policy.loaded" and self._ledger.row_problem(e) is None:
                out[e.chain.removeprefix(WORKER_CHAIN)] = {**_data(e), "at": e.at}
        return out

    def record_shadow(self, team: str, data: dict[str, Any]) -> None:
        self._ledger.try_append(
            f"shadow.decision:{data['decision_id']}:{data['shadow_hash'][:16]}",
            SHADOW_CHAIN + team,
            "shadow.decision",
            data,
        )

    def shadow_decisions(self, team: str | None = None) -> list[dict[str, Any]]:
        rows = self._ledger.entries_of_chains(SHADOW_CHAIN + (team or ""))
        return [
            {**_data(e), "at": e.at, "authentic": self._ledger.row_problem(e) is None}
            for e in rows
            if e.kind == "shadow.decision"
        ]


def people_verifier(people: Any) -> Callable[[SignedStatement, Act, dict[str, Any]], tuple[str, tuple[str, ...]]]:
    """`PeopleDirectory.verify` for the policy chain: the statement binds exactly `expect`."""

    def verify(signed: SignedStatement, act: Act, expect: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
        verified = people.verify(signed, act=act, expect=expect, max_age=_FOREVER)
        if set(signed.statement.fields) != set(expect):
            raise ValueError("the statement binds other fields than a policy act does")
        return verified.person, verified.groups

    return verify
