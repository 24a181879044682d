"""Real-stack tests of a sub-agent's link as `run.open` checks it, each in isolation (found by `make
mutation`): the link must match Temporal's parent facts, the sub-agent's id must be `<parent
id>.<step>`, the parent's identity must be open in Vault, its ledger must hold an allowed
`agent.delegate` decision at that step with exactly the same agent, tools and budget, its identity
record must name the same agent and Vault policy, and the sub-agent's deadline may not pass its
parent's.

The parent opens through lockgate's own `run.open` (erin's signed start) and asks lockgate's own
`gate.evaluate` to decide its calls, as the agent workflow does: its Vault record and ledger are
exactly what lockgate wrote. Hostile workflow code registered on the worker (it passes the caller
check) then asks `run.open` for a sub-agent with a link that is right in every way but ONE: each
is refused at once, recorded, and opens nothing. The same call with nothing wrong is answered."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from lockgate.identity import sign
from lockgate.models import DELEGATE_TOOL, GateRequest, GateState, ParentLink, RunOpen, ToolCall
from lockgate.people import FieldValue
from lockgate.worker import build_governance
from tests.rogue import RogueCallWorkflow
from tests.support.hostile import refused_by_activity
from tests.support.stack import ledger_events, person

AGENT = "script-agent"  # may delegate to itself (tests/agents.py)
TOOLS = ("refunds.issue",)
BUDGET = 1000
DELEGATION: dict[str, Any] = {"agent": AGENT, "tools": list(TOOLS), "budget": BUDGET, "input": {"steps": []}}

NOT_ALLOWED = "parent link is not what the parent's gate allowed"
NOT_PARENTS = "parent link names another agent or Vault policy than the parent's"
PAST = "sub-agent deadline is past its parent's"
NOT_TEMPORAL_PARENT = "parent link does not match the run's Temporal parent"
NOT_PARENT_ID = "a sub-agent's id must be <parent id>.<step>"
NO_IDENTITY = "has no open identity"


@dataclass(frozen=True)
class Parent:
    run_id: str
    policy: str  # its identity's Vault policy
    expires_at: datetime  # when its identity ends, as its Vault record says


async def _execute(
    client: Client, queue: str, workflow_id: str, calls: list[tuple[str, Any]], *, parent: str | None = None
) -> list[dict[str, Any]]:
    """Hostile workflow code (RogueCallWorkflow, on the session worker) under `workflow_id`: the
    calls in one execution, each `run.*` call naming that execution's first execution as the run's
    origin; with `parent`, that execution is a child of an execution with that workflow id (its
    Temporal parent, as a sub-agent's is)."""
    spec: dict[str, Any] = {
        "queue": queue,
        "calls": [
            {"activity": a, "arg": arg.model_dump(mode="json"), "own_origin": a.startswith("run.")} for a, arg in calls
        ],
    }
    if parent is not None:
        spec, workflow_id = {"queue": queue, "child": {"id": workflow_id, "spec": spec}}, parent
    out: dict[str, Any] = await client.execute_workflow(RogueCallWorkflow.run, spec, id=workflow_id, task_queue=queue)
    return out["answers"]


def _gate(run_id: str, step: int, tool: str, args: dict[str, Any], state: GateState) -> GateRequest:
    return GateRequest(
        decision_id=f"{run_id}:{step}:1",
        run_id=run_id,
        agent=AGENT,
        initiator="erin",
        step=step,
        call=ToolCall(tool=tool, args=args),
        state=state,
        source="script",
    )


# (step, tool, args, the state the workflow claims, the outcome the gate must decide)
Decided = tuple[int, str, dict[str, Any], GateState, str]
DELEGATES: Decided = (1, DELEGATE_TOOL, DELEGATION, GateState(), "allow")


async def _open_parent(client: Client, queue: str, deps: Any, ttl: int, decided: list[Decided]) -> Parent:
    """erin starts a script-agent run (her signed start); its gate then decides `decided`."""
    run_id = f"parent-{uuid.uuid4().hex[:10]}"
    digest = "ab" * 32
    fields: dict[str, FieldValue] = {"run_id": run_id, "agent": AGENT, "input_digest": digest}
    signed = await asyncio.to_thread(sign, person("erin"), "start", fields)
    ask = RunOpen(
        run_id=run_id,
        agent=AGENT,
        initiator="erin",
        ttl_seconds=ttl,
        origin_run_id="",
        start=signed,
        input_digest=digest,
    )
    gates = [("gate.evaluate", _gate(run_id, step, tool, args, state)) for step, tool, args, state, _ in decided]
    opened, *answers = await _execute(client, queue, run_id, [("run.open", ask), *gates])
    assert opened["ok"], opened
    for answer, (step, tool, *_, outcome) in zip(answers, decided, strict=True):
        assert answer["ok"] and answer["result"]["outcome"] == outcome, (step, tool, answer)
    record = deps.vault.read_run(run_id)
    assert record is not None
    return Parent(run_id, str(record["policies"]), datetime.fromisoformat(str(record["expires_at"])))


def _link(parent: Parent, **wrong: Any) -> ParentLink:
    """The link exactly as the parent's gate allowed it at step 1 (or 5), but for `wrong`."""
    exact = ParentLink(
        run_id=parent.run_id,
        agent=AGENT,
        vault_policy=parent.policy,
        boundary=TOOLS,
        budget=BUDGET,
        deadline_at=parent.expires_at,
    )
    return exact.model_copy(update=wrong)


_UNSET: Any = object()


def _ask(
    parent: Parent, run_id: str, *, agent: str = AGENT, link: Any = _UNSET, parent_run_id: Any = _UNSET, ttl: int = 60
) -> RunOpen:
    return RunOpen(
        run_id=run_id,
        agent=agent,
        initiator="erin",
        ttl_seconds=ttl,
        origin_run_id="",
        parent_run_id=parent.run_id if parent_run_id is _UNSET else parent_run_id,
        parent=_link(parent) if link is _UNSET else link,
    )


def _nothing_opened(deps: Any, run_id: str, reason: str) -> None:
    assert deps.vault.read_run(run_id) is None
    assert ledger_events(deps, run_id, "run.opened") == []
    assert reason in [e["reason"] for e in ledger_events(deps, run_id, "run.refused")]


@pytest.fixture(scope="module")
async def parent(client: Client, worker_running: str, deps: Any) -> AsyncIterator[Parent]:
    """A parent whose gate allowed a delegation at steps 1 and 5, denied the same delegation at
    step 2 (its budget spent, as it claims), and allowed another tool at step 3; nothing at step 4."""
    spent = GateState(spent=25000)
    mark = (3, "qa.mark", {"label": "not a delegation"}, GateState(), "allow")
    decided = [
        DELEGATES,
        (2, DELEGATE_TOOL, DELEGATION, spent, "deny"),
        mark,
        (5, DELEGATE_TOOL, DELEGATION, GateState(), "allow"),
    ]
    found = await _open_parent(client, worker_running, deps, 600, decided)
    yield found
    for run_id in (f"{found.run_id}.5", found.run_id):
        deps.vault.close_run(run_id, None)


CASES: list[tuple[str, Callable[[Parent], RunOpen], str]] = [
    # What the parent's gate allowed at the step: the same agent, tools and budget, nothing else.
    ("another-agent", lambda p: _ask(p, f"{p.run_id}.1", agent="refund-agent"), NOT_ALLOWED),
    ("wider-tools", lambda p: _ask(p, f"{p.run_id}.1", link=_link(p, boundary=(*TOOLS, "qa.mark"))), NOT_ALLOWED),
    ("bigger-budget", lambda p: _ask(p, f"{p.run_id}.1", link=_link(p, budget=BUDGET + 1)), NOT_ALLOWED),
    ("denied-at-that-step", lambda p: _ask(p, f"{p.run_id}.2"), NOT_ALLOWED),
    ("another-tool-at-that-step", lambda p: _ask(p, f"{p.run_id}.3"), NOT_ALLOWED),
    ("allowed-only-at-other-steps", lambda p: _ask(p, f"{p.run_id}.4"), NOT_ALLOWED),
    # The parent's own identity, as its Vault record names it.
    ("another-parent-agent", lambda p: _ask(p, f"{p.run_id}.1", link=_link(p, agent="refund-agent")), NOT_PARENTS),
    (
        "another-vault-policy",
        lambda p: _ask(p, f"{p.run_id}.1", link=_link(p, vault_policy="lockgate-agent-incident-agent")),
        NOT_PARENTS,
    ),
    (
        "deadline-just-past-the-parents",
        lambda p: _ask(
            p, f"{p.run_id}.1", link=_link(p, deadline_at=p.expires_at + timedelta(seconds=5, milliseconds=1))
        ),
        PAST,
    ),
    # Temporal's parent facts and the sub-agent's id.
    (
        "temporal-parent-is-another-run",
        lambda p: _ask(p, f"{p.run_id}.1", parent_run_id=f"{p.run_id}-other"),
        NOT_TEMPORAL_PARENT,
    ),
    ("no-temporal-parent", lambda p: _ask(p, f"{p.run_id}.1", parent_run_id=None), NOT_TEMPORAL_PARENT),
    ("a-temporal-parent-but-no-link", lambda p: _ask(p, f"{p.run_id}.1", link=None), NOT_TEMPORAL_PARENT),
    ("id-under-another-run", lambda p: _ask(p, f"other-{p.run_id}.1"), NOT_PARENT_ID),
]


@pytest.mark.parametrize(("ask", "reason"), [pytest.param(a, r, id=name) for name, a, r in CASES])
async def test_a_sub_agent_link_one_thing_off_is_refused(
    client: Client, worker_running: str, deps: Any, parent: Parent, ask: Callable[[Parent], RunOpen], reason: str
) -> None:
    """Control: each of `_check_parent`'s conditions on its own refuses the sub-agent's identity."""
    request = ask(parent)
    (answer,) = await _execute(client, worker_running, request.run_id, [("run.open", request)], parent=parent.run_id)
    refused_by_activity(answer, reason)
    _nothing_opened(deps, request.run_id, reason)


@pytest.mark.parametrize("under", [None, "another-run"])
async def test_a_run_that_is_not_the_parents_child_cannot_claim_its_delegation(
    client: Client, worker_running: str, deps: Any, parent: Parent, under: str | None
) -> None:
    """Attack: code on the worker starts `<parent>.5` itself (with no Temporal parent, or as the
    child of a run of its own) and names the parent whose gate allowed that delegation, with the
    link exactly as allowed. The parent a run names is its claim; Temporal's server says otherwise:
    refused, nothing opened, and the parent's delegation is left for its own child."""
    child = f"{parent.run_id}.5"
    exact = _link(parent, deadline_at=parent.expires_at)
    own = None if under is None else f"{under}-{uuid.uuid4().hex[:8]}"
    (answer,) = await _execute(
        client, worker_running, child, [("run.open", _ask(parent, child, link=exact))], parent=own
    )
    reason = f"the server says the run's Temporal parent is {own!r}, not the one it names"
    refused_by_activity(answer, reason)
    _nothing_opened(deps, child, reason)


async def test_the_link_the_parents_gate_allowed_opens_the_sub_agent(
    client: Client, worker_running: str, deps: Any, parent: Parent
) -> None:
    """The call the refusals above are set beside: the link exactly as the parent's gate allowed it
    (its deadline at the parent's own plus the 5 s of clock skew allowed) opens the sub-agent's
    identity, with the parent's Vault policy and never past the parent's identity."""
    child = f"{parent.run_id}.5"
    exact = _link(parent, deadline_at=parent.expires_at + timedelta(seconds=5))
    ask = _ask(parent, child, link=exact, ttl=3600)
    (answer,) = await _execute(client, worker_running, child, [("run.open", ask)], parent=parent.run_id)
    assert answer["ok"], answer
    identity = answer["result"]
    assert identity["policies"] == [parent.policy]
    assert datetime.fromisoformat(identity["expires_at"]) <= parent.expires_at + timedelta(seconds=2)
    (opened,) = ledger_events(deps, child, "run.opened")
    assert opened["parent_run_id"] == parent.run_id
    assert (opened["boundary"], opened["budget"]) == (list(TOOLS), BUDGET)


async def test_a_parent_whose_identity_ends_cannot_open_a_sub_agent(
    client: Client, worker_running: str, deps: Any
) -> None:
    """A parent's identity ending (a short TTL) while its gate had allowed a delegation: with less
    than a second left, the sub-agent's identity (at least one second) would outlive it, so it is
    refused; once expired, refused; once closed (its Vault record gone), refused as having no open
    identity. Each time the link is exactly what the parent's gate allowed."""
    parent = await _open_parent(client, worker_running, deps, 6, [DELEGATES])
    child = f"{parent.run_id}.1"
    ask = _ask(parent, child, ttl=3600)
    try:
        # Less than a second left: asked in process (with the Temporal facts a caller on the worker
        # has: no client round trip of unknown length before the check).
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, workflow_id=child, workflow_run_id="origin-1")
        early = ask.model_copy(update={"origin_run_id": "origin-1"})
        await asyncio.sleep(max(0.0, (parent.expires_at - datetime.now(UTC)).total_seconds() - 0.4))
        with pytest.raises(ApplicationError, match=PAST):
            await asyncio.to_thread(env.run, build_governance(deps).open_run, early)
        _nothing_opened(deps, child, PAST)
        # Expired (its record not yet reaped): refused.
        await asyncio.sleep(max(0.0, (parent.expires_at - datetime.now(UTC)).total_seconds() + 1.5))
        (answer,) = await _execute(client, worker_running, child, [("run.open", ask)], parent=parent.run_id)
        refused_by_activity(answer, PAST)
    finally:
        deps.vault.close_run(parent.run_id, None)
    # Closed: no open identity to derive a sub-agent's from.
    (answer,) = await _execute(client, worker_running, child, [("run.open", ask)], parent=parent.run_id)
    refused_by_activity(answer, NO_IDENTITY)
    _nothing_opened(deps, child, f"parent run {parent.run_id} has no open identity")
