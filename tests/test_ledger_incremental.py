"""The gate's incremental read of a run's ledger (`Ledger.run_events`, activities/runstate.py): it
reads only the rows after those it already authenticated, and still gives exactly what the whole,
authenticated read gives; a forged row (no valid MAC, or not linked to the row before it) is
refused, reported and recorded as the whole read does it; rows another worker appended are seen."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text

from lockgate.activities.anchor import TransitAnchor
from lockgate.activities.ledger import Ledger
from lockgate.activities.ledger.rowkey import VaultRowKeys
from lockgate.config import Settings
from lockgate.evidence import AFTER_CLOSE
from tests.test_ledger_forgery import forge, recorded_findings, unforge


def _open(url: str, deps: Any) -> Ledger:
    return Ledger(
        url,
        signer=TransitAnchor(lambda: deps.vault.client),
        row_key=VaultRowKeys(lambda: deps.vault.client),
        checkpoint_interval=None,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, settings: Settings, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    assert settings.pg_dsn
    name = f"incremental_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.pg_dsn.replace("/shop?", "/postgres?"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield settings.pg_dsn.replace("postgresql://", "postgresql+psycopg://").replace("/shop?", f"/{name}?")


def _append(ledger: Ledger, run: str, kind: str, n: int, **data: Any) -> None:
    assert ledger.append(f"{kind}:{run}:{n}", run, kind, {"step": n, **data})


def test_incremental_read_gives_what_the_whole_read_gives(url: str, deps: Any) -> None:
    ledger, other = _open(url, deps), _open(url, deps)  # two workers on one database
    run = f"run-{uuid.uuid4().hex[:8]}"
    try:
        _append(ledger, run, "decision", 1, outcome="allow")
        first = ledger.run_events(run)
        assert first == ledger.events(run) and [e["step"] for e in first] == [1]
        assert run in ledger._runs

        # New rows, from this worker and from another one, on both of the run's chains.
        _append(ledger, run, "tool.completed", 1, tool="t")
        _append(other, run, "decision", 2, outcome="allow")
        _append(other, run + AFTER_CLOSE, "compensation.outstanding", 2, tool="t")
        seen = ledger.run_events(run)
        assert seen == ledger.events(run)
        assert [e["kind"] for e in seen] == ["decision", "tool.completed", "decision", "compensation.outstanding"]

        # Nothing new: the same answer, nothing refused.
        assert ledger.run_events(run) == seen
    finally:
        ledger.dispose()
        other.dispose()


def test_a_forged_new_row_is_refused_reported_and_never_kept(url: str, deps: Any) -> None:
    ledger = _open(url, deps)
    run = f"run-{uuid.uuid4().hex[:8]}"
    try:
        _append(ledger, run, "decision", 1, outcome="allow")
        _append(ledger, run, "tool.completed", 1, tool="t")
        before = ledger.run_events(run)
        # Written in the database directly, linked and hashed right: only the MAC is missing.
        forged = forge(ledger, run, run, "tool.completed", {"step": 2, "tool": "t", "spent": 10_000})
        try:
            after = ledger.run_events(run)
            assert after == before == ledger.events(run)
            assert not any(e["event_key"] == forged.event_key for e in after)
            assert any(forged.event_key in f for f in recorded_findings(ledger))
            assert run not in ledger._runs
            # And again: every read of the run is the whole read until it is clean.
            assert ledger.run_events(run) == before
        finally:
            unforge(ledger, forged)
        _append(ledger, run, "decision", 2, outcome="allow")
        assert ledger.run_events(run) == ledger.events(run)
        assert [e["step"] for e in ledger.run_events(run)] == [1, 1, 2]
    finally:
        ledger.dispose()


def test_a_kept_row_edited_afterwards_still_counts_for_the_gate(url: str, deps: Any) -> None:
    """Deleting or editing a row the gate already read can only make the gate stricter: the row
    (authentic when read) still counts; every other read refuses the edit and says so."""
    ledger = _open(url, deps)
    run = f"run-{uuid.uuid4().hex[:8]}"
    try:
        _append(ledger, run, "decision", 1, outcome="allow")
        _append(ledger, run, "tool.completed", 1, tool="t")
        kept = ledger.run_events(run)
        with ledger.engine.begin() as conn:
            conn.execute(text("DELETE FROM ledger WHERE event_key = :k"), {"k": f"tool.completed:{run}:1"})
        assert [e["kind"] for e in ledger.events(run)] == ["decision"]
        assert ledger.run_events(run) == kept
    finally:
        ledger.dispose()
