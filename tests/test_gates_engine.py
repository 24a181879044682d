"""Pure unit tests of gates/engine.py against the repo's policies (no Temporal, no I/O)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

import tests.agents  # noqa: F401
from gates.bundle import PolicyBundle
from gates.engine import evaluate
from lockgate.models import Decision, GateRequest, GateState, ToolCall
from lockgate.policies import load_bundle
from lockgate.spec import registry

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def bundle() -> PolicyBundle:
    return load_bundle(ROOT / "policies", registry)


def decide(bundle: PolicyBundle, tool: str, args: dict, agent: str = "refund-agent", **state: object) -> Decision:
    request = GateRequest(decision_id="d-1", run_id="r-1", agent=agent, initiator="tester", step=1,
                          call=ToolCall(tool=tool, args=args), state=GateState(**state))
    return evaluate(bundle, registry.get(agent), request, now=NOW)


def test_permitted_call_names_its_policy(bundle: PolicyBundle) -> None:
    d = decide(bundle, "orders.lookup", {"order_id": "A-1001"})
    assert (d.outcome, d.gate, d.policy_ids) == ("allow", "policy", ("refund-agent.read-orders",))
    assert d.bundle_hash == bundle.hash and len(d.args_digest) == 64


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


def test_step_limit_and_budget(bundle: PolicyBundle) -> None:
    limit = registry.get("refund-agent").max_steps  # type: ignore[union-attr]
    d = decide(bundle, "orders.lookup", {"order_id": "A-1001"}, steps_taken=limit)
    assert (d.outcome, d.gate) == ("deny", "step_limit") and f"{limit} of {limit}" in d.reasons[0]
    budget = registry.get("refund-agent").budget  # type: ignore[union-attr]
    d = decide(bundle, "refunds.issue", {"order_id": "A-1001", "amount_cents": 500}, spent=budget)
    assert (d.outcome, d.gate) == ("deny", "budget") and str(budget) in d.reasons[0]


def test_any_error_inside_a_gate_is_a_deny(bundle: PolicyBundle) -> None:
    class Broken(PolicyBundle):
        def slice_for(self, action: str, *, without_approval: bool = False):  # type: ignore[override]
            raise RuntimeError("policy store exploded")

    broken = Broken(statements=bundle.statements, entities_json=bundle.entities_json,
                    schema_text=bundle.schema_text, hash=bundle.hash)
    d = decide(broken, "orders.lookup", {"order_id": "A-1001"})
    assert (d.outcome, d.gate) == ("deny", "policy") and "policy store exploded" in d.reasons[0]


def test_unknown_agent_is_denied(bundle: PolicyBundle) -> None:
    request = GateRequest(decision_id="d", run_id="r", agent="ghost", initiator="t", step=1,
                          call=ToolCall(tool="orders.lookup", args={"order_id": "A-1001"}))
    assert evaluate(bundle, None, request, now=NOW).outcome == "deny"
