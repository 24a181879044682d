"""What the gate decides on, checked against the run's ledger.

A gate request carries the run's state as the workflow keeps it (spent budget, steps, taint, chain,
recent calls, deadline, a sub-agent's boundary and budget). That is a claim: a history rewound by
`temporal workflow reset` claims less spent and fewer steps than the run really took. The deciding
activity therefore rebuilds the same state from what lockgate's own activities recorded in the
ledger (each completed call, the allowed decision with its exact arguments, the run's identity and
its sub-agents' records) and decides on the stricter of the two:
- spent, steps taken: the larger; taint: either; recent calls of a rate-limited tool: the longer list;
  deadline: the earlier; a sub-agent's boundary: the intersection, its budget: the smaller;
- the chain (what ran, on which resources) is the ledger's: a chain-aware policy may also permit on
  what ran, so a claimed chain is never believed where the record says otherwise;
- a step number that already ran a different call (other args or tool) is a conflict: the state is
  stale or forged, and the gate denies (`GateState.conflict`).
So a forged, stale or rolled-back state can only narrow what a run may do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lockgate.models import DELEGATE_TOOL, Chain, GateRequest, GateState, args_digest
from lockgate.spec import AgentRegistry

__all__ = ["Recorded", "recorded_state", "stricter"]

log = logging.getLogger("lockgate.gate")

# How deep sub-agents of sub-agents are followed (the engine bounds delegation depth far below this).
MAX_DEPTH = 8

Events = Callable[[str], list[dict[str, Any]]]


@dataclass
class Recorded:
    """A run's state as its ledger records it (its sub-agents' calls included)."""

    steps: set[int] = field(default_factory=set)  # steps decided (not compensations)
    spent: int = 0
    tainted: bool = False
    chain: Chain = field(default_factory=Chain)
    call_times: dict[str, list[datetime]] = field(default_factory=dict)
    completed: dict[int, tuple[str, str]] = field(default_factory=dict)  # step -> (tool, args digest)
    deadline_at: datetime | None = None
    boundary: tuple[str, ...] | None = None
    budget: int | None = None


def recorded_state(events: Events, agents: AgentRegistry, run_id: str, *, depth: int = 0) -> Recorded:
    """The run's state from its ledger entries (`events(run_id)`), sub-agents folded in."""
    out = Recorded()
    entries = events(run_id)
    decisions: dict[str, dict[str, Any]] = {}
    for e in entries:
        kind = e.get("kind")
        if kind == "decision":
            decisions[str(e.get("decision_id"))] = e
            request = e.get("request") or {}
            if not request.get("compensation"):
                out.steps.add(int(e.get("step", 0)))
        elif kind == "run.opened":
            expires = e.get("expires_at")
            out.deadline_at = datetime.fromisoformat(str(expires)) if expires else None
            if e.get("boundary") is not None:
                out.boundary = tuple(e["boundary"])
            if e.get("budget") is not None:
                out.budget = int(e["budget"])
    for e in entries:
        if e.get("kind") != "tool.completed" or e.get("compensates"):
            continue
        decided = decisions.get(str(e.get("decision_id")))
        if decided is None:
            continue  # a completion no recorded decision allowed: counts for nothing it could permit
        call = (decided.get("request") or {}).get("call") or {}
        tool_name, args = str(call.get("tool", e.get("tool"))), dict(call.get("args") or {})
        step = int(e.get("step", 0))
        out.completed[step] = (tool_name, args_digest(args))
        agent = agents.get(str(decided.get("agent", "")))
        spec = agent.tool(tool_name) if agent is not None else None
        if spec is None:
            continue
        out.spent += spec.cost_of(args)
        out.tainted = out.tainted or spec.data_class == "regulated"
        out.chain = out.chain.after(spec.name, spec.resource_of(args), spec.data_class, spec.egress)
        out.call_times.setdefault(tool_name, []).append(datetime.fromisoformat(str(e["at"])))
    if depth < MAX_DEPTH:
        delegated = sorted(
            {
                int(d.get("step", 0))
                for d in decisions.values()
                if d.get("tool") == DELEGATE_TOOL and d.get("outcome") == "allow"
            }
        )
        for step in delegated:
            child = recorded_state(events, agents, f"{run_id}.{step}", depth=depth + 1)
            out.spent += child.spent
            out.tainted = out.tainted or child.tainted
            out.chain = out.chain.merged(child.chain)
    return out


def stricter(request: GateRequest, recorded: Recorded, window: float | None, now: datetime) -> GateState:
    """The state to decide on: the stricter of the request's claim and the record (see above).

    Args:
        request: The gate request, with the workflow's claimed state.
        recorded: The run's state from the ledger.
        window: The rate-limit window of the requested tool in seconds (None: not rate limited).
        now: The deciding activity's clock.
    """
    claim = request.state
    conflict = claim.conflict
    done = recorded.completed.get(request.step)
    if done is not None and not request.compensation and conflict is None:
        tool, digest = done
        if tool != request.call.tool or digest != args_digest(request.call.args):
            conflict = (
                f"step {request.step} already ran {tool} with other arguments: "
                "the run's state is stale or forged (a reset history?)"
            )
    steps = len({s for s in recorded.steps if s < request.step})
    recent = claim.recent_calls
    if window is not None:
        mine = tuple(t for t in recorded.call_times.get(request.call.tool, ()) if (now - t).total_seconds() < window)
        if len(mine) > len(recent):
            recent = mine
    boundary = claim.boundary
    if recorded.boundary is not None:
        boundary = tuple(t for t in (boundary if boundary is not None else recorded.boundary) if t in recorded.boundary)
    if claim.chain != recorded.chain:
        log.warning(
            "run %s step %s: claimed chain differs from the ledger's; deciding on the ledger's",
            request.run_id,
            request.step,
        )
    return claim.model_copy(
        update={
            "steps_taken": max(claim.steps_taken, steps),
            "spent": max(claim.spent, recorded.spent),
            "tainted": claim.tainted or recorded.tainted,
            "chain": recorded.chain,
            "recent_calls": recent,
            "deadline_at": _earlier(claim.deadline_at, recorded.deadline_at),
            "boundary": boundary,
            "budget": _smaller(claim.budget, recorded.budget),
            "conflict": conflict,
        }
    )


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return min(a, b)


def _smaller(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)
