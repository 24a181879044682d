"""Tamper evidence (scenarios 17, 24): per-run chains sealed in checkpoints signed with a Vault Transit
key nobody can export; `lockgate verify` fails on every kind of tampering, exits 2 on a missing
ledger, and old checkpoints still verify after the key is rotated."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from pathlib import Path

import hvac
import hvac.exceptions
import psycopg
import pytest
from sqlalchemy import text

from lockgate.activities.anchor import TransitAnchor
from lockgate.activities.ledger import Ledger
from lockgate.activities.vault import VaultBroker
from lockgate.bootstrap import LEDGER_SIGNING_KEY, TRANSIT_MOUNT
from lockgate.config import Settings
from lockgate.evidence import AFTER_CLOSE
from tests.support.ledger import forge_row, ledger_story, tamper
from tests.support.stack import cli


@pytest.fixture(scope="module")
def anchor(settings: Settings) -> TransitAnchor:
    assert settings.vault_role_id and settings.vault_secret_id
    broker = VaultBroker(settings.vault_addr, settings.vault_role_id, settings.vault_secret_id)
    return TransitAnchor(lambda: broker.client)


@pytest.mark.parametrize("how", ["edit", "delete", "truncate", "insert", "rechain", "forge", "replace"])
async def test_verify_fails_on_every_kind_of_tampering(
    how: str, tmp_path: Path, env: dict[str, str], anchor: TransitAnchor
) -> None:
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    ledger = Ledger(url, signer=anchor, checkpoint_interval=None)
    closed, open_ = f"closed-{uuid.uuid4().hex[:6]}", f"open-{uuid.uuid4().hex[:6]}"
    ledger_story(ledger, closed, open_)
    ledger.dispose()
    run_env = {**env, "LOCKGATE_LEDGER_URL": url, "LOCKGATE_STATE_DIR": str(tmp_path / "state")}
    ok = await cli(run_env, "verify", "--strict")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ledger intact" in ok.stdout and "proven: 9 entries through checkpoint #2" in ok.stdout

    phrase = tamper(how, path, closed, open_, anchor)
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
    ledger = Ledger(url, signer=anchor, checkpoint_interval=None)
    closed, open_ = f"closed-{uuid.uuid4().hex[:6]}", f"open-{uuid.uuid4().hex[:6]}"
    ledger_story(ledger, closed, open_)
    ledger.dispose()
    approval = {"request_id": "1.1", "approver": "alice", "verdict": "approve", "accepted": True}
    forge_row(path, closed, closed, "approval.accepted", approval, "2026-01-01T00:00:00+00:00")
    run_env = {**env, "LOCKGATE_LEDGER_URL": url}
    audit = await cli(run_env, "audit", closed, "--format", "json")
    assert audit.returncode == 1, audit.stdout + audit.stderr
    doc = json.loads(audit.stdout)
    assert doc["ledger_intact"] is False
    assert any("sealed final" in p for p in doc["ledger_problems"])
    forged = [e for e in doc["entries"] if e["kind"] == "approval.accepted"]
    assert forged and forged[0]["proven"] is False


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
    ledger = Ledger(url, signer=anchor, checkpoint_interval=None)
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
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", signer=anchor, checkpoint_interval=None)
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
    ledger = Ledger(url, signer=anchor, checkpoint_interval=0.2)

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
    # PostgreSQL hashes appends itself: awkward text must hash exactly as Python hashes it.
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
    ledger = Ledger(f"sqlite:///{path}", signer=anchor, checkpoint_interval=None)
    ledger.append("e:1", "run-x", "decision", {"i": 1})
    ledger.checkpoint()
    ledger.dispose()
    shutil.copy(path, tmp_path / "old.db")
    ledger = Ledger(f"sqlite:///{path}", signer=anchor, checkpoint_interval=None)
    ledger.append("e:2", "run-x", "decision", {"i": 2})
    ledger.checkpoint()
    ledger.dispose()
    shutil.copy(tmp_path / "old.db", path)
    Path(str(path) + "-wal").unlink(missing_ok=True)
    restored = Ledger(f"sqlite:///{path}", create=False)
    report = restored.verify_report(trusted_keys=anchor.public_keys(), witness=anchor.read_witness(restored.name))
    restored.dispose()
    assert any("rolled back" in p for p in report.problems), report.problems
