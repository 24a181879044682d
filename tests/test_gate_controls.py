"""Pure tests that each hold one control in isolation (found by `make mutation`: a mutant that
switched the control off survived every test that was meant to guard it). Each docstring names
the control."""

from __future__ import annotations

import pytest

from lockgate.ids import InvalidRunId, check_run_id, is_run_id


@pytest.mark.parametrize("good", ["r", "run-1_A", "a" * 80, "run.1", "run.1.22.333.4444"])
def test_run_ids_in_the_syntax_pass(good: str) -> None:
    """Control: run-id syntax (lockgate/ids.py) accepts every well-formed id, returned as is."""
    assert is_run_id(good)
    assert check_run_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "-r", "a" * 81, "a/b", "a..b", "a.0", "a.1.2.3.4.5", "a b", "a\n", "a.b", 7, None, "ü"]
)
def test_run_ids_outside_the_syntax_are_refused(bad: object) -> None:
    """Control: run-id syntax refuses aliases (separators, dots, whitespace, overlong, non-strings)."""
    assert not is_run_id(bad)
    with pytest.raises(InvalidRunId):
        check_run_id(bad)


# -- the gate, each check alone (a permissive bundle: Cedar permits, only the check can refuse) ----
from datetime import UTC, datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

from lockgate.gates.bundle import PolicyBundle, cedar_data_problem  # noqa: E402
from lockgate.gates.engine import cedar_context, evaluate  # noqa: E402
from lockgate.models import MAX_ARGS_BYTES, Decision, GateRequest, GateState, ToolCall, canonical_json  # noqa: E402
from lockgate.spec import AgentSpec, load_agents  # noqa: E402
from tests.support.stack import AGENT_MODULES  # noqa: E402

registry = load_agents(AGENT_MODULES, entry_points=False)
NOW = datetime(2026, 11, 23, tzinfo=UTC)
PERMIT = '@id("all") permit(principal, action, resource);'


def _bundle(*policies: str) -> PolicyBundle:
    return PolicyBundle.build({"p.cedar": "\n".join(policies or (PERMIT,))})


def _script(**update: Any) -> AgentSpec:
    agent = registry.get("script-agent")
    assert agent is not None
    return agent.model_copy(update=update)


def _decide(
    tool: str,
    args: dict[str, Any],
    *,
    agent: AgentSpec | None = None,
    bundle: PolicyBundle | None = None,
    compensation: bool = False,
    confidence: float = 1.0,
    **state: Any,
) -> Decision:
    request = GateRequest(
        decision_id="d-1",
        run_id="r-1",
        agent="script-agent",
        initiator="erin",
        step=1,
        call=ToolCall(tool=tool, args=args, confidence=confidence),
        state=GateState(**state),
        compensation=compensation,
    )
    return evaluate(bundle or _bundle(), agent or _script(), request, now=NOW, lookup=registry.get)


def test_a_call_cedar_permits_outside_the_boundary_is_denied_by_the_boundary() -> None:
    """Control: the task boundary (not the fail-closed assert behind it) refuses a tool Cedar permits."""
    d = _decide("shell.exec", {})
    assert (d.outcome, d.gate) == ("deny", "boundary") and "outside the task boundary" in d.reasons[0]


def test_a_compensation_is_allowed_only_where_its_forward_tool_is() -> None:
    """Control: `_within` lets a compensation through a narrowed boundary only for its own forward tool."""
    assert _decide("qa.unmark", {"idempotency_key": "r-1:1"}, compensation=True, boundary=("qa.mark",)).gate != (
        "boundary"
    )
    d = _decide("qa.unmark", {"idempotency_key": "r-1:1"}, compensation=True, boundary=("refunds.issue",))
    assert (d.outcome, d.gate) == ("deny", "boundary")
    empty = _decide("qa.mark", {"label": "x"}, boundary=())
    assert (empty.outcome, empty.gate) == ("deny", "boundary") and "(none)" in empty.reasons[0]


def test_args_of_exactly_the_size_limit_pass_the_args_gate() -> None:
    """Control: the args size limit is `> MAX_ARGS_BYTES` (the limit itself is allowed)."""
    pad = MAX_ARGS_BYTES - len(canonical_json({"label": ""}).encode())
    args = {"label": "x" * pad}
    assert len(canonical_json(args).encode()) == MAX_ARGS_BYTES
    assert _decide("qa.mark", args).outcome == "allow"
    assert _decide("qa.mark", {"label": "x" * (pad + 1)}).gate == "args"


def test_thresholds_hold_at_their_exact_edges() -> None:
    """Control: each stateful threshold at its edge: confidence equal to the minimum passes, a call
    exactly one window old no longer counts, spending exactly the budget passes, the deadline itself
    has passed."""
    agent = _script(escalations={}, min_confidence=0.5)
    assert _decide("qa.mark", {"label": "x"}, agent=agent, confidence=0.5).outcome == "allow"
    edge = (NOW - timedelta(minutes=1),) * 3
    assert _decide("qa.mark", {"label": "x"}, agent=agent, recent_calls=edge).outcome == "allow"
    spend = {"order_id": "A-1001", "amount_cents": 1000}
    assert _decide("refunds.issue", spend, agent=agent, spent=24000).outcome == "allow"
    assert _decide("refunds.issue", spend, agent=agent, spent=24001).gate == "budget"
    d = _decide("qa.mark", {"label": "x"}, agent=agent, deadline_at=NOW)
    assert (d.outcome, d.gate) == ("deny", "deadline")


def test_a_crossed_threshold_without_an_escalation_group_is_a_deny() -> None:
    """Control: with no group to escalate to, low confidence and tainted egress are denied, never
    sent for approval by nobody."""
    agent = _script(escalations={}, taint_approver=None, min_confidence=0.5)
    low = _decide("qa.mark", {"label": "x"}, agent=agent, confidence=0.1)
    assert (low.outcome, low.gate, low.approver_group) == ("deny", "confidence", None)
    egress = _decide("customer.notify", {"order_id": "A-1001", "message": "hi"}, agent=agent, tainted=True)
    assert (egress.outcome, egress.gate, egress.approver_group) == ("deny", "taint", None)


def test_delegation_checks_each_name_their_reason() -> None:
    """Control: each delegation check refuses on its own (unknown child, tools the child lacks, bad
    args, the whole budget left), not through a gate error further on."""
    ghost = _script(delegates=("ghost",))
    d = _decide("agent.delegate", {"agent": "ghost", "tools": [], "budget": 0}, agent=ghost)
    assert d.gate == "delegation" and "unknown agent 'ghost'" in d.reasons[0]
    parent = _script(delegates=("refund-agent",))
    d = _decide("agent.delegate", {"agent": "refund-agent", "tools": ["qa.mark"], "budget": 0}, agent=parent)
    assert d.gate == "delegation" and "has no tools qa.mark" in d.reasons[0]
    d = _decide("agent.delegate", {"agent": 7}, agent=parent)
    assert d.gate == "delegation" and d.reasons[0].startswith("bad delegation")
    args = {"agent": "script-agent", "input": {"steps": []}, "tools": [], "budget": 1000}
    assert _decide("agent.delegate", args, spent=24000).outcome == "allow"  # exactly what is left
    over = _decide("agent.delegate", {**args, "budget": 1001}, spent=24000)
    assert over.outcome == "deny" and "(1000 of 25000)" in over.reasons[0]
    spent = _decide("agent.delegate", {**args, "budget": 1}, budget=0)
    assert spent.outcome == "deny", "a run with a budget of 0 has nothing to delegate"


def test_an_unknown_agent_is_denied_by_name() -> None:
    """Control: the unknown-agent check itself (not a gate error on the missing agent)."""
    request = GateRequest(
        decision_id="d", run_id="r", agent="ghost", initiator="erin", step=1, call=ToolCall(tool="qa.mark", args={})
    )
    d = evaluate(_bundle(), None, request, now=NOW)
    assert (d.outcome, d.gate) == ("deny", "boundary") and "unknown agent 'ghost'" in d.reasons[0]


def test_an_unhashable_call_is_decided_not_raised() -> None:
    """Control: `evaluate` never raises; args no digest can be made of are recorded as unhashable."""
    request = GateRequest(
        decision_id="d",
        run_id="r",
        agent="script-agent",
        initiator="erin",
        step=1,
        call=ToolCall.model_construct(tool="qa.mark", args={"label": "x", 1: "y"}, confidence=1.0, rationale=""),
    )
    d = evaluate(_bundle(), _script(), request, now=NOW)
    assert d.outcome == "deny" and d.args_digest == "unhashable"


def test_policies_reading_the_chain_or_the_whole_context_see_it() -> None:
    """Control: the gate builds `context.chain` for a policy that reads it whole, and the whole
    context for one that reads `context` itself (leaving out only what no policy reads)."""
    for when in ("context has chain", "context.chain.steps == 0", "context == context"):
        bundle = _bundle(f'@id("p") permit(principal, action, resource) when {{ {when} }};')
        d = _decide("qa.mark", {"label": "x"}, bundle=bundle)
        assert d.outcome == "allow", (when, d.reasons)
    request = GateRequest(
        decision_id="d", run_id="r", agent="script-agent", initiator="erin", step=1, call=ToolCall(tool="qa.mark")
    )
    assert "chain" in cedar_context(_script(), request)
    assert cedar_context(_script(budget=None), request)["run"]["budget"] == -1


def test_approval_is_asked_only_when_approval_forbids_are_all_that_stand_in_the_way() -> None:
    """Control: an `@approval` forbid asks its group only if the call is otherwise permitted (with no
    permit it is a deny), and the quorum is that group's, not another group's."""
    ask = '@id("a-ask") @approval("finance") forbid(principal, action, resource);'
    no_permit = _decide("qa.mark", {"label": "x"}, bundle=_bundle(ask))
    assert no_permit.outcome == "deny"
    other = '@id("b-ask") @approval("sre") @quorum("3") forbid(principal, action, resource);'
    d = _decide("qa.mark", {"label": "x"}, bundle=_bundle(PERMIT, ask, other))
    assert (d.outcome, d.approver_group, d.quorum) == ("approval", "finance", 1)


def test_plain_data_limits_hold_at_their_edges() -> None:
    """Control: `cedar_data_problem` at its edges: the 64-bit integer bounds are plain data, one past
    them is not; nesting is refused at exactly the depth limit."""
    assert cedar_data_problem(2**63 - 1) is None and cedar_data_problem(-(2**63)) is None
    assert cedar_data_problem(2**63) is not None and cedar_data_problem(-(2**63) - 1) is not None
    deep: Any = "x"
    for _ in range(33):  # the innermost list at depth 32
        deep = [deep]
    assert cedar_data_problem(deep) is not None
    assert cedar_data_problem(deep[0]) is None


def test_a_stateful_deny_keeps_the_policies_that_permitted_the_call() -> None:
    """Control: a stateful gate's verdict (here the run deadline) is recorded with the policy ids
    that permitted the call (evaluate re-wraps the stateful verdict with Cedar's reasons)."""
    d = _decide("qa.mark", {"label": "x"}, deadline_at=NOW - timedelta(seconds=1))
    assert (d.outcome, d.gate, d.policy_ids) == ("deny", "deadline", ("all",))


def test_the_bundle_asks_every_policy_unless_told_to_leave_out_approval_forbids() -> None:
    """Control: `PolicyBundle.authorize` keeps `@approval` forbids by default (leaving them out is
    the gate's explicit second question only)."""
    ask = '@id("a-ask") @approval("finance") forbid(principal, action, resource);'
    bundle = _bundle(PERMIT, ask)
    who, what, on = ("Agent", "script-agent"), ("Action", "qa.mark"), ("Tool", "qa.mark")
    default = bundle.authorize(who, what, on, {})
    assert not default.allowed and default.policy_ids == ("a-ask",)
    assert bundle.authorize(who, what, on, {}, without_approval=True).allowed
