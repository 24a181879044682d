"""Pure unit tests of gates/engine.py against the repo's policies (no Temporal, no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.engine import cedar_context, evaluate
from lockgate.models import Decision, GateRequest, GateState, ToolCall
from lockgate.policies import load_bundle
from lockgate.spec import load_agents
from tests.support.stack import AGENT_MODULES

# The agents of the test stack, loaded as a worker loads them.
registry = load_agents(AGENT_MODULES, entry_points=False)

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 23, tzinfo=UTC)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> PolicyBundle:
    """The repo's bundle plus the test agents' policies and actions, as tests/conftest.py builds it."""
    target = tmp_path_factory.mktemp("policies")
    for item in (ROOT / "policies").iterdir():
        (target / item.name).write_text(item.read_text())
    (target / "test-agents.cedar").write_text((ROOT / "tests/policies/test-agents.cedar").read_text())
    with open(target / "schema.cedarschema", "a") as schema:
        schema.write((ROOT / "tests/policies/test-schema.cedarschema").read_text())
    return load_bundle(target, registry)


def decide(bundle: PolicyBundle, tool: str, args: dict, agent: str = "refund-agent", **state: Any) -> Decision:
    request = GateRequest(
        decision_id="d-1",
        run_id="r-1",
        agent=agent,
        initiator="erin",
        step=1,
        call=ToolCall(tool=tool, args=args),
        state=GateState(**state),
    )
    return evaluate(bundle, registry.get(agent), request, now=NOW)


def test_permitted_call_names_its_policy(bundle: PolicyBundle) -> None:
    d = decide(bundle, "orders.lookup", {"order_id": "A-1001"})
    assert (d.outcome, d.gate, d.policy_ids) == ("allow", "policy", ("refund-agent.read-orders",))
    assert d.bundle_hash == bundle.hash and len(d.args_digest) == 64


def test_a_state_that_contradicts_the_ledger_is_denied_whatever_policy_says(bundle: PolicyBundle) -> None:
    """The run's claimed state disagrees with its ledger (run state sets `conflict`): nothing it asks
    for can be trusted, so even a call policy permits is denied, by the state gate, saying why."""
    assert decide(bundle, "orders.lookup", {"order_id": "A-1001"}).outcome == "allow"
    d = decide(bundle, "orders.lookup", {"order_id": "A-1001"}, conflict="claimed spent 0; the ledger says 500")
    assert (d.outcome, d.gate, d.reasons) == ("deny", "state", ("claimed spent 0; the ledger says 500",))


def test_default_deny_for_an_agent_without_permits(bundle: PolicyBundle) -> None:
    empty = PolicyBundle.build({"x.cedar": '@id("nothing") forbid(principal, action, resource) when { false };'})
    d = decide(empty, "orders.lookup", {"order_id": "A-1001"})
    assert d.outcome == "deny" and "default deny" in d.reasons[0]


def test_kill_switch_comes_first(bundle: PolicyBundle) -> None:
    d = decide(bundle, "shell.exec", {}, frozen=True)
    assert (d.outcome, d.gate) == ("deny", "kill_switch")


def test_boundary_denies_unknown_tools_before_policy(bundle: PolicyBundle) -> None:
    d = decide(bundle, "shell.exec", {"cmd": "rm -rf /"})
    assert (d.outcome, d.gate) == ("deny", "boundary")
    assert d.policy_ids == ()


def test_bad_args_are_a_deny_not_a_crash(bundle: PolicyBundle) -> None:
    d = decide(bundle, "refunds.issue", {"order_id": "A-1001", "amount_cents": "lots"})
    assert (d.outcome, d.gate) == ("deny", "args")
    assert "amount_cents" in d.reasons[0]


def test_oversized_args_are_denied(bundle: PolicyBundle) -> None:
    d = decide(bundle, "refunds.issue", {"order_id": "A-1001", "amount_cents": 5, "reason": "x" * 300_000})
    assert (d.outcome, d.gate) == ("deny", "args") and "limit" in d.reasons[0]


def test_approval_forbid_alone_yields_approval_with_group_members(bundle: PolicyBundle) -> None:
    d = decide(bundle, "refunds.issue", {"order_id": "A-1002", "amount_cents": 25000})
    assert (d.outcome, d.approver_group, d.quorum) == ("approval", "finance", 1)
    assert d.approvers == ("alice", "bob")
    again = decide(bundle, "refunds.issue", {"order_id": "A-1002", "amount_cents": 25000}, approved_groups=("finance",))
    assert again.outcome == "allow"


def test_approval_forbid_with_another_forbid_is_a_plain_deny(bundle: PolicyBundle) -> None:
    d = decide(bundle, "refunds.issue", {"order_id": "A-1002", "amount_cents": 150000})
    assert d.outcome == "deny"
    assert "refunds.hard-cap" in d.policy_ids


def test_quorum_annotation(bundle: PolicyBundle) -> None:
    d = decide(bundle, "accounts.close", {"customer_id": "C-501"})
    assert (d.outcome, d.approver_group, d.quorum) == ("approval", "support-leads", 2)


def test_taint_makes_egress_need_approval(bundle: PolicyBundle) -> None:
    args = {"order_id": "A-1001", "message": "hello"}
    assert decide(bundle, "customer.notify", args).outcome == "allow"
    tainted = decide(bundle, "customer.notify", args, tainted=True)
    assert (tainted.outcome, tainted.approver_group) == ("approval", "support-leads")


def test_step_limit_denies(bundle: PolicyBundle) -> None:
    spec = registry.get("refund-agent")
    assert spec is not None
    limit = spec.max_steps
    d = decide(bundle, "orders.lookup", {"order_id": "A-1001"}, steps_taken=limit)
    assert (d.outcome, d.gate) == ("deny", "step_limit") and f"{limit} of {limit}" in d.reasons[0]


def test_budget_escalates_where_configured(bundle: PolicyBundle) -> None:
    spec = registry.get("refund-agent")
    assert spec is not None and spec.budget is not None
    budget = spec.budget
    d = decide(bundle, "refunds.issue", {"order_id": "A-1001", "amount_cents": 500}, spent=budget - 100)
    assert (d.outcome, d.gate, d.approver_group) == ("approval", "budget", "finance")
    assert f"spent {budget - 100} + 500 = {budget + 400} > budget {budget}" in d.reasons[0]
    approved = decide(
        bundle,
        "refunds.issue",
        {"order_id": "A-1001", "amount_cents": 500},
        spent=budget - 100,
        approved_groups=("finance",),
    )
    assert approved.outcome == "allow"


def test_chain_of_small_refunds_escalates_at_the_third(bundle: PolicyBundle) -> None:
    """Each refund is under the 100.00 autonomy limit; their sum is over the run budget."""
    args = {"order_id": "A-1002", "amount_cents": 9000}
    spent = 0
    outcomes = []
    for _ in range(3):
        d = decide(bundle, "refunds.issue", args, agent="script-agent", spent=spent)
        outcomes.append((d.outcome, d.gate))
        spent += 9000
    assert outcomes == [("allow", "policy"), ("allow", "policy"), ("approval", "budget")]


def test_low_confidence_asks_for_approval_not_deny(bundle: PolicyBundle) -> None:
    request = GateRequest(
        decision_id="d",
        run_id="r",
        agent="refund-agent",
        initiator="erin",
        step=1,
        call=ToolCall(tool="orders.lookup", args={"order_id": "A-1001"}, confidence=0.4),
    )
    d = evaluate(bundle, registry.get("refund-agent"), request, now=NOW)
    assert (d.outcome, d.gate, d.approver_group) == ("approval", "confidence", "support-leads")
    assert "0.40 is below the minimum 0.70" in d.reasons[0]


def test_rate_limit_counts_calls_in_the_window(bundle: PolicyBundle) -> None:
    from datetime import timedelta

    args = {"label": "x"}
    recent = (NOW - timedelta(seconds=5), NOW - timedelta(seconds=10), NOW - timedelta(seconds=20))
    d = decide(bundle, "qa.mark", args, agent="script-agent", recent_calls=recent)
    assert (d.outcome, d.gate) == ("deny", "rate") and "3 calls of qa.mark in the last 60s (limit 3)" in d.reasons[0]
    old = (NOW - timedelta(minutes=5),) * 3
    assert decide(bundle, "qa.mark", args, agent="script-agent", recent_calls=old).outcome == "allow"


def test_run_deadline(bundle: PolicyBundle) -> None:
    from datetime import timedelta

    d = decide(bundle, "orders.lookup", {"order_id": "A-1001"}, deadline_at=NOW - timedelta(seconds=1))
    assert (d.outcome, d.gate) == ("deny", "deadline")


def test_taint_gate_holds_without_any_cedar_policy_for_it() -> None:
    """The data-flow gate is built in: a bundle that permits everything still escalates egress."""
    permissive = load_bundle(ROOT / "policies", registry)
    permissive = PolicyBundle.build({"all.cedar": '@id("all") permit(principal, action, resource);'}).with_entities(
        permissive.extra_entities
    )
    args = {"order_id": "A-1001", "message": "hi"}
    assert decide(permissive, "customer.notify", args).outcome == "allow"
    d = decide(permissive, "customer.notify", args, tainted=True)
    assert (d.outcome, d.gate, d.approver_group) == ("approval", "taint", "support-leads")


def test_delegation_never_widens_authority(bundle: PolicyBundle) -> None:
    def delegate(tools: list[str], budget: int, **state: Any) -> Decision:
        request = GateRequest(
            decision_id="d",
            run_id="r",
            agent="script-agent",
            initiator="erin",
            step=1,
            call=ToolCall(
                tool="agent.delegate",
                args={"agent": "script-agent", "input": {"steps": []}, "tools": tools, "budget": budget},
            ),
            state=GateState(**state),
        )
        return evaluate(bundle, registry.get("script-agent"), request, now=NOW, lookup=registry.get)

    assert delegate(["refunds.issue"], 1000).outcome == "allow"
    wider = delegate(["refunds.issue", "qa.mark"], 1000, boundary=("refunds.issue",))
    assert (wider.outcome, wider.gate) == ("deny", "delegation") and "qa.mark" in wider.reasons[0]
    rich = delegate(["refunds.issue"], 20000, spent=10000)
    assert rich.outcome == "deny" and "exceeds what is left" in rich.reasons[0]
    refund = registry.get("refund-agent")
    request = GateRequest(
        decision_id="d",
        run_id="r",
        agent="refund-agent",
        initiator="erin",
        step=1,
        call=ToolCall(tool="agent.delegate", args={"agent": "script-agent", "tools": [], "budget": 0}),
    )
    assert evaluate(bundle, refund, request, now=NOW, lookup=registry.get).outcome == "deny"


def test_sub_agent_boundary_is_enforced_per_call(bundle: PolicyBundle) -> None:
    d = decide(bundle, "qa.mark", {"label": "x"}, agent="script-agent", boundary=("refunds.issue",))
    assert (d.outcome, d.gate) == ("deny", "boundary") and "sub-agent" in d.reasons[0]


def test_any_error_inside_a_gate_is_a_deny(bundle: PolicyBundle) -> None:
    class Broken(PolicyBundle):
        def slice_for(self, action: str, *, without_approval: bool = False):  # type: ignore[override]
            raise RuntimeError("policy store exploded")

    broken = Broken(
        statements=bundle.statements,
        entities_json=bundle.entities_json,
        schema_text=bundle.schema_text,
        hash=bundle.hash,
    )
    d = decide(broken, "orders.lookup", {"order_id": "A-1001"})
    assert (d.outcome, d.gate) == ("deny", "policy") and "policy store exploded" in d.reasons[0]


def test_unknown_agent_is_denied(bundle: PolicyBundle) -> None:
    request = GateRequest(
        decision_id="d",
        run_id="r",
        agent="ghost",
        initiator="erin",
        step=1,
        call=ToolCall(tool="orders.lookup", args={"order_id": "A-1001"}),
    )
    assert evaluate(bundle, None, request, now=NOW).outcome == "deny"


# -- tool args are plain data ------------------------------------------------------------------------------

FORGEABLE = """
@id("qa.mark.finance-targets")
permit (principal == Agent::"script-agent", action == Action::"qa.mark", resource)
when { context.args has target && context.args.target in Group::"finance" };

@id("qa.mark.from-inside")
permit (principal == Agent::"script-agent", action == Action::"qa.mark", resource)
when { context.args has src && context.args.src.isInRange(ip("10.0.0.0/8")) };

@id("qa.mark.ok-label")
permit (principal == Agent::"script-agent", action == Action::"qa.mark", resource)
when { context.args has label && context.args.label == "ok" };
"""
FINANCE = {"__entity": {"type": "Group", "id": "finance"}}


class _AnyArgs(BaseModel):
    """An args schema that takes anything: only the plain-data rule stands in the way."""

    model_config = ConfigDict(extra="allow")


def _free_call(args: dict) -> tuple[PolicyBundle, Any, GateRequest]:
    agent = registry.get("script-agent")
    assert agent is not None
    tools = tuple(t.model_copy(update={"args": _AnyArgs}) if t.name == "qa.mark" else t for t in agent.tools)
    bundle = PolicyBundle.build(
        {"forge.cedar": FORGEABLE},
        entities_json=json.dumps([{"uid": {"type": "Group", "id": "finance"}, "attrs": {}, "parents": []}]),
    )
    request = GateRequest(
        decision_id="d",
        run_id="r",
        agent="script-agent",
        initiator="erin",
        step=1,
        call=ToolCall(tool="qa.mark", args=args),
    )
    return bundle, agent.model_copy(update={"tools": tools}), request


@pytest.mark.parametrize(
    ("args", "problem", "forged"),
    [
        (
            {"target": FINANCE},
            "args.target has the key '__entity', which Cedar would read as an entity reference",
            True,
        ),
        ({"src": {"__extn": {"fn": "ip", "arg": "10.1.2.3"}}}, "args.src has the key '__extn'", True),
        ({"label": "x", "more": [{"deep": FINANCE}]}, "args.more[0].deep has the key '__entity'", False),
        ({"label": "ok", "old": {"__expr": "true"}}, "args.old has the key '__expr'", False),
    ],
)
def test_args_can_never_be_entity_references_or_extension_values(args: dict, problem: str, forged: bool) -> None:
    bundle, agent, request = _free_call(args)
    if forged:
        # Handed to Cedar as they are, these args would be trusted: the forged group reference (or
        # ip value) satisfies the policy.
        context = cedar_context(agent, request)
        answer = bundle.authorize(("Agent", "script-agent"), ("Action", "qa.mark"), ("Tool", "qa.mark"), context)
        assert answer.allowed
    d = evaluate(bundle, agent, request, now=NOW)
    assert (d.outcome, d.gate, d.policy_ids) == ("deny", "args", ())
    assert problem in d.reasons[0] and d.reasons[0].startswith("args must be plain data")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"label": "ok", "note": None}, "args.note is null"),
        ({"label": "ok", "ratio": 0.5}, "args.ratio is a number with a fraction"),
        ({"label": "ok", "big": 2**64}, "args.big is outside Cedar's 64-bit integers"),
    ],
)
def test_args_cedar_would_refuse_are_refused_even_where_no_policy_looks(args: dict, problem: str) -> None:
    d = evaluate(*_free_call(args), now=NOW)
    assert (d.outcome, d.gate) == ("deny", "args") and problem in d.reasons[0]


def test_plain_args_that_look_like_entities_stay_plain_data() -> None:
    allowed = evaluate(*_free_call({"label": "ok", "other": {"type": "Group", "id": "finance"}}), now=NOW)
    assert (allowed.outcome, allowed.policy_ids) == ("allow", ("qa.mark.ok-label",))
    # A record is not an entity: `in` on it is a policy error, which denies.
    record = evaluate(*_free_call({"target": {"type": "Group", "id": "finance"}}), now=NOW)
    assert (record.outcome, record.gate) == ("deny", "policy") and "policy error" in record.reasons[0]
    assert "qa.mark.finance-targets" in record.reasons[0]  # errors name the policy by its @id
    text = evaluate(*_free_call({"src": "10.1.2.3"}), now=NOW)
    assert (text.outcome, text.gate) == ("deny", "policy") and "qa.mark.from-inside" in text.reasons[0]
