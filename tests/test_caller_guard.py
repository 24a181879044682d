"""The caller check on its own (activities/callers.py), against a real Temporal server.

tests/test_foreign_callers.py attacks lockgate's worker as a whole; there the caller check and the
activities' own run checks back each other up, so one of them disabled changes nothing a caller
sees. Here each fact the check relies on is varied alone: what the activity's info claims (as a
worker that lies about it would) against what Temporal's server holds about the execution. Every
refusal is at once, never retried, and recorded with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from lockgate.activities import callers
from lockgate.activities.callers import CallerFacts, CallerGuard, verified_caller
from lockgate.errors import BAD_INPUT
from tests.rogue import RogueCallWorkflow

PROBE = "tests.caller.probe"
OTHER = "tests.caller.other"
UNHOSTED = "tests.caller.unhosted"


@workflow.defn(name=PROBE)
class ProbeWorkflow:
    """Continues as new `hops` times, then waits to be told to end."""

    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self, hops: int) -> None:
        if hops > 0:
            workflow.continue_as_new(hops - 1)
        await workflow.wait_condition(lambda: self._done)

    @workflow.signal
    def done(self) -> None:
        self._done = True


@workflow.defn(name=OTHER)
class OtherWorkflow(ProbeWorkflow):
    @workflow.run
    async def run(self, hops: int) -> None:
        await super().run(hops)


@workflow.defn(name=UNHOSTED)
class UnhostedWorkflow(ProbeWorkflow):
    @workflow.run
    async def run(self, hops: int) -> None:
        await super().run(hops)


@workflow.defn(name="tests.caller.parent")
class ParentWorkflow:
    """Runs a PROBE child with the given workflow id (its Temporal parent)."""

    @workflow.run
    async def run(self, child_id: str) -> None:
        await workflow.execute_child_workflow(ProbeWorkflow.run, 0, id=child_id)


class Executions:
    """Real executions of the probe types on one task queue (a worker runs them there)."""

    def __init__(self, client: Client, queue: str) -> None:
        self.client, self.queue = client, queue
        self.handles: list[WorkflowHandle[Any, Any]] = []

    async def start(self, workflow_type: str, hops: int = 0) -> tuple[str, str, str]:
        """(workflow id, current run id, first run id) of a running execution of `workflow_type`."""
        workflow_id = f"caller-{uuid.uuid4().hex[:10]}"
        handle = await self.client.start_workflow(workflow_type, hops, id=workflow_id, task_queue=self.queue)
        self.handles.append(handle)
        assert handle.result_run_id is not None
        run_id = handle.result_run_id
        latest = self.client.get_workflow_handle(workflow_id)
        while hops > 0 and run_id == handle.result_run_id:  # until the continued execution runs
            run_id = (await latest.describe()).run_id
        return workflow_id, run_id, handle.result_run_id

    async def start_child(self) -> tuple[str, str, str]:
        """(parent's workflow id, child's workflow id, child's run id) of a running PROBE child."""
        parent_id = f"caller-{uuid.uuid4().hex[:10]}"
        child_id = f"{parent_id}.1"
        self.handles.append(
            await self.client.start_workflow(ParentWorkflow.run, child_id, id=parent_id, task_queue=self.queue)
        )
        child = self.client.get_workflow_handle(child_id)
        while True:  # until the parent's first task started it
            try:
                return parent_id, child_id, (await child.describe()).run_id
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                await asyncio.sleep(0.05)


@pytest.fixture
async def executions(client: Client) -> AsyncIterator[Executions]:
    queue = f"callers-{uuid.uuid4().hex[:8]}"
    found = Executions(client, queue)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[ProbeWorkflow, OtherWorkflow, UnhostedWorkflow, ParentWorkflow],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        yield found
        for handle in found.handles:
            with contextlib.suppress(RPCError):  # a child ends with its parent
                await client.get_workflow_handle(handle.id).terminate("test over")


class Guard:
    """A guard for the executions' queue hosting PROBE and OTHER, and what it recorded."""

    def __init__(self, client: Client, queue: str, *, record_fails: bool = False) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self.record_fails = record_fails
        self.guard = CallerGuard(client=client, task_queue=queue, hosted=frozenset({PROBE, OTHER}), record=self._record)

    def _record(self, key: str, run_id: str, data: dict[str, Any]) -> None:
        if self.record_fails:
            raise RuntimeError("the ledger is down")
        self.records.append((key, run_id, data))

    async def establish(self, **claims: Any) -> CallerFacts:
        """The guard's answer to a lockgate activity (`gate.evaluate` unless `activity_type` says
        otherwise) whose activity info claims `claims`."""
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, **{"activity_type": "gate.evaluate", **claims})
        facts: CallerFacts = await env.run(self.guard.establish)
        return facts

    async def refusal(self, **claims: Any) -> str:
        """The reason the guard refuses, checking the refusal is final and recorded."""
        with pytest.raises(ApplicationError) as raised:
            await self.establish(**claims)
        err = raised.value
        assert err.non_retryable and err.type == BAD_INPUT, err
        reason = str(err.message).split(": refused: ", 1)[1]
        if not self.record_fails:
            assert [data["reason"] for _, _, data in self.records][-1] == reason
        return reason


async def test_a_hosted_execution_on_the_workers_queue_is_served_with_its_first_execution(
    client: Client, executions: Executions
) -> None:
    workflow_id, run_id, first = await executions.start(PROBE, hops=1)
    assert run_id != first
    guard = Guard(client, executions.queue)
    facts = await guard.establish(workflow_id=workflow_id, workflow_run_id=run_id, workflow_type=PROBE)
    assert facts == CallerFacts(workflow_id, run_id, PROBE, executions.queue, first)
    assert guard.records == []


@pytest.mark.parametrize("missing", ["workflow_type", "workflow_id", "workflow_run_id"])
async def test_an_activity_no_workflow_scheduled_is_refused(client: Client, missing: str) -> None:
    guard = Guard(client, "anywhere")
    claims: dict[str, Any] = {"workflow_type": PROBE, "workflow_id": "w", "workflow_run_id": str(uuid.uuid4())}
    assert await guard.refusal(**{**claims, missing: None}) == "not scheduled by a workflow"


async def test_an_execution_of_a_type_the_worker_does_not_host_is_refused_even_on_its_queue(
    client: Client, executions: Executions
) -> None:
    workflow_id, run_id, _ = await executions.start(UNHOSTED)
    guard = Guard(client, executions.queue)
    reason = await guard.refusal(workflow_id=workflow_id, workflow_run_id=run_id, workflow_type=UNHOSTED)
    assert reason == f"workflow type {UNHOSTED!r} is not one this worker governs"


async def test_the_servers_type_counts_not_the_type_the_activity_claims(client: Client, executions: Executions) -> None:
    workflow_id, run_id, _ = await executions.start(OTHER)
    guard = Guard(client, executions.queue)
    reason = await guard.refusal(workflow_id=workflow_id, workflow_run_id=run_id, workflow_type=PROBE)
    assert reason == f"the server says the caller is a {OTHER!r}, not a {PROBE!r}"


async def test_a_hosted_type_on_another_queue_is_refused(client: Client, executions: Executions) -> None:
    workflow_id, run_id, _ = await executions.start(PROBE)
    guard = Guard(client, "lockgate-queue")
    reason = await guard.refusal(workflow_id=workflow_id, workflow_run_id=run_id, workflow_type=PROBE)
    assert f"runs on task queue {executions.queue!r}, not on lockgate's 'lockgate-queue'" in reason


async def test_an_execution_the_server_does_not_know_is_refused_at_once(client: Client) -> None:
    guard = Guard(client, "lockgate-queue")
    reason = await guard.refusal(workflow_id="never-started", workflow_run_id=str(uuid.uuid4()), workflow_type=PROBE)
    assert reason == "no such execution on the server (NOT_FOUND)"


async def test_a_local_activity_is_its_own_workflows_without_asking_the_server(client: Client) -> None:
    """Scheduled in-process by this worker's own workflow task: served as that workflow's, with no
    first execution (the run checks then use the workflow's own)."""
    guard = Guard(client, "lockgate-queue")
    run_id = str(uuid.uuid4())
    facts = await guard.establish(workflow_id="in-process", workflow_run_id=run_id, workflow_type=PROBE, is_local=True)
    assert facts == CallerFacts("in-process", run_id, PROBE, "lockgate-queue", "")


async def test_run_open_as_a_local_activity_still_gets_the_servers_facts_its_parent_included(
    client: Client, executions: Executions
) -> None:
    """`run.open` decides whether a sub-agent's named parent is its Temporal parent: even scheduled
    in-process, its caller is described by the server (once per run), its parent included."""
    guard = Guard(client, executions.queue)
    parent_id, child_id, child_run = await executions.start_child()
    local_open: dict[str, Any] = {"is_local": True, "activity_type": "run.open"}
    facts = await guard.establish(workflow_id=child_id, workflow_run_id=child_run, workflow_type=PROBE, **local_open)
    assert facts == CallerFacts(child_id, child_run, PROBE, executions.queue, child_run, parent_id)
    reason = await guard.refusal(
        workflow_id="never-started", workflow_run_id=str(uuid.uuid4()), workflow_type=PROBE, **local_open
    )
    assert reason == "no such execution on the server (NOT_FOUND)"


async def test_a_refusal_the_ledger_cannot_record_still_refuses(client: Client) -> None:
    guard = Guard(client, "lockgate-queue", record_fails=True)
    reason = await guard.refusal(workflow_id="w", workflow_run_id=str(uuid.uuid4()), workflow_type=UNHOSTED)
    assert reason == f"workflow type {UNHOSTED!r} is not one this worker governs"


async def test_the_known_callers_are_bounded_and_the_least_recently_seen_go_first(
    client: Client, executions: Executions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(callers, "CACHE_SIZE", 2)
    guard = Guard(client, executions.queue)
    runs = [await executions.start(PROBE) for _ in range(4)]

    async def seen(i: int) -> None:
        workflow_id, run_id, _ = runs[i]
        await guard.establish(workflow_id=workflow_id, workflow_run_id=run_id, workflow_type=PROBE)

    def kept() -> list[str]:
        return [run for run, _ in guard.guard._known.items()]  # pyright: ignore[reportPrivateUsage]

    await seen(0)
    await seen(1)
    await seen(2)
    assert kept() == [runs[1][1], runs[2][1]]
    await seen(1)  # seen again: now the most recent
    await seen(3)
    assert kept() == [runs[1][1], runs[3][1]]


# -- the interceptor on a real worker ----------------------------------------------------------------
@activity.defn(name="tests.caller.governed")
async def governed_activity(_arg: Any = None) -> dict[str, Any]:
    facts = verified_caller()
    assert facts is not None
    return dataclasses.asdict(facts)


@activity.defn(name="tests.caller.plain")
async def plain_activity(_arg: Any = None) -> str:
    assert verified_caller() is None
    return "ran"


async def test_the_worker_proves_the_callers_of_its_own_activities_and_no_others(client: Client) -> None:
    """On a worker with the guard, the activities it guards serve only hosted executions on its own
    queue (and see the proven caller); an activity it does not guard serves anyone, unchecked."""
    queue, elsewhere = f"guarded-{uuid.uuid4().hex[:8]}", f"elsewhere-{uuid.uuid4().hex[:8]}"
    records: list[tuple[str, str, dict[str, Any]]] = []
    guard = CallerGuard(
        client=client,
        task_queue=queue,
        hosted=frozenset({"tests.rogue.call"}),
        record=lambda key, run_id, data: records.append((key, run_id, data)),
        guarded=lambda name: name == "tests.caller.governed",
    )

    async def call(activity_type: str, on: str) -> dict[str, Any]:
        spec = {"activity": activity_type, "arg": None, "queue": queue}
        workflow_id = f"caller-{uuid.uuid4().hex[:8]}"
        out: dict[str, Any] = await client.execute_workflow(RogueCallWorkflow.run, spec, id=workflow_id, task_queue=on)
        return out

    runner = UnsandboxedWorkflowRunner()
    async with (
        Worker(
            client,
            task_queue=queue,
            workflows=[RogueCallWorkflow],
            activities=[governed_activity, plain_activity],
            interceptors=[guard],
            workflow_runner=runner,
        ),
        Worker(client, task_queue=elsewhere, workflows=[RogueCallWorkflow], workflow_runner=runner),
    ):
        served = await call("tests.caller.governed", queue)
        assert served["ok"], served
        assert served["result"]["task_queue"] == queue and served["result"]["workflow_type"] == "tests.rogue.call"
        refused = await call("tests.caller.governed", elsewhere)
        assert not refused["ok"] and refused["retry_state"] == "NON_RETRYABLE_FAILURE", refused
        assert "not on lockgate's" in refused["message"]
        assert len(records) == 1
        plain = await call("tests.caller.plain", elsewhere)
        assert plain == {"ok": True, "result": "ran"}
        assert len(records) == 1
