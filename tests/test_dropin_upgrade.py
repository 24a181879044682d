"""Adding lockgate to an app with runs in flight (README "Adding lockgate to runs in flight"): a run
started without the plugin continues and replays correctly with it (`workflow.patched`), staying
ungoverned; runs started afterwards are governed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer, Worker

with workflow.unsafe.imports_passed_through():
    from lockgate.config import Settings
    from lockgate.dropin import Govern, Governance
    from lockgate.plugin import LockgatePlugin
    from tests.conftest import person
    from tests.dropin_support import app_client, app_deps, ledger


@activity.defn(name="tally")
async def tally(n: int) -> int:
    return n + 1


@workflow.defn
class TallyWorkflow:
    def __init__(self) -> None:
        self.go = False

    @workflow.signal
    def proceed(self) -> None:
        self.go = True

    @workflow.run
    async def run(self) -> int:
        first = await workflow.execute_activity(tally, 1, start_to_close_timeout=timedelta(seconds=10))
        await workflow.wait_condition(lambda: self.go)
        return await workflow.execute_activity(tally, first, start_to_close_timeout=timedelta(seconds=10))


# A plain activity governed drop-in (no policy permits it: every governed call of it is denied).
# It borrows a Vault policy the session's stack provisioned (`tally` needs no secret).
TALLY = Governance(
    "tally_app",
    owner="qa-team",
    tools={"tally": Govern(data_class="public")},
    vault_policy="lockgate-agent-support-agent",
)


@pytest.fixture(scope="module")
def deps(settings: Settings) -> Any:
    """This app's worker dependencies (the session worker's stay as the CLI sees them)."""
    return app_deps(settings)


async def test_a_run_in_flight_continues_and_replays_with_lockgate_added(settings: Settings, deps: Any) -> None:
    task_queue = f"tally-{uuid.uuid4().hex[:8]}"
    before = await app_client(settings, [])
    run_id = f"tally-{uuid.uuid4().hex[:10]}"
    async with Worker(before, task_queue=task_queue, workflows=[TallyWorkflow], activities=[tally]):
        handle = await before.start_workflow(TallyWorkflow.run, id=run_id, task_queue=task_queue)
        for _ in range(100):
            events = (await handle.fetch_history()).events
            if any(e.HasField("activity_task_completed_event_attributes") for e in events):
                break
            await asyncio.sleep(0.1)
    after = await app_client(
        settings, [LockgatePlugin(deps=deps, services=False, govern=[TALLY], start_as=lambda: person("erin"))]
    )
    async with Worker(after, task_queue=task_queue, workflows=[TallyWorkflow], activities=[tally]):
        old = after.get_workflow_handle(run_id)
        await old.signal(TallyWorkflow.proceed)
        assert await old.result() == 3  # replayed its first call, ran its second: no nondeterminism
        kinds = [e["kind"] for e in ledger(deps, run_id)]
        assert "tool.ungoverned" in kinds and "decision" not in kinds
        # A run started now is governed: no policy permits `tally`, so its call is denied.
        new = await after.start_workflow(TallyWorkflow.run, id=f"tally-{uuid.uuid4().hex[:10]}", task_queue=task_queue)
        with pytest.raises(WorkflowFailureError) as info:
            await new.result()
        assert isinstance(info.value.cause, ApplicationError) and info.value.cause.type == "ToolDenied"
        denied = [e for e in ledger(deps, new.id) if e["kind"] == "decision"]
        assert denied and denied[0]["outcome"] == "deny" and denied[0]["agent"] == "tally-app"
    history = await old.fetch_history()
    replay = await Replayer(
        workflows=[TallyWorkflow],
        plugins=[LockgatePlugin(deps=deps, services=False, govern=[TALLY], start_as=lambda: person("erin"))],
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert replay.replay_failure is None
