"""Someone with write access to the ledger's database (an insider, a leaked DSN) inserts, edits and
deletes rows: key, compensation, freeze and decision rows. Nothing acts on them, the checkpointer
signs none of them, `lockgate verify` exits 1 naming each, and the attempt is recorded.

Rows are forged the way a capable attacker would: with a correct entry hash and the chain's head row
moved on, so that only the row MAC (a key derived from Vault that only workers hold) tells them apart.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from psycopg import sql
from sqlalchemy import text
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from lockgate.activities.anchor import TransitAnchor
from lockgate.activities.freeze import FreezeStore, unfreeze_verifier
from lockgate.activities.identity import LedgerKeyArchive, PeopleDirectory, Refused
from lockgate.activities.ledger import LEDGER_RUN_ID, UNAUTHENTIC_KIND, Ledger
from lockgate.activities.ledger.rowkey import VaultRowKeys
from lockgate.audit import timeline
from lockgate.config import Settings
from lockgate.evidence import AFTER_CLOSE, GENESIS, entry_hash
from lockgate.identity import sign
from lockgate.models import canonical_json
from lockgate.people import ApproverKey, SignedStatement, Statement
from tests.support.stack import Outside, cli, finish, person, start, status_of

_ALLOW_DUPLICATE = WorkflowIDReusePolicy.ALLOW_DUPLICATE


@dataclass
class Forged:
    """What the attacker wrote, so the test can put the database back as it was."""

    chain: str
    event_key: str
    created_head: bool
    old_head: tuple[int, str]


def forge(ledger: Ledger, chain: str, run_id: str, kind: str, data: dict[str, Any], event_key: str = "") -> Forged:
    """Appends a row directly in the database, as lockgate would, except for the MAC it cannot make."""
    event_key = event_key or f"{kind}:{run_id}:forged-{uuid.uuid4().hex[:8]}"
    with ledger.engine.begin() as conn:
        head = conn.execute(text("SELECT size, head FROM ledger_heads WHERE chain = :c"), {"c": chain}).first()
        size, prev = (int(head[0]), str(head[1])) if head else (0, GENESIS)
        at = datetime.now(UTC).isoformat()
        body = canonical_json(data)
        digest = entry_hash(prev, chain, size + 1, event_key, run_id, kind, at, body)
        conn.execute(
            text(
                "INSERT INTO ledger (event_key, run_id, chain, chain_seq, kind, at, data, prev_hash, hash, "
                "recorded_at, mac) VALUES (:k, :r, :c, :n, :kind, :at, :d, :p, :h, :at, :mac)"
            ),
            {
                "k": event_key,
                "r": run_id,
                "c": chain,
                "n": size + 1,
                "kind": kind,
                "at": at,
                "d": body,
                "p": prev,
                "h": digest,
                "mac": "v1:" + "0" * 64,
            },
        )
        if head is None:
            conn.execute(
                text(
                    "INSERT INTO ledger_heads (chain, size, head, closed, sealed_size, sealed_final, dirty) "
                    "VALUES (:c, 1, :h, false, 0, false, true)"
                ),
                {"c": chain, "h": digest},
            )
        else:
            conn.execute(
                text("UPDATE ledger_heads SET size = :n, head = :h, dirty = true WHERE chain = :c"),
                {"c": chain, "n": size + 1, "h": digest},
            )
    return Forged(chain, event_key, head is None, (size, prev))


def unforge(ledger: Ledger, f: Forged) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger WHERE event_key = :k"), {"k": f.event_key})
        if f.created_head:
            conn.execute(text("DELETE FROM ledger_heads WHERE chain = :c"), {"c": f.chain})
        else:
            conn.execute(
                text("UPDATE ledger_heads SET size = :n, head = :h, dirty = true WHERE chain = :c"),
                {"c": f.chain, "n": f.old_head[0], "h": f.old_head[1]},
            )


def signed_heads(ledger: Ledger, chain: str) -> list[int]:
    with ledger.reader.connect() as conn:
        rows = conn.execute(
            text("SELECT size FROM ledger_checkpoint_heads WHERE chain = :c ORDER BY checkpoint"), {"c": chain}
        )
        return [int(r[0]) for r in rows]


def recorded_findings(ledger: Ledger) -> list[str]:
    return [json.loads(e.data)["problem"] for e in ledger.entries(LEDGER_RUN_ID) if e.kind == UNAUTHENTIC_KIND]


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, deps: Any, settings: Settings, tmp_path: Any) -> Iterator[Ledger]:
    """A worker's ledger (Vault row key, Transit signer) on SQLite or on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        assert settings.pg_dsn
        name = f"forgery_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(settings.pg_dsn.replace("/shop?", "/postgres?"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = settings.pg_dsn.replace("postgresql://", "postgresql+psycopg://").replace("/shop?", f"/{name}?")
    ledger = Ledger(
        url,
        signer=TransitAnchor(lambda: deps.vault.client),
        row_key=VaultRowKeys(lambda: deps.vault.client),
        checkpoint_interval=None,
    )
    yield ledger
    ledger.dispose()


async def verify_cli(env: dict[str, str], url: str) -> tuple[int, dict[str, Any]]:
    done = await cli({**env, "LOCKGATE_LEDGER_URL": url}, "verify", "--json")
    return done.returncode, json.loads(done.stdout)


async def test_forged_key_compensation_and_decision_rows_are_ignored_unsigned_and_named(
    ledger: Ledger, env: dict[str, str]
) -> None:
    run, other = f"run-{uuid.uuid4().hex[:8]}", f"run-{uuid.uuid4().hex[:8]}"
    for i in range(1, 4):
        ledger.append(f"decision:{run}:{i}", run, "decision", {"step": i, "outcome": "allow", "tool": "refunds.issue"})
        ledger.append(f"decision:{other}:{i}", other, "decision", {"step": i, "outcome": "allow"})
    ledger.append(f"run.closed:{run}", run, "run.closed", {"state": "completed"})
    archive = LedgerKeyArchive(ledger)
    archive.put(ApproverKey(person="carol", version=1, public_key="A" * 43 + "="))
    assert ledger.checkpoint() is not None
    code, report = await verify_cli(env, ledger.url)
    assert code == 0, report
    signed_people = signed_heads(ledger, LedgerKeyArchive.RUN_ID)

    # 1. inserted: a "compensation outstanding" for a completed run, a planted approver key
    comp = forge(ledger, run + AFTER_CLOSE, run, "compensation.outstanding", {"step": 1, "tool": "refunds.issue"})
    key = forge(
        ledger,
        LedgerKeyArchive.RUN_ID,
        LedgerKeyArchive.RUN_ID,
        LedgerKeyArchive.KIND,
        {"person": "carol", "version": 7, "public_key": "B" * 43 + "=", "algorithm": "ed25519"},
        event_key="approver.key:carol:v7",
    )
    # 2. edited: a decision's outcome, its hash recomputed (the chain still links)
    with ledger.engine.begin() as conn:
        row = conn.execute(
            text("SELECT prev_hash, chain_seq, at FROM ledger WHERE event_key = :k"), {"k": f"decision:{other}:3"}
        ).one()
        data = canonical_json({"step": 3, "outcome": "deny"})
        digest = entry_hash(row[0], other, row[1], f"decision:{other}:3", other, "decision", row[2], data)
        conn.execute(
            text("UPDATE ledger SET data = :d, hash = :h WHERE event_key = :k"),
            {"d": data, "h": digest, "k": f"decision:{other}:3"},
        )
        conn.execute(
            text("UPDATE ledger_heads SET head = :h, dirty = true WHERE chain = :c"), {"h": digest, "c": other}
        )
    # 3. deleted: a decision in the middle of a run
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger WHERE event_key = :k"), {"k": f"decision:{run}:2"})

    # Nothing acts on them: the reaper's, the key archive's and the approvals' reads.
    kinds = [e["kind"] for e in ledger.events(run)]
    assert "compensation.outstanding" not in kinds and kinds.count("decision") == 2
    assert archive.get("carol", 7) is None and archive.get("carol", 1) is not None
    assert [e["outcome"] for e in ledger.events(other)] == ["allow", "allow"]
    read = ledger.read(run)
    assert run in read.gaps

    # Nothing is signed: the forged chains' heads never enter a checkpoint.
    ledger.checkpoint()
    assert signed_heads(ledger, run + AFTER_CLOSE) == []
    assert signed_heads(ledger, LedgerKeyArchive.RUN_ID) == signed_people
    assert max(signed_heads(ledger, other)) == 3  # signed before the edit; not the edited head
    with ledger.reader.connect() as conn:
        heads = {str(h) for (h,) in conn.execute(text("SELECT head FROM ledger_checkpoint_heads"))}
    assert digest not in heads

    # `lockgate verify` exits 1 naming each.
    code, report = await verify_cli(env, ledger.url)
    assert code == 1 and report["intact"] is False
    problems = "\n".join(report["problems"])
    assert comp.event_key in problems and key.event_key in problems
    assert f"decision:{other}:3" in problems
    assert f"chain {run} #3" in problems and "deleted" in problems
    assert "every row's MAC checked" in report["rows"]

    # The attempt is recorded, as an authenticated entry of the ledger's own.
    findings = "\n".join(recorded_findings(ledger))
    assert comp.event_key in findings and key.event_key in findings and f"decision:{other}:3" in findings


async def test_the_kill_switch_fails_closed_against_database_writes(ledger: Ledger, deps: Any) -> None:
    freezes = FreezeStore(ledger, verify=unfreeze_verifier(deps.people))
    freezes.CACHE_SECONDS = 0
    scope = f"ghost-{uuid.uuid4().hex[:8]}"
    chain = f"scope:{scope}"

    def unfreeze_by(name: str) -> None:
        signed = sign(person(name), "unfreeze", {"scope": scope, "reason": "done"})
        freezes.set(scope, False, by=name, reason="done", evidence=signed.model_dump_json())

    # A freeze, lifted by an operator's signed unfreeze: that statement is the attacker's material.
    freezes.set(scope, True, by="carol", reason="incident")
    unfreeze_by("carol")
    assert not freezes.is_frozen(scope)
    with ledger.reader.connect() as conn:
        found = conn.execute(
            text("SELECT data FROM ledger WHERE chain = :c AND kind = 'unfreeze' ORDER BY chain_seq"), {"c": chain}
        ).first()
        assert found is not None
        old_unfreeze = json.loads(found[0])

    freezes.set(scope, True, by="carol", reason="incident 2")
    assert freezes.is_frozen(scope)
    ledger.checkpoint()
    # The table row goes: the ledger still holds the freeze.
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM freezes WHERE scope = :s"), {"s": scope})
    assert freezes.is_frozen(scope)
    # The freeze's ledger row deleted too, the head row put back as if it never was: the signed
    # checkpoint still counts it, so the scope stays frozen.
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger WHERE chain = :c AND chain_seq = 3"), {"c": chain})
        prev = conn.execute(text("SELECT hash FROM ledger WHERE chain = :c AND chain_seq = 2"), {"c": chain}).one()[0]
        conn.execute(text("UPDATE ledger_heads SET size = 2, head = :h WHERE chain = :c"), {"h": prev, "c": chain})
    assert freezes.is_frozen(scope)
    assert any(chain in p for p in ledger.verify()), "verify does not name the deleted freeze"
    # An unsigned unfreeze (anyone's database write, or a worker relaying it) lifts nothing, even
    # where the deleted freeze was...
    freezes.set(scope, False, by="mallory", reason="let me through")
    assert freezes.is_frozen(scope)
    refused = [e for e in ledger.entries(chain) if e.kind == "unfreeze.refused"]
    assert refused, "the refused unfreeze is not recorded"
    # ...nor the operator's old unfreeze statement copied into a new row...
    forge(ledger, chain, chain, "unfreeze", old_unfreeze)
    assert freezes.is_frozen(scope)
    # ...an operator's signed unfreeze, recorded by a worker after all that, does.
    unfreeze_by("dave")
    assert not freezes.is_frozen(scope)


async def test_an_old_unfreeze_copied_after_a_freeze_lifts_nothing(ledger: Ledger, deps: Any) -> None:
    freezes = FreezeStore(ledger, verify=unfreeze_verifier(deps.people))
    freezes.CACHE_SECONDS = 0
    scope = f"ghost-{uuid.uuid4().hex[:8]}"
    freezes.set(scope, True, by="carol", reason="incident")
    signed = sign(person("carol"), "unfreeze", {"scope": scope, "reason": "done"})
    freezes.set(scope, False, by="carol", reason="done", evidence=signed.model_dump_json())
    assert not freezes.is_frozen(scope)
    freezes.set(scope, True, by="carol", reason="incident 2")
    forge(
        ledger,
        f"scope:{scope}",
        f"scope:{scope}",
        "unfreeze",
        {"scope": scope, "by": "carol", "reason": "done", "evidence": signed.model_dump_json()},
    )
    assert freezes.is_frozen(scope)
    assert [e.kind for e in ledger.entries(f"scope:{scope}")][-1] == "unfreeze.refused"


def _unfreeze_of(scope: str, name: str = "carol") -> dict[str, Any]:
    signed = sign(person(name), "unfreeze", {"scope": scope, "reason": "done"})
    return {"scope": scope, "by": name, "reason": "done", "evidence": signed.model_dump_json()}


async def test_rows_no_worker_wrote_freeze_a_scope_that_was_not_frozen(ledger: Ledger, deps: Any) -> None:
    """The kill switch fails closed on anything on a scope's chain that no worker wrote, and on a
    freeze written straight into its table; a refused unfreeze of a scope never frozen freezes
    nothing."""
    from sqlmodel import Session

    from lockgate.activities.freeze import Freeze

    freezes = FreezeStore(ledger, verify=unfreeze_verifier(deps.people))
    freezes.CACHE_SECONDS = 0
    tag = uuid.uuid4().hex[:8]
    planted_unfreeze, planted_other, table_only, refused = (f"{n}-{tag}" for n in ("pu", "po", "to", "rf"))
    # An unfreeze row with no operator's statement, planted on a chain with nothing on it.
    forge(ledger, f"scope:{planted_unfreeze}", f"scope:{planted_unfreeze}", "unfreeze", {"scope": planted_unfreeze})
    # A row of any other kind, planted.
    forge(ledger, f"scope:{planted_other}", f"scope:{planted_other}", "note", {"scope": planted_other})
    # A freeze written into the table only (the table may add a freeze, never lift one).
    with Session(ledger.engine) as session, session.begin():
        session.add(Freeze(scope=table_only, frozen=True, by="dba", reason="direct", at=datetime.now(UTC).isoformat()))
    # An unsigned unfreeze of a scope nobody froze: refused and recorded, and nothing is frozen.
    freezes.set(refused, False, by="mallory", reason="nothing to lift")

    assert freezes.is_frozen(planted_unfreeze)
    assert freezes.is_frozen(planted_other)
    assert freezes.is_frozen(table_only)
    assert not freezes.is_frozen(refused)
    assert [e.kind for e in ledger.entries(f"scope:{refused}")] == ["unfreeze", "unfreeze.refused"]
    assert not freezes.is_frozen(f"never-{tag}")


async def test_an_operators_unfreeze_of_another_scope_lifts_nothing(ledger: Ledger, deps: Any) -> None:
    """An operator's signed unfreeze binds its scope: planted on another scope's chain (linked
    correctly, only its MAC missing) it does not lift that scope's freeze."""
    freezes = FreezeStore(ledger, verify=unfreeze_verifier(deps.people))
    freezes.CACHE_SECONDS = 0
    tag = uuid.uuid4().hex[:8]
    frozen, other = f"frozen-{tag}", f"other-{tag}"
    freezes.set(frozen, True, by="carol", reason="incident")
    forge(ledger, f"scope:{frozen}", f"scope:{frozen}", "unfreeze", _unfreeze_of(other))
    _table_says_unfrozen(ledger, frozen)  # the table row too: it may add a freeze, never lift one
    assert freezes.is_frozen(frozen)
    # The same statement for the right scope, recorded by a worker, lifts it.
    _unfreeze(freezes, frozen)
    assert not freezes.is_frozen(frozen)


def _rewrite_reason(ledger: Ledger, chain: str, seq: int, reason: str) -> str:
    """Rewrites a row's reason in place with a matching hash (its MAC cannot follow); the new hash."""
    with ledger.engine.begin() as conn:
        row = (
            conn.execute(text("SELECT * FROM ledger WHERE chain = :c AND chain_seq = :n"), {"c": chain, "n": seq})
            .mappings()
            .one()
        )
        body = canonical_json({**json.loads(row["data"]), "reason": reason})
        digest = entry_hash(row["prev_hash"], chain, seq, row["event_key"], row["run_id"], row["kind"], row["at"], body)
        conn.execute(
            text("UPDATE ledger SET data = :d, hash = :h WHERE seq = :s"), {"d": body, "h": digest, "s": row["seq"]}
        )
    return digest


def _unfreeze(freezes: FreezeStore, scope: str, name: str = "carol") -> None:
    """An operator's signed unfreeze, recorded by a worker."""
    freezes.set(scope, False, **{k: v for k, v in _unfreeze_of(scope, name).items() if k != "scope"})


def _table_says_unfrozen(ledger: Ledger, scope: str) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE freezes SET frozen = false WHERE scope = :s"), {"s": scope})


async def test_a_captured_unfreeze_written_in_after_a_rewritten_row_lifts_nothing(ledger: Ledger, deps: Any) -> None:
    """Someone who rewrote an earlier row of a scope's chain (the next row's link no longer matches)
    and holds a fresh operator's unfreeze statement (captured on its way) writes it in themselves: a
    broken chain lifts only with an unfreeze a worker recorded."""
    freezes = FreezeStore(ledger, verify=unfreeze_verifier(deps.people))
    freezes.CACHE_SECONDS = 0
    scope = f"captured-{uuid.uuid4().hex[:8]}"
    chain = f"scope:{scope}"
    freezes.set(scope, True, by="carol", reason="incident")
    freezes.set(scope, True, by="carol", reason="still")
    _rewrite_reason(ledger, chain, 1, "nothing happened")
    forge(ledger, chain, chain, "unfreeze", _unfreeze_of(scope))
    _table_says_unfrozen(ledger, scope)
    assert freezes.is_frozen(scope)
    _unfreeze(freezes, scope, "dave")
    assert not freezes.is_frozen(scope)


async def test_an_unfreeze_rewritten_after_its_checkpoint_lifts_nothing(ledger: Ledger, deps: Any) -> None:
    """A signed unfreeze, once a checkpoint counts it, rewritten in place (hash recomputed, head row
    moved on, its statement intact): the chain no longer matches what was signed, so the scope is
    frozen again until a worker records a new signed unfreeze."""
    freezes = FreezeStore(ledger, verify=unfreeze_verifier(deps.people))
    freezes.CACHE_SECONDS = 0
    scope = f"rewritten-{uuid.uuid4().hex[:8]}"
    chain = f"scope:{scope}"
    freezes.set(scope, True, by="carol", reason="incident")
    _unfreeze(freezes, scope)
    assert not freezes.is_frozen(scope)
    assert ledger.checkpoint() is not None
    digest = _rewrite_reason(ledger, chain, 2, "done, and more")
    with ledger.engine.begin() as conn:  # the head row moved on too, as if the row had always read so
        conn.execute(text("UPDATE ledger_heads SET head = :h WHERE chain = :c"), {"h": digest, "c": chain})
    assert freezes.is_frozen(scope)
    _unfreeze(freezes, scope, "dave")
    assert not freezes.is_frozen(scope)


async def test_a_store_without_a_verifier_reads_an_unfreeze_as_lifting(ledger: Ledger, deps: Any) -> None:
    """The read-only view a shell or the inbox opens (no people directory to verify with) follows
    the chain's freezes and unfreezes as recorded; workers verify (the tests above)."""
    freezes = FreezeStore(ledger, verify=unfreeze_verifier(deps.people))
    view = FreezeStore(ledger)
    view.CACHE_SECONDS = 0
    scope = f"view-{uuid.uuid4().hex[:8]}"
    freezes.set(scope, True, by="carol", reason="incident")
    assert view.is_frozen(scope)
    _unfreeze(freezes, scope)
    assert not view.is_frozen(scope)


async def test_a_planted_compensation_does_not_reverse_a_completed_run(
    client: Client, worker_running: str, deps: Any, outside: Outside, env: dict[str, str]
) -> None:
    from lockgate import worker

    handle = await start(
        client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 400, "reason": "x"}
    )
    assert await finish(handle) is None
    (refund,) = outside.refunds(handle.id)
    assert refund[4] is None
    forged = forge(
        deps.ledger,
        handle.id + AFTER_CLOSE,
        handle.id,
        "compensation.outstanding",
        {"step": refund[3], "tool": "refunds.issue", "args": {"idempotency_key": refund[2]}},
    )
    try:
        assert handle.id in deps.ledger.run_ids_with("compensation.outstanding")
        reaper = worker.build_reaper(deps)
        reaper.clock = lambda: datetime.now(UTC).timestamp() + 3600
        await reaper.reap_once(client)
        assert outside.refunds(handle.id) == [refund], "the reaper reversed a completed run's refund"
        deps.ledger.checkpoint()
        assert signed_heads(deps.ledger, handle.id + AFTER_CLOSE) == []
        done = await cli(env, "verify", "--json")
        assert done.returncode == 1 and forged.event_key in "\n".join(json.loads(done.stdout)["problems"])
        assert any(forged.event_key in f for f in recorded_findings(deps.ledger))
        # The audit timeline leaves it out, and says so.
        doc = timeline(deps.ledger, handle.id)
        assert "compensation.outstanding" not in [e["kind"] for e in doc["entries"]]
        assert not doc["ledger_intact"] and any(forged.event_key in p for p in doc["ledger_problems"])
    finally:
        unforge(deps.ledger, forged)


async def test_deleting_the_freeze_rows_does_not_lift_the_kill_switch(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    deps.freezes.set("refund-agent", True, by="carol", reason="incident 26")
    chain = "scope:refund-agent"
    with deps.ledger.engine.begin() as conn:
        saved = (
            conn.execute(text("SELECT * FROM ledger WHERE chain = :c ORDER BY chain_seq DESC LIMIT 1"), {"c": chain})
            .mappings()
            .one()
        )
        conn.execute(text("DELETE FROM freezes WHERE scope = 'refund-agent'"))
        conn.execute(text("DELETE FROM ledger WHERE seq = :s"), {"s": saved["seq"]})
    try:
        await asyncio.sleep(FreezeStore.CACHE_SECONDS + 0.1)
        handle = await start(
            client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 300, "reason": "y"}
        )
        for _ in range(200):
            if (await status_of(handle)).state == "frozen":
                break
            await asyncio.sleep(0.1)
        assert (await status_of(handle)).state == "frozen"
        assert outside.refunds(handle.id) == []
    finally:
        with deps.ledger.engine.begin() as conn:  # the backup put back: the chain whole again
            row = {k: v for k, v in saved.items() if k != "seq"}
            conn.execute(text(f"INSERT INTO ledger ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})"), row)
        signed = sign(person("carol"), "unfreeze", {"scope": "refund-agent", "reason": "incident 26 over"})
        deps.freezes.set("refund-agent", False, by="carol", reason="over", evidence=signed.model_dump_json())
    await handle.signal("unfreeze")
    assert await finish(handle) is None
    assert len(outside.refunds(handle.id)) == 1


async def test_an_archived_key_counts_only_for_a_version_vault_rotated_past(deps: Any, tmp_path: Any) -> None:
    """Even an authenticated archive entry (written through lockgate) cannot add a key version Vault
    never made: a statement "signed by carol" with the attacker's key is refused."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'keys.db'}", row_key=VaultRowKeys(lambda: deps.vault.client))
    try:
        people = PeopleDirectory(deps.vault, archive=LedgerKeyArchive(ledger))
        genuine = sign(person("carol"), "approve", {"run_id": "r-keys"})
        people.verify(genuine, act="approve", expect={"run_id": "r-keys"}, max_age=timedelta(minutes=5))
        future = genuine.key_version + 3
        attacker = Ed25519PrivateKey.generate()
        raw = attacker.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        LedgerKeyArchive(ledger).put(
            ApproverKey(person="carol", version=future, public_key=base64.b64encode(raw).decode())
        )
        statement = Statement(
            act="approve", person="carol", at=datetime.now(UTC), nonce="n" * 16, fields={"run_id": "r-keys"}
        )
        forged = SignedStatement(
            statement=statement,
            key=genuine.key,
            key_version=future,
            signature=f"vault:v{future}:" + base64.b64encode(attacker.sign(statement.canonical_bytes())).decode(),
        )
        with pytest.raises(Refused, match=f"no public key version {future} for carol"):
            people.verify(forged, act="approve", expect={"run_id": "r-keys"}, max_age=timedelta(minutes=5))
    finally:
        ledger.dispose()


@pytest.mark.parametrize(
    ("kind", "about_self", "data", "why"),
    [
        ("compensation.outstanding", True, {"step": 1, "tool": "refunds.issue"}, "may not record"),
        ("approver.key", True, {"person": "carol", "version": 9, "public_key": "A" * 44}, "may not record"),
        ("approval.accepted", False, {"request_id": "1.1", "accepted": True}, "its own run only"),
        ("approval.requested", True, {"no_request_id": True}, "request_id"),
    ],
)
async def test_a_workflow_records_only_facts_about_its_own_run(
    client: Client, worker_running: str, deps: Any, kind: str, about_self: bool, data: dict[str, Any], why: str
) -> None:
    """Hostile workflow code hosted on lockgate's worker (it passes the caller check) schedules
    `audit.record` with entries of protected kinds, about another run, or in the wrong shape: refused
    for good, nothing appended, the attempt recorded on its own chain."""
    from lockgate.models import AuditEvent
    from tests.rogue import RogueCallWorkflow

    caller, victim = f"rogue-{uuid.uuid4().hex[:10]}", f"victim-{uuid.uuid4().hex[:10]}"
    run_id = caller if about_self else victim
    event = AuditEvent(event_key=f"{kind}:{run_id}:x", run_id=run_id, kind=kind, data=data, at=datetime.now(UTC))
    spec = {"activity": "audit.record", "arg": event.model_dump(mode="json"), "queue": worker_running}
    result = await client.execute_workflow(RogueCallWorkflow.run, spec, id=caller, task_queue=worker_running)
    assert result["ok"] is False and why in result["message"], result
    assert result["retry_state"] == "NON_RETRYABLE_FAILURE"
    assert deps.ledger.entries(run_id) == [] or run_id == caller
    assert [e.kind for e in deps.ledger.entries(caller)] == ["audit.refused"]
    (refusal,) = [json.loads(e.data) for e in deps.ledger.entries(caller)]
    assert refusal["kind"] == kind and refusal["run_id"] == run_id and why in refusal["reason"]
    # The same workflow recording what it may (an approval request of its own run) is answered.
    ok = AuditEvent(
        event_key=f"approval.requested:{caller}:1.1",
        run_id=caller,
        kind="approval.requested",
        data={"request_id": "1.1"},
        at=datetime.now(UTC),
    )
    spec["arg"] = ok.model_dump(mode="json")
    result = await client.execute_workflow(
        RogueCallWorkflow.run, spec, id=caller, task_queue=worker_running, id_reuse_policy=_ALLOW_DUPLICATE
    )
    assert result == {"ok": True, "result": True}
