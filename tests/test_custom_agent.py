"""A team declares its own agent, database and Postgres role, and runs it end to end on a private
stack built by `lockgate.testing.LocalStack`, without touching lockgate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from temporalio.client import WorkflowFailureError

from lockgate.models import RunResult
from lockgate.testing import LocalStack

POLICY = """
@id("notes.add")
permit (principal == Agent::"notes-agent", action == Action::"notes.add", resource);

@id("notes.delete")
permit (principal == Agent::"notes-agent", action == Action::"notes.delete", resource);

// Who may start it (default deny): the requesters (erin, the stack's default initiator).
@id("notes.start")
permit (principal in Group::"requesters", action == lockgate::Action::"start", resource == Agent::"notes-agent");
"""


@pytest.fixture(scope="module")
def notes_stack(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    policies = tmp_path_factory.mktemp("notes-policies")
    (policies / "notes.cedar").write_text(POLICY)
    with LocalStack(agent_modules="tests.custom.notes_agent", policy_dir=policies) as stack:
        yield stack


async def test_a_custom_agent_with_its_own_role_runs_end_to_end(notes_stack: LocalStack, tmp_path: Path) -> None:
    settings = notes_stack.settings()
    # Only the configured agent: the demo agents are not what this stack's worker runs.
    assert notes_stack.deps.agents.names() == ["notes-agent"]
    client = await notes_stack.client()
    async with notes_stack.worker(client):
        ok = await notes_stack.start(client, "notes-agent", {"bodies": ["first", "second"]})
        result = RunResult.model_validate(await asyncio.wait_for(ok.result(), timeout=60))
        assert [s.outcome for s in result.steps] == ["allow", "allow"]
        failing = await notes_stack.start(client, "notes-agent", {"bodies": ["kept?", "fail"]})
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(failing.result(), timeout=60)
        # A run of an agent this worker is not configured with fails at once.
        foreign = await notes_stack.start(client, "refund-agent", {"order_id": "A-1001", "amount_cents": 100})
        with pytest.raises(WorkflowFailureError) as err:
            await asyncio.wait_for(foreign.result(), timeout=30)
        assert "unknown agent" in str(err.value.cause)

    dsn = f"postgresql://postgres:{settings_pg_password(notes_stack)}@/notes?host={settings.pg_socket_dir}"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT body, deleted_at IS NOT NULL FROM notes ORDER BY id").fetchall()
        dynamic = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'").fetchone()
    # The first run's notes stay; the failed run's first note was compensated (deleted).
    assert rows == [("first", False), ("second", False), ("kept?", True)]
    # Each call ran as its own dynamic role, revoked afterwards: none is left.
    assert dynamic == (0,)
    assert {s.summary for s in result.steps} == {"noted 'first'", "noted 'second'"}


def settings_pg_password(stack: LocalStack) -> str:
    return stack.env()["LOCKGATE_PG_PASSWORD"]
