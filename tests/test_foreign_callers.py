"""A workflow that is not lockgate's calls lockgate's activities (SCENARIOS 20, 21).

Anyone with a Temporal client can run a worker and a workflow of their own, on their own task queue,
and schedule lockgate's activities on lockgate's queue with arguments they wrote. The worker proves
its caller from Temporal's own facts (activities/callers.py): each such call is refused at once,
never retried, runs nothing, decides nothing, leases nothing, and is recorded as `caller.refused`.
The same calls from a run lockgate governs are answered (tests/test_mutation_governance.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from lockgate import names
from lockgate.models import AuditEvent, GateRequest, RunClose, RunOpen, RunSeal, ToolCall, ToolInvocation
from tests.conftest import Outside, ledger_events, ledger_kinds
from tests.rogue import RogueCallWorkflow, SpoofedAgentWorkflow

REFUSED_AT_ONCE = "NON_RETRYABLE_FAILURE"


@pytest.fixture
async def foreign(client: Client, worker_running: str) -> AsyncIterator[Any]:
    """Runs a hostile workflow on a worker and task queue of its own; the activity it schedules goes
    to the session worker's (lockgate's) queue."""
    queue = f"foreign-{uuid.uuid4().hex[:8]}"

    async def call(workflow_id: str, activity: str, arg: Any, *, spoofed: bool = False) -> dict[str, Any]:
        spec = {"activity": activity, "arg": arg.model_dump(mode="json"), "queue": worker_running}
        wf = SpoofedAgentWorkflow if spoofed else RogueCallWorkflow
        result: dict[str, Any] = await client.execute_workflow(wf.run, spec, id=workflow_id, task_queue=queue)
        return result

    async with Worker(client, task_queue=queue, workflows=[RogueCallWorkflow]):
        yield call


@pytest.fixture
async def spoofing(client: Client, worker_running: str) -> AsyncIterator[Any]:
    """A worker of its own hosting a workflow type named `lockgate.agent` (not lockgate's code)."""
    queue = f"spoof-{uuid.uuid4().hex[:8]}"

    async def call(workflow_id: str, activity: str, arg: Any) -> dict[str, Any]:
        spec = {"activity": activity, "arg": arg.model_dump(mode="json"), "queue": worker_running}
        result: dict[str, Any] = await client.execute_workflow(
            "lockgate.agent", spec, id=workflow_id, task_queue=queue, result_type=dict
        )
        return result

    async with Worker(client, task_queue=queue, workflows=[SpoofedAgentWorkflow]):
        yield call


def _id() -> str:
    return f"foreign-{uuid.uuid4().hex[:10]}"


def _gate(run_id: str, tool: str = "no.such.tool", **args: Any) -> GateRequest:
    return GateRequest(
        decision_id=f"{run_id}/1/1",
        run_id=run_id,
        agent="refund-agent",
        initiator="erin",
        step=1,
        call=ToolCall(tool=tool, args=args),
    )


def _calls(run_id: str) -> list[tuple[str, Any]]:
    """One well-formed call of each kind, as a forger would write it for its own workflow id."""
    now = datetime.now(UTC)
    refund = _gate(run_id, "refunds.issue", order_id="A-1001", amount_cents=100)
    return [
        (names.GATE_EVALUATE, _gate(run_id)),
        (
            names.RUN_OPEN,
            RunOpen(run_id=run_id, agent="refund-agent", initiator="erin", ttl_seconds=60, origin_run_id="x"),
        ),
        (names.RUN_CLOSE, RunClose(run_id=run_id, accessor=None, state="completed", origin_run_id="x")),
        (
            names.RUN_SEAL,
            RunSeal(run_id=run_id, agent="refund-agent", origin_run_id="x", generation=1, carry_digest="ab" * 32),
        ),
        (
            names.AUDIT_RECORD,
            AuditEvent(
                event_key=f"compensation.outstanding:{run_id}:1",
                run_id=run_id,
                kind="compensation.outstanding",
                data={"step": 1, "tool": "refunds.reverse", "args": {"idempotency_key": "victim:1"}},
                at=now,
            ),
        ),
        (
            names.tool_activity("refunds.issue"),
            ToolInvocation(run_id=run_id, step=1, tool="refunds.issue", idempotency_key=f"{run_id}:1", gate=refund),
        ),
    ]


def _refused(answer: dict[str, Any]) -> None:
    assert answer["ok"] is False, answer
    assert "not a run lockgate governs" in answer["message"] or "not one this worker governs" in answer["message"], (
        answer
    )
    assert answer["type"] == "BadInput" and answer["retry_state"] == REFUSED_AT_ONCE, answer


async def test_a_foreign_workflow_is_refused_by_every_lockgate_activity(
    foreign: Any, deps: Any, outside: Outside
) -> None:
    """Control: the caller check. Without it each call below would be answered (a decision
    recorded, a seal made, an audit entry written, a tool gated) for a run lockgate never started."""
    for activity, arg in _calls(run_id := _id()):
        answer = await foreign(run_id, activity, arg)
        _refused(answer)
        assert activity in answer["message"]
    kinds = ledger_kinds(deps, run_id)
    assert set(kinds) == {"caller.refused"}, kinds  # nothing else: no decision, no audit entry, no lease
    refused = ledger_events(deps, run_id, "caller.refused")
    assert {e["activity"] for e in refused} == {a for a, _ in _calls(run_id)}
    assert all(e["workflow_type"] == "tests.rogue.call" for e in refused)
    assert outside.refunds(run_id) == []
    outside.assert_nothing_leaked()


async def test_a_workflow_named_like_lockgates_on_its_own_queue_is_refused(
    spoofing: Any, deps: Any, outside: Outside
) -> None:
    """Control: the task-queue fact. The type name is the forger's choice; where the execution runs is
    Temporal's fact, and it is not lockgate's queue."""
    run_id = _id()
    for activity, arg in _calls(run_id):
        answer = await spoofing(run_id, activity, arg)
        _refused(answer)
        assert "runs on task queue" in answer["message"], answer
    assert set(ledger_kinds(deps, run_id)) == {"caller.refused"}
    assert all(e["workflow_type"] == names.WORKFLOW_AGENT for e in ledger_events(deps, run_id, "caller.refused"))
    assert outside.refunds(run_id) == []


async def test_the_same_call_from_a_governed_workflow_is_answered(
    client: Client, worker_running: str, deps: Any
) -> None:
    """The other side of the check: the session worker hosts the hostile workflow beside lockgate's
    (tests/conftest.py), so the caller is proven and the activity's own checks decide."""
    run_id = _id()
    spec = {"activity": names.GATE_EVALUATE, "arg": _gate(run_id).model_dump(mode="json"), "queue": worker_running}
    answer = await client.execute_workflow(RogueCallWorkflow.run, spec, id=run_id, task_queue=worker_running)
    assert answer["ok"] is True and answer["result"]["outcome"] == "deny", answer
    assert "caller.refused" not in ledger_kinds(deps, run_id)
    assert [d["tool"] for d in ledger_events(deps, run_id, "decision")] == ["no.such.tool"]
