"""Runs last (by name): every history this test session produced replays with the current code, and
every decision recorded in the ledger re-evaluates the same against its recorded bundle (scenario 18)."""

from __future__ import annotations

import json

from tests.conftest import cli


async def test_replay_all_histories_of_the_session(env: dict[str, str], worker_running: str, deps: object) -> None:
    result = await cli(env, "replay", "--all", "--json", timeout=600)
    reports = json.loads(result.stdout)
    bad = [r for r in reports if not r["ok"] and not r["run_id"].startswith("forged-")]
    assert bad == [], json.dumps(bad, indent=1)[:4000]
    assert len(reports) >= 20 and sum(r["decisions"] for r in reports) >= 50
