"""`Ledger.verify_report` in process, each of its checks in isolation (found by `make mutation`).

A SQLite ledger signed with a local ed25519 key through the signer interface Transit implements
(what `make test` does with the real Transit key in test_ledger_evidence.py), tampered with as a
forger would, verified directly. Each docstring names the check that must report the tampering."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from lockgate.activities.ledger import Ledger, VerifyReport
from tests.support.ledger import LocalKey, ledger_story, tamper


def _ledger(path: Path, key: LocalKey) -> tuple[str, str]:
    ledger = Ledger(f"sqlite:///{path}", signer=key, checkpoint_interval=None)
    closed, open_ = f"closed-{uuid.uuid4().hex[:6]}", f"open-{uuid.uuid4().hex[:6]}"
    ledger_story(ledger, closed, open_)
    ledger.dispose()
    return closed, open_


def _verify(path: Path, key: LocalKey, **kw: Any) -> VerifyReport:
    ledger = Ledger(f"sqlite:///{path}", create=False)
    try:
        args: dict[str, Any] = {"trusted_keys": key.public_keys(), "witness": key.read_witness(ledger.name)}
        return ledger.verify_report(**{**args, **kw})
    finally:
        ledger.dispose()


def test_an_intact_ledger_verifies_with_every_entry_proven(tmp_path: Path) -> None:
    """Control: verify_report reports no problem on an untouched ledger, trusted key and witness
    given, and counts what it proved (the baseline every tampering below differs from)."""
    key = LocalKey()
    _ledger(tmp_path / "l.db", key)
    report = _verify(tmp_path / "l.db", key)
    assert report.problems == [], report.problems
    assert (report.checkpoints, report.entries, report.chains) == (2, 9, 2)
    assert (report.proven, report.pending, report.unproven) == (9, 0, 0)
    assert report.proven_through is not None and report.proven_through["checkpoint"] == 2
    assert report.witness is not None and "#2" in report.witness
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", create=False)
    assert report.ledger_id and report.ledger_id == ledger.ledger_id
    ledger.dispose()
    assert _verify(tmp_path / "l.db", key, trusted_keys=None, witness=None).problems == []


def test_the_report_says_whether_row_macs_were_checked(tmp_path: Path) -> None:
    """An auditor without the row key sees only the hash chain and the signed heads: the report
    says which of the two it was, never that MACs were checked when they were not."""
    from lockgate.activities.ledger.rowkey import static_row_key

    key, secret = LocalKey(), static_row_key(b"row secret")
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", signer=key, checkpoint_interval=None, row_key=secret)
    ledger_story(ledger, f"closed-{uuid.uuid4().hex[:6]}", f"open-{uuid.uuid4().hex[:6]}")
    ledger.dispose()
    with_key = Ledger(f"sqlite:///{tmp_path / 'l.db'}", create=False, row_key=secret)
    try:
        report = with_key.verify_report(trusted_keys=key.public_keys())
    finally:
        with_key.dispose()
    assert report.problems == [] and report.rows == "every row's MAC checked against the row key"
    without = _verify(tmp_path / "l.db", key, witness=None)
    assert without.rows.startswith("row MACs not checked (no access to the row key")


@pytest.mark.parametrize("how", ["edit", "delete", "truncate", "insert", "rechain", "forge"])
def test_each_kind_of_tampering_is_reported(tmp_path: Path, how: str) -> None:
    """Control: the chain, checkpoint and witness checks of verify_report, one tampering each."""
    key = LocalKey()
    closed, open_ = _ledger(tmp_path / "l.db", key)
    phrase = tamper(how, tmp_path / "l.db", closed, open_, None)  # type: ignore[arg-type]
    report = _verify(tmp_path / "l.db", key)
    assert any(phrase in p for p in report.problems), report.problems


def test_a_ledger_signed_with_another_key_is_not_trusted(tmp_path: Path) -> None:
    """Control: recorded keys must be the trusted ones (a self-consistent forgery with its own key)."""
    key, forger = LocalKey(), LocalKey()
    _ledger(tmp_path / "l.db", forger)
    report = _verify(tmp_path / "l.db", key, witness=None)
    assert any("ledger key version 1 is not a trusted key" in p for p in report.problems), report.problems
    # Checked against the trusted key, not the recorded one: the checkpoints' signatures fail too.
    assert len(report.problems) > 1, report.problems
    assert _verify(tmp_path / "l.db", forger, witness=None).problems == []


def test_a_trusted_key_of_another_version_still_checks_the_recorded_one(tmp_path: Path) -> None:
    """Control: each recorded version is compared with the trusted key of that version (a trusted
    version the ledger does not record adds a key, it does not excuse the recorded one)."""
    key = LocalKey()
    _ledger(tmp_path / "l.db", key)
    other = LocalKey().public_keys()[1]
    report = _verify(tmp_path / "l.db", key, trusted_keys={**key.public_keys(), 2: other}, witness=None)
    assert report.problems == [], report.problems
    report = _verify(tmp_path / "l.db", key, trusted_keys={2: key.public_keys()[1]}, witness=None)
    assert any("ledger key version 1 is not a trusted key" in p for p in report.problems), report.problems


def test_a_trusted_key_the_ledger_does_not_record_is_used(tmp_path: Path) -> None:
    """Control: trusted keys are added to the ones the ledger records (a ledger whose key table was
    lost still verifies against the key given from outside, and fails without it)."""
    key = LocalKey()
    _ledger(tmp_path / "l.db", key)
    with sqlite3.connect(tmp_path / "l.db") as conn:
        conn.execute("DELETE FROM ledger_keys")
    assert _verify(tmp_path / "l.db", key, witness=None).problems == []
    assert _verify(tmp_path / "l.db", key, trusted_keys=None, witness=None).problems != []


def test_a_witness_of_another_ledger_is_a_replacement(tmp_path: Path) -> None:
    """Control: the witness must name this ledger's id."""
    key = LocalKey()
    _ledger(tmp_path / "l.db", key)
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", create=False)
    witness = {**(key.read_witness(ledger.name) or {}), "ledger_id": "another"}
    ledger.dispose()
    report = _verify(tmp_path / "l.db", key, witness=witness)
    assert any("(replaced)" in p for p in report.problems), report.problems


def test_a_witnessed_checkpoint_that_differs_here_is_a_rollback(tmp_path: Path) -> None:
    """Control: the witnessed checkpoint must be here with the same hash (present but different)."""
    key = LocalKey()
    _ledger(tmp_path / "l.db", key)
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", create=False)
    witness = {**(key.read_witness(ledger.name) or {}), "hash": "0" * 64}
    ledger.dispose()
    report = _verify(tmp_path / "l.db", key, witness=witness)
    assert any("is different here" in p for p in report.problems), report.problems
    assert report.witness is not None


def test_a_missing_checkpoint_in_the_middle_is_reported(tmp_path: Path) -> None:
    """Control: checkpoints are numbered without gaps (#1 deleted, #2 present)."""
    key = LocalKey()
    _ledger(tmp_path / "l.db", key)
    with sqlite3.connect(tmp_path / "l.db") as conn:
        conn.execute("DELETE FROM ledger_checkpoint_heads WHERE checkpoint = 1")
        conn.execute("DELETE FROM ledger_checkpoints WHERE seq = 1")
    report = _verify(tmp_path / "l.db", key, witness=None)
    assert any("checkpoint #1: missing (next present is #2)" in p for p in report.problems), report.problems


def test_entries_after_the_last_checkpoint_are_pending_only_within_the_grace(tmp_path: Path) -> None:
    """Control: an entry not yet covered by a checkpoint is pending within the grace, unproven (a
    problem) without one."""
    key = LocalKey()
    _, open_ = _ledger(tmp_path / "l.db", key)
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", signer=key, checkpoint_interval=None)
    ledger.append(f"decision:{open_}/9", open_, "decision", {"step": 9, "tool": "orders.lookup"})
    ledger.dispose()
    fresh = _verify(tmp_path / "l.db", key, grace=3600)
    assert fresh.problems == [] and (fresh.pending, fresh.unproven, fresh.proven) == (1, 0, 9), fresh.problems
    late = _verify(tmp_path / "l.db", key, grace=0)
    assert late.unproven == 1 and any("unproven" in p for p in late.problems), late.problems


def test_problems_beyond_the_cap_are_counted(tmp_path: Path) -> None:
    """Control: when the chain checker drops problems past its cap, the report says how many."""
    key = LocalKey()
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", signer=key, checkpoint_interval=None)
    for i in range(400):
        ledger.append(f"e:{i}", "run-many", "decision", {"i": i})
    ledger.dispose()
    report = _verify(tmp_path / "l.db", key, grace=0, witness=None)
    assert any(p.startswith("... and ") and p.endswith(" more problems") for p in report.problems), report.problems[-3:]
