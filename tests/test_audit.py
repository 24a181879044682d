"""Audit: tamper-evident ledger (scenario 17), timelines, replay (scenario 18), continue-as-new."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from sqlalchemy import text
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from lockgate.activities.ledger import Ledger
from lockgate.config import Settings
from tests import agents
from tests.support.stack import cli, finish, start, status_of


def test_ledger_detects_edits_deletions_and_insertions(tmp_path: Any) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    for i in range(5):
        assert ledger.append(f"e{i}", "run-1", "decision", {"i": i})
    assert not ledger.append("e2", "run-1", "decision", {"i": 2})  # idempotent by event key
    assert ledger.verify() == []
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE ledger SET data = '{\"i\": 99}' WHERE seq = 3"))
    assert any("seq 3" in p and "edited" in p for p in ledger.verify())
    with ledger.engine.begin() as conn:
        row = conn.execute(text("SELECT * FROM ledger WHERE seq = 3")).mappings().one()
        fixed = json.dumps({"i": 2}, separators=(",", ":"))
        conn.execute(text("UPDATE ledger SET data = :d WHERE seq = 3"), {"d": fixed})
        assert row["seq"] == 3
    assert ledger.verify() == []
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger WHERE seq = 2"))
    assert any("missing entry" in p for p in ledger.verify())


def test_ledger_on_postgres(settings: Settings, worker_running: str) -> None:
    assert settings.pg_dsn
    name = f"ledger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.pg_dsn.replace("/shop?", "/postgres?"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = settings.pg_dsn.replace("postgresql://", "postgresql+psycopg://").replace("/shop?", f"/{name}?")
    ledger = Ledger(url)
    try:
        for i in range(20):
            ledger.append(f"k{i}", "run-pg", "decision", {"i": i})
        assert ledger.try_append("k3", "run-pg", "decision", {"i": 3}) is False
        assert [e["i"] for e in ledger.events("run-pg")] == list(range(20))
        assert ledger.verify() == []
        with ledger.engine.begin() as conn:
            conn.execute(text("UPDATE ledger SET run_id = 'other' WHERE seq = 7"))
        assert any("seq 7" in p for p in ledger.verify())
    finally:
        ledger.dispose()


async def test_cli_verify_exits_1_on_a_tampered_ledger(env: dict[str, str], tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'tampered.db'}"
    ledger = Ledger(url)
    for i in range(3):
        ledger.append(f"t{i}", "run-t", "decision", {"i": i})
    ok = await cli({**env, "LOCKGATE_LEDGER_URL": url}, "verify")
    assert ok.returncode == 0 and "intact" in ok.stdout
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger WHERE seq = 1"))
    bad = await cli({**env, "LOCKGATE_LEDGER_URL": url}, "verify", "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["intact"] is False


async def test_continue_as_new_keeps_state_and_audit_and_replay_follow_the_chain(
    client: Client, worker_running: str, deps: Any, env: dict[str, str]
) -> None:
    steps = [{"tool": "qa.mark", "args": {"label": f"long-{i}"}} for i in range(14)]
    steps.append({"tool": "qa.explode", "args": {"why": "end of a long run"}})
    agents.UNDONE.clear()
    handle = await start(client, worker_running, "long-agent", {"steps": steps}, initiator="erin")
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and "end of a long run" in cause.message
    runs = [wf async for wf in client.list_workflows(f'WorkflowId = "{handle.id}"')]
    assert len(runs) >= 3, f"the run continued as new ({len(runs)} histories)"
    # Compensations registered before each continue-as-new still ran, newest first.
    assert agents.UNDONE == [f"long-{i}" for i in reversed(range(14))]
    status = await status_of(client.get_workflow_handle(handle.id))
    assert status.step == 15 + 14 and len(status.steps) == 15

    audit = await cli(env, "audit", handle.id, "--format", "json")
    doc = json.loads(audit.stdout)
    history = [e["summary"] for e in doc["entries"] if e["kind"] == "history"]
    assert sum("continued as new" in h for h in history) == len(runs) - 1
    assert len([e for e in doc["entries"] if e["kind"] == "decision"]) == 15 + 14

    replay = await cli(env, "replay", handle.id, "--json")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    (report,) = json.loads(replay.stdout)
    assert report["ok"] and report["histories"] == len(runs) and report["decisions"] == 29


async def test_replay_all_passes_and_catches_a_changed_decision(
    client: Client, worker_running: str, deps: Any, env: dict[str, str]
) -> None:
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 120})
    assert await finish(handle) is None
    result = await cli(env, "replay", "--all")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert " 0 with mismatches" in result.stdout

    # Forge the ledger's record of a decision: replay re-evaluates it and disagrees.
    ledger: Ledger = deps.ledger
    forged_run = f"forged-{uuid.uuid4().hex[:6]}"
    (entry,) = [e for e in ledger.entries(handle.id) if e.kind == "decision"][:1]
    data = json.loads(entry.data)
    data["request"]["run_id"] = forged_run
    data["request"]["call"]["args"]["order_id"] = "not-an-order"  # now fails the args schema
    data["decision_id"] = f"{forged_run}/1/1"
    ledger.append(f"decision:{forged_run}/1/1", forged_run, "decision", data)
    bad = await cli(env, "replay", forged_run)
    assert bad.returncode == 1
    assert "recorded allow by policy" in bad.stdout and "re-evaluated deny by args" in bad.stdout


async def test_replay_catches_nondeterministic_code(client: Client, worker_running: str, deps: Any) -> None:
    """A workflow whose code changed under a recorded history fails replay."""
    from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

    from lockgate.workflows import agent as agent_module

    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 110})
    assert await finish(handle) is None
    history = await handle.fetch_history()
    original = agent_module.AgentWorkflow._until_ran

    async def reordered(self: Any, *args: Any) -> Any:
        await agent_module.workflow.sleep(1)  # a timer the recorded history never had
        return await original(self, *args)

    agent_module.AgentWorkflow._until_ran = reordered  # type: ignore[method-assign]
    try:
        # Unsandboxed: the sandbox would re-import the module and not see this change.
        result = await Replayer(
            workflows=[agent_module.AgentWorkflow],
            data_converter=client.data_converter,
            workflow_runner=UnsandboxedWorkflowRunner(),
        ).replay_workflow(history, raise_on_replay_failure=False)
    finally:
        agent_module.AgentWorkflow._until_ran = original  # type: ignore[method-assign]
    assert result.replay_failure is not None
