"""Real-stack tests of the governance activities' own checks, each in isolation (found by `make
mutation`): hostile workflow code calls `gate.evaluate`, `run.seal` and `run.resume` directly with
what lockgate's workflow never sends. Each refusal is set beside the same call with the one thing
right, which is answered, and each refusal must be final (Temporal told never to retry: retrying a
request that can never be valid only repeats it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import Client

from lockgate.models import GateRequest, RunOpen, RunSeal, ToolCall
from tests.conftest import ledger_events, ledger_kinds
from tests.rogue import RogueCallWorkflow

REFUSED_AT_ONCE = "NON_RETRYABLE_FAILURE"


@pytest.fixture
async def rogue(client: Client, worker_running: str) -> AsyncIterator[Any]:
    """Runs RogueCallWorkflow under a chosen workflow id, hosted by the session worker itself (hostile
    code registered beside lockgate's passes the caller check: tests/test_foreign_callers.py covers a
    workflow on a worker of its own); the activity it calls runs on the session worker."""

    async def call(workflow_id: str, activity: str, arg: Any) -> dict[str, Any]:
        spec = {"activity": activity, "arg": arg.model_dump(mode="json"), "queue": worker_running}
        result: dict[str, Any] = await client.execute_workflow(
            RogueCallWorkflow.run, spec, id=workflow_id, task_queue=worker_running
        )
        return result

    yield call


def _id() -> str:
    return f"rogue-{uuid.uuid4().hex[:10]}"


def _gate(run_id: str, *, compensation: bool = False) -> GateRequest:
    """A built-in's gate request (an unknown tool: decided by `gate.evaluate`, not a tool activity)."""
    return GateRequest(
        decision_id=f"{run_id}:1:1",
        run_id=run_id,
        agent="refund-agent",
        initiator="erin",
        step=1,
        call=ToolCall(tool="no.such.tool"),
        compensation=compensation,
    )


def _seal(
    run_id: str, *, origin: str = "origin-1", generation: int = 3, seal: str = "", continued: str = ""
) -> RunSeal:
    return RunSeal(
        run_id=run_id,
        agent="refund-agent",
        origin_run_id=origin,
        generation=generation,
        carry_digest="ab" * 32,
        seal=seal,
        continued_run_id=continued or None,
    )


def _refused(answer: dict[str, Any], needle: str) -> None:
    assert answer["ok"] is False, answer
    assert needle in answer["message"], answer
    assert answer["type"] == "BadInput" and answer["retry_state"] == REFUSED_AT_ONCE, answer


# -- gate.evaluate ---------------------------------------------------------------------------------
async def test_a_gate_request_naming_another_run_is_refused_and_decides_nothing(rogue: Any, deps: Any) -> None:
    """Control: `gate.evaluate` answers only for the calling workflow's own run (a decision recorded
    for another run would be a forged step of it)."""
    me, victim = _id(), _id()
    _refused(await rogue(me, "gate.evaluate", _gate(victim)), "names another run")
    assert ledger_kinds(deps, victim) == []
    # The same request for its own run is decided (an unknown tool: denied) and recorded.
    own = await rogue(me, "gate.evaluate", _gate(me))
    assert own["ok"] and own["result"]["outcome"] == "deny", own
    assert [e["tool"] for e in ledger_events(deps, me, "decision")] == ["no.such.tool"]


async def test_a_built_in_call_claiming_to_be_a_compensation_is_refused(rogue: Any, deps: Any) -> None:
    """Control: only a tool activity can check a compensation claim against the ledger; `gate.evaluate`
    refuses one outright (a compensation passes the kill switch)."""
    me = _id()
    _refused(await rogue(me, "gate.evaluate", _gate(me, compensation=True)), "cannot be a compensation")
    assert ledger_kinds(deps, me) == []


# -- the run checks of run.seal / run.resume (run.open shares them) --------------------------------
async def test_an_invalid_run_id_is_refused_even_when_it_is_the_callers_own(rogue: Any) -> None:
    """Control: `_check_run` requires a valid run id on its own, not only one equal to the caller's
    workflow id (a workflow id outside the run-id syntax could alias records)."""
    me = f"rogue/{uuid.uuid4().hex[:8]}"
    _refused(await rogue(me, "run.seal", _seal(me)), "invalid run id")


def _open(run_id: str) -> RunOpen:
    return RunOpen(run_id=run_id, agent="refund-agent", initiator="erin", ttl_seconds=60, origin_run_id="origin-1")


@pytest.mark.parametrize(
    ("activity", "make"),
    [
        ("run.open", _open),
        ("run.seal", _seal),
        ("run.resume", lambda run_id: _seal(run_id, seal="vault:v1:x", continued="previous-execution")),
    ],
)
async def test_a_run_call_naming_another_run_is_refused(rogue: Any, deps: Any, activity: str, make: Any) -> None:
    """Control: each of run.open, run.seal and run.resume checks (`_check_run`) that the run id is
    the caller's workflow id: a valid id of another run is refused before anything is opened,
    sealed or resumed, and nothing is recorded for that run."""
    me, victim = _id(), _id()
    _refused(await rogue(me, activity, make(victim)), "naming another run")
    assert ledger_kinds(deps, victim) == []


async def test_a_seal_for_its_own_run_is_made(rogue: Any) -> None:
    """The call the refusals above are set beside: the same seal request for the caller's own run."""
    me = _id()
    sealed = await rogue(me, "run.seal", _seal(me))
    assert sealed["ok"] and sealed["result"].startswith("vault:"), sealed


async def test_a_run_check_without_an_origin_execution_is_refused(rogue: Any, deps: Any) -> None:
    """Control: `_check_run` requires the first execution's id (every per-run record is bound to it)."""
    me = _id()
    _refused(await rogue(me, "run.seal", _seal(me, origin="")), "no origin execution given")
    assert [e["reason"] for e in ledger_events(deps, me, "run.refused")] == ["no origin execution given"]


async def test_a_carry_resumes_only_under_its_own_seal(rogue: Any, deps: Any) -> None:
    """Control: `run.resume` accepts exactly the seal the worker made for this carry: the real seal
    resumes, the same seal over a carry one field different (or a made-up seal) is refused."""
    me = _id()
    sealed = await rogue(me, "run.seal", _seal(me))
    assert sealed["ok"], sealed
    seal = sealed["result"]
    resumed = await rogue(me, "run.resume", _seal(me, seal=seal, continued="previous-execution"))
    assert resumed == {"ok": True, "result": True}
    for forged in (
        _seal(me, generation=4, seal=seal, continued="previous-execution"),
        _seal(me, origin="origin-2", seal=seal, continued="previous-execution"),
        _seal(me, seal="vault:v1:" + "A" * 44, continued="previous-execution"),
    ):
        _refused(await rogue(me, "run.resume", forged), "seal does not verify")
    # Not from a continue-as-new: refused before the seal is looked at.
    _refused(await rogue(me, "run.resume", _seal(me, seal=seal)), "only from a continue-as-new")
    # One record per refused attempt (the same refusal of the same execution is recorded once).
    assert sorted((e["origin_run_id"], e["reason"]) for e in ledger_events(deps, me, "run.refused")) == [
        ("origin-1", "a carry is accepted only from a continue-as-new"),
        ("origin-1", "the carry's seal does not verify"),
        ("origin-2", "the carry's seal does not verify"),
    ]
