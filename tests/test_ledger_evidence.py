"""Tamper evidence (scenarios 17, 24): per-run chains sealed in checkpoints signed with a Vault Transit
key nobody can export; `lockgate verify` fails on every kind of tampering, exits 2 on a missing
ledger, and old checkpoints still verify after the key is rotated."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import text

from lockgate.activities.anchor import TransitAnchor
from lockgate.activities.ledger import Ledger
from lockgate.activities.ledger.rowkey import VaultRowKeys
from lockgate.activities.vault import VaultBroker
from lockgate.bootstrap import LEDGER_SIGNING_KEY, TRANSIT_MOUNT
from lockgate.config import Settings
from lockgate.evidence import AFTER_CLOSE, entry_hash
from lockgate.models import canonical_json
from tests.conftest import cli


@pytest.fixture(scope="module")
def anchor(settings: Settings) -> TransitAnchor:
    assert settings.vault_role_id and settings.vault_secret_id
    broker = VaultBroker(settings.vault_addr, settings.vault_role_id, settings.vault_secret_id)
    # A worker's ledger: checkpoints signed with the Transit key, rows MACed with the row key.
    _WORKER_ROWS.append(VaultRowKeys(lambda: broker.client))
    return TransitAnchor(lambda: broker.client)


_WORKER_ROWS: list[VaultRowKeys] = []


class AttackerKey:
    """A signer with a key of the attacker's own (not Vault's): what a forger can produce."""

    key_name = LEDGER_SIGNING_KEY

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()

    def sign(self, message: bytes) -> str:
        return "vault:v1:" + base64.b64encode(self._key.sign(message)).decode()

    def public_keys(self) -> dict[int, str]:
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {1: base64.b64encode(raw).decode()}

    def write_witness(self, name: str, record: dict[str, Any]) -> None:
        pass

    def read_witness(self, name: str) -> dict[str, Any] | None:
        return None


def _story(ledger: Ledger, closed: str, open_: str) -> None:
    """A closed run (sealed final at close) and a run still going."""
    ledger.append(f"run.opened:{closed}", closed, "run.opened", {"agent": "refund-agent", "initiator": "erin"})
    ledger.append(
        f"decision:{closed}/1", closed, "decision", {"step": 1, "tool": "refunds.issue", "outcome": "approval"}
    )
    ledger.append(f"approval.requested:{closed}:1.1", closed, "approval.requested", {"request_id": "1.1"})
    ledger.append(f"approval.expired:{closed}:1.1", closed, "approval.expired", {"request_id": "1.1"})
    ledger.append(f"run.closed:{closed}", closed, "run.closed", {"state": "failed"})
    assert ledger.seal() is not None
    for i in range(4):
        ledger.append(f"decision:{open_}/{i}", open_, "decision", {"step": i, "tool": "orders.lookup"})
    assert ledger.checkpoint() is not None


def _sql(path: Path, *statements: str, params: tuple[Any, ...] = ()) -> None:
    with sqlite3.connect(path) as conn:
        for s in statements:
            conn.execute(s, params) if params else conn.execute(s)


def _row(path: Path, where: str) -> dict[str, Any]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute(f"SELECT * FROM ledger WHERE {where}").fetchone())


def _rechain(path: Path, chain: str) -> None:
    """What a careful forger does after deleting or inserting: renumber and re-hash the whole chain,
    and fix the writers' head row, so the chain is self-consistent again."""
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM ledger WHERE chain = ? ORDER BY chain_seq", (chain,))]
        conn.execute("UPDATE ledger SET chain_seq = chain_seq + 100000 WHERE chain = ?", (chain,))
        prev = "0" * 64
        for n, r in enumerate(rows, start=1):
            h = entry_hash(prev, chain, n, r["event_key"], r["run_id"], r["kind"], r["at"], r["data"])
            conn.execute(
                "UPDATE ledger SET chain_seq = ?, prev_hash = ?, hash = ? WHERE seq = ?", (n, prev, h, r["seq"])
            )
            prev = h
        conn.execute("UPDATE ledger_heads SET size = ?, head = ? WHERE chain = ?", (len(rows), prev, chain))


def _forge_row(path: Path, chain: str, run_id: str, kind: str, data: dict[str, Any], at: str) -> None:
    """Appends a row with a correct hash and position, straight into the database."""
    with sqlite3.connect(path) as conn:
        n, prev = conn.execute(
            "SELECT chain_seq, hash FROM ledger WHERE chain = ? ORDER BY chain_seq DESC LIMIT 1", (chain,)
        ).fetchone()
        body = canonical_json(data)
        key = f"{kind}:{run_id}:forged"
        h = entry_hash(prev, chain, n + 1, key, run_id, kind, at, body)
        conn.execute(
            "INSERT INTO ledger (event_key, run_id, chain, chain_seq, kind, at, data, prev_hash, hash, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, run_id, chain, n + 1, kind, at, body, prev, h, at),
        )


def _tamper(how: str, path: Path, closed: str, open_: str, anchor: TransitAnchor) -> str:
    """Tampers with the ledger file; returns a phrase `verify` must report."""
    if how == "edit":
        row = _row(path, f"chain = '{closed}' AND chain_seq = 2")
        _sql(path, f"UPDATE ledger SET data = ? WHERE seq = {row['seq']}", params=('{"outcome":"allow"}',))
        return "edited"
    if how == "delete":
        row = _row(path, f"chain = '{closed}' AND chain_seq = 3")
        _sql(path, f"DELETE FROM ledger WHERE seq = {row['seq']}")
        return "missing entry"
    if how == "truncate":
        # The last rows and the last checkpoint that covered them.
        _sql(
            path,
            "DELETE FROM ledger WHERE seq IN (SELECT seq FROM ledger ORDER BY seq DESC LIMIT 2)",
            "DELETE FROM ledger_checkpoint_heads WHERE checkpoint = (SELECT max(seq) FROM ledger_checkpoints)",
            "DELETE FROM ledger_checkpoints WHERE seq = (SELECT max(seq) FROM ledger_checkpoints)",
        )
        return "rolled back, truncated or replaced"
    if how == "insert":
        row = _row(path, f"chain = '{closed}' AND chain_seq = 2")
        _sql(
            path,
            "INSERT INTO ledger (event_key, run_id, chain, chain_seq, kind, at, data, prev_hash, hash, recorded_at) "
            f"SELECT 'x:inserted', run_id, chain, 1000, 'approval.accepted', at, data, prev_hash, hash, recorded_at "
            f"FROM ledger WHERE seq = {row['seq']}",
        )
        _rechain_order(path, closed, inserted_after=2)
        return "checkpoint #1 signed another entry here"
    if how == "rechain":
        row = _row(path, f"chain = '{closed}' AND chain_seq = 2")
        _sql(path, f"DELETE FROM ledger WHERE seq = {row['seq']}")
        _rechain(path, closed)
        return "truncated or deleted"
    if how == "forge":
        approval = {"request_id": "1.1", "approver": "alice", "verdict": "approve", "accepted": True}
        _forge_row(path, closed, closed, "approval.accepted", approval, "2026-01-01T00:00:00+00:00")
        return "sealed final"
    if how == "replace":
        # A whole new file: the same story, self-consistent, signed with the forger's own key.
        path.unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        forged = Ledger(f"sqlite:///{path}", signer=AttackerKey(), checkpoint_interval=None)
        _story(forged, closed, open_)
        forged.dispose()
        return "not a trusted key"
    raise AssertionError(how)


def _rechain_order(path: Path, chain: str, inserted_after: int) -> None:
    """Moves the inserted row (parked at #1000) to just after #`inserted_after`, then re-hashes."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE ledger SET chain_seq = chain_seq + 100000 WHERE chain = ? AND chain_seq > ? AND chain_seq < 1000",
            (chain, inserted_after),
        )
        conn.execute(
            "UPDATE ledger SET chain_seq = ? WHERE chain = ? AND chain_seq = 1000", (inserted_after + 1, chain)
        )
        conn.execute(
            "UPDATE ledger SET chain_seq = chain_seq - 100000 + 1 WHERE chain = ? AND chain_seq > 100000", (chain,)
        )
    _rechain(path, chain)


@pytest.mark.parametrize("how", ["edit", "delete", "truncate", "insert", "rechain", "forge", "replace"])
async def test_verify_fails_on_every_kind_of_tampering(
    how: str, tmp_path: Path, env: dict[str, str], anchor: TransitAnchor
) -> None:
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    ledger = Ledger(url, signer=anchor, row_key=_WORKER_ROWS[-1], checkpoint_interval=None)
    closed, open_ = f"closed-{uuid.uuid4().hex[:6]}", f"open-{uuid.uuid4().hex[:6]}"
    _story(ledger, closed, open_)
    ledger.dispose()
    run_env = {**env, "LOCKGATE_LEDGER_URL": url, "LOCKGATE_STATE_DIR": str(tmp_path / "state")}
    ok = await cli(run_env, "verify", "--strict")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ledger intact" in ok.stdout and "proven: 9 entries through checkpoint #2" in ok.stdout

    phrase = _tamper(how, path, closed, open_, anchor)
    bad = await cli(run_env, "verify", "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    report = json.loads(bad.stdout)
    assert report["intact"] is False
    assert any(phrase in p for p in report["problems"]), report["problems"]
    text_out = await cli(run_env, "verify")
    assert text_out.returncode == 1 and "ledger NOT intact" in text_out.stdout


async def test_forged_approval_shows_as_unproven_in_the_audit(
    tmp_path: Path, env: dict[str, str], anchor: TransitAnchor
) -> None:
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    ledger = Ledger(url, signer=anchor, row_key=_WORKER_ROWS[-1], checkpoint_interval=None)
    closed, open_ = f"closed-{uuid.uuid4().hex[:6]}", f"open-{uuid.uuid4().hex[:6]}"
    _story(ledger, closed, open_)
    ledger.dispose()
    approval = {"request_id": "1.1", "approver": "alice", "verdict": "approve", "accepted": True}
    _forge_row(path, closed, closed, "approval.accepted", approval, "2026-01-01T00:00:00+00:00")
    run_env = {**env, "LOCKGATE_LEDGER_URL": url}
    audit = await cli(run_env, "audit", closed, "--format", "json")
    assert audit.returncode == 1, audit.stdout + audit.stderr
    doc = json.loads(audit.stdout)
    assert doc["ledger_intact"] is False
    assert any("sealed final" in p for p in doc["ledger_problems"])
    # The audit (holding the row key, as here) leaves the forged row out of the timeline and names it;
    # without the key it would show it, unproven.
    assert [e for e in doc["entries"] if e["kind"] == "approval.accepted"] == []
    assert any("left out" in p and "approval.accepted:" in p for p in doc["ledger_problems"])


async def test_missing_or_empty_ledger_exits_2_and_is_not_created(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "nowhere" / "ledger.db"
    result = await cli({**env, "LOCKGATE_LEDGER_URL": f"sqlite:///{path}"}, "verify")
    assert result.returncode == 2 and "no ledger" in result.stderr
    assert not path.exists() and not path.parent.exists()
    empty = tmp_path / "empty.db"
    Ledger(f"sqlite:///{empty}").dispose()
    result = await cli({**env, "LOCKGATE_LEDGER_URL": f"sqlite:///{empty}"}, "verify", "--json")
    assert result.returncode == 2 and "empty" in result.stderr


async def test_old_checkpoints_verify_after_the_key_is_rotated(
    tmp_path: Path, env: dict[str, str], anchor: TransitAnchor, settings: Settings
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url, signer=anchor, row_key=_WORKER_ROWS[-1], checkpoint_interval=None)
    ledger.append("a:1", "run-rot", "decision", {"i": 1})
    first = ledger.checkpoint()
    root = hvac.Client(url=settings.vault_addr, token=settings.vault_token)
    root.secrets.transit.rotate_key(name=LEDGER_SIGNING_KEY, mount_point=TRANSIT_MOUNT)
    ledger.append("a:2", "run-rot", "decision", {"i": 2})
    second = ledger.checkpoint()
    assert first is not None and second == first + 1
    versions = sorted(ledger.public_keys())
    assert len(versions) >= 2, "the new version's public key is kept in the ledger"
    report = ledger.verify_report(trusted_keys=anchor.public_keys(), grace=0)
    assert report.ok, report.problems
    ledger.dispose()
    # Offline: Vault unreachable, the keys an auditor pinned are enough.
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({str(v): k for v, k in anchor.public_keys().items()}))
    offline = {
        **env,
        "LOCKGATE_LEDGER_URL": url,
        "VAULT_ADDR": "http://127.0.0.1:9",
        "LOCKGATE_STATE_DIR": str(tmp_path),
    }
    result = await cli(offline, "verify", "--strict", "--keys", str(keys))
    assert result.returncode == 0, result.stdout + result.stderr
    # That verification pinned them in the state dir: offline, the next one needs no --keys ...
    result = await cli(offline, "verify")
    assert result.returncode == 0 and "local anchor file" in result.stdout, result.stdout
    # ... but where nothing was pinned, nothing anchors the ledger's own keys: not proven.
    elsewhere = {**offline, "LOCKGATE_STATE_DIR": str(tmp_path / "elsewhere")}
    result = await cli(elsewhere, "verify")
    assert result.returncode == 1 and "no trusted public key" in result.stdout


def test_the_ledger_key_cannot_be_exported(settings: Settings, anchor: TransitAnchor) -> None:
    assert settings.vault_role_id and settings.vault_secret_id
    worker = VaultBroker(settings.vault_addr, settings.vault_role_id, settings.vault_secret_id).client
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.read(f"{TRANSIT_MOUNT}/export/signing-key/{LEDGER_SIGNING_KEY}")
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.write(f"{TRANSIT_MOUNT}/keys/{LEDGER_SIGNING_KEY}/config", exportable=True)
    root = hvac.Client(url=settings.vault_addr, token=settings.vault_token)
    assert (
        root.secrets.transit.read_key(name=LEDGER_SIGNING_KEY, mount_point=TRANSIT_MOUNT)["data"]["exportable"] is False
    )
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root.read(f"{TRANSIT_MOUNT}/export/signing-key/{LEDGER_SIGNING_KEY}")


def test_late_entries_of_a_closed_run_go_to_a_chain_of_their_own(tmp_path: Path, anchor: TransitAnchor) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", signer=anchor, row_key=_WORKER_ROWS[-1], checkpoint_interval=None)
    ledger.append("run.opened:r", "r", "run.opened", {})
    ledger.append("run.closed:r", "r", "run.closed", {"state": "completed"})
    ledger.seal()
    assert ledger.append("approval.refused:r:late", "r", "approval.refused", {"reason": "run is not running"})
    assert [e.chain for e in ledger.entries("r")] == ["r", "r", "r" + AFTER_CLOSE]
    ledger.checkpoint()
    assert ledger.verify_report(grace=0).ok
    ledger.dispose()


def test_appends_from_many_writers_on_postgres(settings: Settings, anchor: TransitAnchor) -> None:
    assert settings.pg_dsn
    name = f"ledger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.pg_dsn.replace("/shop?", "/postgres?"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = settings.pg_dsn.replace("postgresql://", "postgresql+psycopg://").replace("/shop?", f"/{name}?")
    errors: list[BaseException] = []

    def start_worker() -> None:
        try:
            Ledger(url, checkpoint_interval=None).dispose()
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    # Workers starting together on a fresh database: the schema is created once, without errors.
    starting = [threading.Thread(target=start_worker) for _ in range(6)]
    for t in starting:
        t.start()
    for t in starting:
        t.join()
    assert errors == []
    ledger = Ledger(url, signer=anchor, row_key=_WORKER_ROWS[-1], checkpoint_interval=0.2)

    def writer(w: int) -> None:
        try:
            for i in range(40):
                # Each writer has a run of its own, and all of them share one more.
                ledger.append(f"own:{w}:{i}", f"run-{w}", "decision", {"i": i})
                ledger.try_append(f"shared:{i % 25}", "run-shared", "decision", {"i": i % 25})
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Awkward text round-trips through PostgreSQL and hashes the same when read back.
    awkward = 'q"uote\\back\nline\ttab\x01\x1f\x7f/☃ \u2028😀'
    for i in range(3):
        assert ledger.append(f"{awkward}:{i}", f"run-{awkward}", f"kind-{awkward}", {"text": awkward, "i": i})
    assert not ledger.append(f"{awkward}:1", f"run-{awkward}", "again", {})
    ledger.checkpoint()
    assert [e["i"] for e in ledger.events("run-3")] == list(range(40))
    assert sorted(e["i"] for e in ledger.events("run-shared")) == list(range(25))
    report = ledger.verify_report(trusted_keys=anchor.public_keys(), grace=0)
    assert report.ok and report.entries == 8 * 40 + 25 + 3 and report.chains == 10, report.problems
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE ledger SET data = '{}' WHERE run_id = 'run-5' AND chain_seq = 7"))
    assert any("run-5 #7" in p and "edited" in p for p in ledger.verify())
    ledger.dispose()


def test_a_copy_of_the_file_from_before_is_a_rollback(tmp_path: Path, anchor: TransitAnchor) -> None:
    """Restoring an older genuine copy: every signature holds, but the witness saw a newer checkpoint."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}", signer=anchor, row_key=_WORKER_ROWS[-1], checkpoint_interval=None)
    ledger.append("e:1", "run-x", "decision", {"i": 1})
    ledger.checkpoint()
    ledger.dispose()
    shutil.copy(path, tmp_path / "old.db")
    ledger = Ledger(f"sqlite:///{path}", signer=anchor, row_key=_WORKER_ROWS[-1], checkpoint_interval=None)
    ledger.append("e:2", "run-x", "decision", {"i": 2})
    ledger.checkpoint()
    ledger.dispose()
    shutil.copy(tmp_path / "old.db", path)
    Path(str(path) + "-wal").unlink(missing_ok=True)
    restored = Ledger(f"sqlite:///{path}", create=False)
    report = restored.verify_report(trusted_keys=anchor.public_keys(), witness=anchor.read_witness(restored.name))
    restored.dispose()
    assert any("rolled back" in p for p in report.problems), report.problems
