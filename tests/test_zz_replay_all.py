"""Runs last (by name): every history this test session produced replays with the current code, and
every decision recorded in the ledger re-evaluates the same against its recorded bundle (scenario 18)."""

from __future__ import annotations

import json

from tests.conftest import AGENT_MODULES, cli


async def test_replay_all_histories_of_the_session(env: dict[str, str], worker_running: str, deps: object) -> None:
    # The drop-in apps' modules too: their runs replay with the apps' own workflows (issue 33.1).
    result = await cli({**env, "LOCKGATE_AGENT_MODULES": AGENT_MODULES}, "replay", "--all", "--json", timeout=600)
    reports = json.loads(result.stdout)
    bad = [r for r in reports if not r["ok"] and not r["run_id"].startswith("forged-")]
    assert bad == [], json.dumps(bad, indent=1)[:4000]
    # Every governed run is covered: a skip is only a workflow type no loaded module declares
    # (the tests' own throwaway apps), and says so.
    skipped = [r for r in reports if r["skipped"]]
    assert all("no Governance loaded here declares it" in r["skipped"] for r in skipped), skipped
    replayed_types = {r["workflow_type"] for r in reports if not r["skipped"]}
    assert not {"BankSupportWorkflow", "CustomerServiceWorkflow"} & {r["workflow_type"] for r in skipped}
    assert "lockgate.agent" in replayed_types
    assert len(reports) >= 20 and sum(r["decisions"] for r in reports) >= 50
