"""The gate: one decision per proposed tool call. Pure: bundle, agent and run state are arguments.

Order (DESIGN.md "Gate"), first non-allow answer wins:
kill switch -> task boundary -> args -> Cedar policy -> stateful gates (steps, budget, confidence).
Any exception inside a gate is a deny naming the gate (fail closed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from lockgate.gates.bundle import Answer, PolicyBundle, cedar_data_problem
from lockgate.gates.chain import chain_context, resource_entity
from lockgate.models import (
    DELEGATE_TOOL,
    MAX_ARGS_BYTES,
    Decision,
    DelegateArgs,
    GateRequest,
    GateState,
    Outcome,
    args_digest,
    canonical_json,
)
from lockgate.spec import AgentSpec, ToolSpec, describe_validation

__all__ = ["Verdict", "cedar_context", "evaluate", "tool_entities"]


@dataclass(frozen=True)
class Verdict:
    gate: str
    outcome: Outcome
    reasons: tuple[str, ...] = ()
    policy_ids: tuple[str, ...] = ()
    approver_group: str | None = None
    quorum: int = 0


@dataclass(frozen=True)
class _Allow:
    policy_ids: tuple[str, ...] = field(default_factory=tuple)


def tool_entities(agents: list[AgentSpec]) -> list[dict[str, Any]]:
    """Cedar entities lockgate derives from declarations: each tool with its risk labels."""
    tools: dict[str, ToolSpec] = {}
    for agent in agents:
        for tool in agent.tools:
            tools.setdefault(tool.name, tool)
    return [
        {"uid": {"type": "Tool", "id": name}, "attrs": tool.labels(), "parents": []}
        for name, tool in sorted(tools.items())
    ]


def cedar_context(
    agent: AgentSpec, request: GateRequest, *, chain: bool = True, chain_fields: frozenset[str] | None = None
) -> dict[str, Any]:
    """What policies see as `context`: the call's args and the run's state.

    `args` are the call's args as given. They are plain data (the args gate refuses anything
    else, see `cedar_data_problem`): a policy can compare them, but an argument is never an entity
    reference or extension value, so a planner cannot forge `context.args.x in Group::"finance"`
    or an `ip(...)`. Entities come only from the bundle.

    `chain=False` leaves out `context.chain`, `chain_fields` builds only those of its fields: the
    gate leaves out what no policy that can apply reads (plain data, so leaving it out cannot
    change a decision, and building it costs)."""
    state = request.state
    out = {
        "args": request.call.args,
        "run": {
            "run_id": request.run_id,
            "initiator": request.initiator,
            "owner": agent.owner,
            "step": request.step,
            "steps_taken": state.steps_taken,
            "max_steps": agent.max_steps,
            "spent": state.spent,
            "budget": _budget(agent, request.state),
            "tainted": state.tainted,
            # Cedar has no decimals: confidence is passed as a whole percentage.
            "confidence_pct": round(request.call.confidence * 100),
            # Who chose the call, so policies can weigh its confidence: "planner" (self-reported by
            # the planner or model, never evidence), "script" (the author's code), "engine".
            "confidence_source": request.source,
            "approved_groups": list(state.approved_groups),
            # Verified from the signed start (activities/governance.py), not a tool argument.
            "tenant": state.tenant,
        },
    }
    if chain:
        tool = agent.tool(request.call.tool)
        resource = tool.resource_of(request.call.args) if tool else None
        out["chain"] = chain_context(agent, state.chain, resource, chain_fields)
    return out


def _budget(agent: AgentSpec, state: GateState) -> int:
    budget = state.budget if state.budget is not None else agent.budget
    return budget if budget is not None else -1


def _kill_switch(request: GateRequest) -> Verdict | None:
    if request.state.frozen and not request.compensation:
        return Verdict("kill_switch", "deny", ("agent is frozen by the kill switch",))
    if request.state.conflict is not None:
        # The run's state as claimed contradicts its ledger: nothing it asks for can be trusted.
        return Verdict("state", "deny", (request.state.conflict,))
    return None


def _within(agent: AgentSpec, tool: str, boundary: frozenset[str] | tuple[str, ...], compensation: bool) -> bool:
    """In the boundary, or (for a verified compensation) undoing a tool that is: a compensation is
    allowed wherever its forward tool was."""
    if tool in boundary:
        return True
    return compensation and any(t.compensation == tool and t.name in boundary for t in agent.tools)


def _boundary(agent: AgentSpec, request: GateRequest) -> Verdict | None:
    tool, compensation = request.call.tool, request.compensation
    if not _within(agent, tool, agent.boundary, compensation):
        return Verdict(
            "boundary",
            "deny",
            (f"tool {tool!r} is outside the task boundary of agent {agent.name!r}",),
        )
    narrowed = request.state.boundary
    if narrowed is not None and not _within(agent, tool, narrowed, compensation):
        return Verdict(
            "boundary",
            "deny",
            (f"tool {tool!r} is outside this sub-agent's boundary ({', '.join(narrowed) or 'none'})",),
        )
    return None


def _args(tool: ToolSpec, request: GateRequest, canonical: bytes) -> Verdict | None:
    size = len(canonical)
    if size > MAX_ARGS_BYTES:
        return Verdict("args", "deny", (f"args are {size} bytes, over the {MAX_ARGS_BYTES}-byte limit",))
    # Args reach policies as `context.args` exactly as given, so they must be plain data: never an
    # entity reference or extension value (`__entity`, `__extn`) a policy would trust as if lockgate
    # had vouched for it, and nothing Cedar would refuse (null, fractions) where no policy looks.
    problem = cedar_data_problem(request.call.args, "args")
    if problem is not None:
        return Verdict("args", "deny", (f"args must be plain data: {problem}",))
    try:
        tool.args.model_validate(request.call.args)
    except ValidationError as err:
        return Verdict("args", "deny", (f"args fail the schema of {tool.name}: {describe_validation(err)}",))
    return None


def _authorize(
    bundle: PolicyBundle,
    action: str,
    principal: str,
    resource: str | dict[str, Any],
    context: dict[str, Any],
    *,
    without_approval: bool = False,
) -> Answer:
    """Cedar's answer for agent `principal` calling tool `action` (`Action::"<action>"`) on
    `resource` (a tool name for `Tool::"<name>"`, or an entity: the tool's declared resource),
    through the bundle's slicing, context pruning and answer cache (`PolicyBundle.authorize`)."""
    entity = None if isinstance(resource, str) or resource["uid"]["type"] == "Tool" else resource
    uid = ("Tool", resource) if isinstance(resource, str) else (resource["uid"]["type"], resource["uid"]["id"])
    return bundle.authorize(
        ("Agent", principal),
        ("Action", action),
        uid,
        context,
        without_approval=without_approval,
        resource_entity=entity,
    )


def _chain_reads(paths: frozenset[tuple[str, ...]]) -> dict[str, Any]:
    """Which part of `context.chain` the policies that can apply read (their context `paths`)."""
    if any(len(p) < 2 and (not p or p[0] == "chain") for p in paths):
        return {"chain": True, "chain_fields": None}  # the whole context, or the whole chain
    fields = frozenset(p[1] for p in paths if p[0] == "chain")
    return {"chain": bool(fields), "chain_fields": fields}


def _cedar(bundle: PolicyBundle, agent: AgentSpec, tool: ToolSpec, request: GateRequest) -> Verdict | _Allow:
    action = request.call.tool
    context = cedar_context(agent, request, **_chain_reads(bundle.slice_for(action).paths))
    resource = resource_entity(tool, request.call.args)
    result = _authorize(bundle, action, agent.name, resource, context)
    if result.errors:
        # Evaluation errors skip the policy that raised them; a forbid that errors must not let a
        # call through, so any error is a deny.
        return Verdict("policy", "deny", tuple(f"policy error: {e}" for e in result.errors))
    ids = tuple(sorted(result.policy_ids))
    if result.allowed:
        return _Allow(ids)
    if not ids:
        return Verdict("policy", "deny", ("no policy permits this call (default deny)",))
    statements = [bundle.by_id(i) for i in ids]
    if all(s is not None and s.approval_group for s in statements):
        # Approval-annotated forbids are the only reason: does anything else stand in the way?
        rest = _authorize(bundle, action, agent.name, resource, context, without_approval=True)
        if rest.allowed and not rest.errors:
            first = statements[0]
            assert first is not None and first.approval_group
            group = first.approval_group
            quorum = max(s.quorum for s in statements if s and s.approval_group == group)
            return Verdict(
                "policy",
                "approval",
                (f"policy {first.policy_id} requires approval by {group} (quorum {quorum})",),
                ids,
                approver_group=group,
                quorum=quorum,
            )
    return Verdict("policy", "deny", tuple(f"forbidden by policy {i}" for i in ids), ids)


def _threshold(agent: AgentSpec, state: GateState, gate: str, reason: str) -> Verdict | None:
    """A crossed threshold: approval by the configured group, or deny; passes once that group approved."""
    group = agent.escalations.get(gate)
    if group is None:
        return Verdict(gate, "deny", (reason,))
    if group in state.approved_groups:
        return None
    return Verdict(gate, "approval", (f"{reason}; escalated to {group}",), approver_group=group, quorum=1)


def _stateful(agent: AgentSpec, tool: ToolSpec, request: GateRequest, now: datetime) -> Verdict | None:
    state = request.state
    if state.deadline_at is not None and now >= state.deadline_at:
        return Verdict("deadline", "deny", (f"run deadline {state.deadline_at.isoformat()} has passed",))
    if state.steps_taken >= agent.max_steps:
        verdict = _threshold(
            agent, state, "step_limit", f"step limit reached: {state.steps_taken} of {agent.max_steps} steps"
        )
        if verdict is not None:
            return verdict
    budget = state.budget if state.budget is not None else agent.budget
    cost = tool.cost_of(request.call.args)
    if budget is not None and cost and state.spent + cost > budget:
        verdict = _threshold(
            agent,
            state,
            "budget",
            f"budget exceeded: spent {state.spent} + {cost} = {state.spent + cost} > budget {budget}",
        )
        if verdict is not None:
            return verdict
    confidence = request.call.confidence
    if agent.min_confidence is not None and confidence < agent.min_confidence:
        group = agent.escalations.get("confidence")
        reason = f"planner confidence {confidence:.2f} is below the minimum {agent.min_confidence:.2f}"
        if group is None:
            return Verdict("confidence", "deny", (reason,))
        if group not in state.approved_groups:
            return Verdict(
                "confidence", "approval", (f"{reason}; escalated to {group}",), approver_group=group, quorum=1
            )
    if state.tainted and tool.egress:
        group = agent.taint_approver
        reason = f"run has read regulated data; {tool.name} sends data out (egress)"
        if group is None:
            return Verdict("taint", "deny", (reason,))
        if group not in state.approved_groups:
            return Verdict("taint", "approval", (f"{reason}; needs {group}",), approver_group=group, quorum=1)
    limit = agent.rate_limits.get(tool.name)
    if limit is not None:
        count, window = limit
        recent = [t for t in state.recent_calls if now - t < window]
        if len(recent) >= count:
            verdict = _threshold(
                agent,
                state,
                "rate",
                f"rate limit: {len(recent)} calls of {tool.name} in the last "
                f"{int(window.total_seconds())}s (limit {count})",
            )
            if verdict is not None:
                return verdict
    return None


def _delegation(agent: AgentSpec, request: GateRequest, lookup: Callable[[str], AgentSpec | None]) -> Verdict:
    """A sub-agent gets a subset of its parent's boundary and budget, never more."""
    try:
        args = DelegateArgs.model_validate(request.call.args)
    except ValidationError as err:
        return Verdict("delegation", "deny", (f"bad delegation: {describe_validation(err)}",))
    if args.agent not in agent.delegates:
        return Verdict("delegation", "deny", (f"agent {agent.name!r} may not delegate to {args.agent!r}",))
    child = lookup(args.agent)
    if child is None:
        return Verdict("delegation", "deny", (f"unknown agent {args.agent!r}",))
    parent_boundary = set(request.state.boundary if request.state.boundary is not None else agent.boundary)
    wider = sorted(set(args.tools) - parent_boundary)
    if wider:
        return Verdict(
            "delegation", "deny", (f"sub-agent asks for tools outside the parent's boundary: {', '.join(wider)}",)
        )
    unknown = sorted(set(args.tools) - child.boundary)
    if unknown:
        return Verdict("delegation", "deny", (f"agent {child.name!r} has no tools {', '.join(unknown)}",))
    budget = _budget(agent, request.state)
    if budget >= 0 and request.state.spent + args.budget > budget:
        return Verdict(
            "delegation",
            "deny",
            (
                f"sub-agent budget {args.budget} exceeds what is left of the run's budget "
                f"({budget - request.state.spent} of {budget})",
            ),
        )
    return Verdict(
        "delegation", "allow", (f"delegates {len(args.tools)} tools and {args.budget} of budget to {child.name}",)
    )


def evaluate(
    bundle: PolicyBundle,
    agent: AgentSpec | None,
    request: GateRequest,
    *,
    now: datetime,
    lookup: Callable[[str], AgentSpec | None] = lambda _name: None,
) -> Decision:
    """Decides one call. Never raises: an error in any gate is a deny by that gate."""
    gate = "kill_switch"
    digest = ""  # the args' digest, once the args gate has serialised them
    try:
        verdict: Verdict | None = _kill_switch(request)
        if verdict is None and agent is not None and request.call.tool == DELEGATE_TOOL:
            gate = "delegation"
            verdict = _delegation(agent, request, lookup)
        if verdict is None:
            gate = "boundary"
            if agent is None:
                verdict = Verdict("boundary", "deny", (f"unknown agent {request.agent!r}",))
            else:
                verdict = _boundary(agent, request)
        policy_ids: tuple[str, ...] = ()
        if verdict is None:
            assert agent is not None
            tool = agent.tool(request.call.tool)
            assert tool is not None
            gate = "args"
            canonical = canonical_json(request.call.args).encode()
            digest = hashlib.sha256(canonical).hexdigest()
            verdict = _args(tool, request, canonical)
            if verdict is None:
                gate = "policy"
                cedar = _cedar(bundle, agent, tool, request)
                if isinstance(cedar, Verdict):
                    verdict = cedar
                else:
                    policy_ids = cedar.policy_ids
                    gate = "stateful"
                    # A verified compensation undoes what the run did: the limits on what a run may
                    # newly do (steps, budget, rate, deadline) never keep it from undoing.
                    verdict = None if request.compensation else _stateful(agent, tool, request, now)
                    if verdict is not None:
                        verdict = Verdict(
                            verdict.gate,
                            verdict.outcome,
                            verdict.reasons,
                            policy_ids,
                            verdict.approver_group,
                            verdict.quorum,
                        )
        if verdict is None:
            verdict = Verdict("policy", "allow", ("permitted",), policy_ids)
    except Exception as err:  # noqa: BLE001 - fail closed: any gate error is a deny
        verdict = Verdict(gate, "deny", (f"gate error ({type(err).__name__}): {err}",))
    try:
        digest = digest or args_digest(request.call.args)
    except Exception:  # noqa: BLE001
        digest = "unhashable"
    return Decision(
        decision_id=request.decision_id,
        run_id=request.run_id,
        step=request.step,
        tool=request.call.tool,
        args_digest=digest,
        bundle_hash=bundle.hash,
        policy_ids=verdict.policy_ids,
        gate=verdict.gate,
        outcome=verdict.outcome,
        reasons=verdict.reasons,
        approver_group=verdict.approver_group,
        quorum=verdict.quorum,
        approvers=tuple(bundle.members_of(verdict.approver_group)) if verdict.approver_group else (),
        at=now,
    )
