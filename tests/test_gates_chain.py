"""Chain-aware policies, pure: the run's recorded chain in `context.chain`, declared resources as the
Cedar `resource`, and the generated schema (no Temporal, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from lockgate.errors import PolicyError
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.chain import chain_context, resource_entity
from lockgate.gates.engine import evaluate
from lockgate.models import CHAIN_RESOURCES, Chain, Decision, GateRequest, GateState, ToolCall
from lockgate.policies import load_bundle
from lockgate.schema import generate_schema, merge_schema
from lockgate.spec import load_agents
from tests.support.stack import AGENT_MODULES

registry = load_agents(AGENT_MODULES, entry_points=False)
demo = load_agents("lockgate.demo.shop,lockgate.demo.incident", entry_points=False)
ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 23, tzinfo=UTC)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> PolicyBundle:
    target = tmp_path_factory.mktemp("policies")
    for item in (ROOT / "policies").iterdir():
        if item.is_file():
            (target / item.name).write_text(item.read_text())
    (target / "test-agents.cedar").write_text((ROOT / "tests/policies/test-agents.cedar").read_text())
    with open(target / "schema.cedarschema", "a") as schema:
        schema.write((ROOT / "tests/policies/test-schema.cedarschema").read_text())
    return load_bundle(target, registry)


def ran(agent: str, *calls: tuple[str, dict]) -> Chain:
    """The chain of a run of `agent` after `calls` ran, as the workflow keeps it."""
    spec = registry.get(agent)
    assert spec is not None
    chain = Chain()
    for name, args in calls:
        tool = spec.tool(name)
        assert tool is not None
        chain = chain.after(tool.name, tool.resource_of(args), tool.data_class, tool.egress)
    return chain


def decide(bundle: PolicyBundle, agent: str, tool: str, args: dict, chain: Chain, **state: object) -> Decision:
    request = GateRequest(
        decision_id="d-1",
        run_id="r-1",
        agent=agent,
        initiator="erin",
        step=1,
        call=ToolCall(tool=tool, args=args),
        state=GateState(chain=chain, **state),
    )
    return evaluate(bundle, registry.get(agent), request, now=NOW)


A1 = {"order_id": "A-1001", "amount_cents": 500}
A2 = {"order_id": "A-1002", "amount_cents": 500}


def test_a_second_refund_on_the_same_order_is_denied_by_the_chain(bundle: PolicyBundle) -> None:
    first = decide(bundle, "refund-agent", "refunds.issue", A1, Chain())
    assert first.outcome == "allow"
    chain = ran("refund-agent", ("orders.lookup", {"order_id": "A-1001"}), ("refunds.issue", A1))
    again = decide(bundle, "refund-agent", "refunds.issue", A1, chain)
    assert (again.outcome, again.gate, again.policy_ids) == ("deny", "policy", ("refunds.once-per-order",))
    # Another order is not this order: the chain names resources, not only tools.
    assert decide(bundle, "refund-agent", "refunds.issue", A2, chain).outcome == "allow"


def test_chain_escalates_a_refund_on_a_further_order(bundle: PolicyBundle) -> None:
    chain = ran("chain-agent", ("refunds.issue", A1))
    d = decide(bundle, "chain-agent", "refunds.issue", A2, chain)
    assert (d.outcome, d.approver_group, d.policy_ids) == (
        "approval",
        "finance",
        ("chain-agent.second-order-needs-finance",),
    )
    approved = decide(bundle, "chain-agent", "refunds.issue", A2, chain, approved_groups=("finance",))
    assert approved.outcome == "allow"
    same = decide(bundle, "chain-agent", "refunds.issue", A1, chain, approved_groups=("finance",))
    assert (same.outcome, same.policy_ids) == ("deny", ("chain-agent.refund-once",))


def test_paging_after_two_quarantines_needs_oncall(bundle: PolicyBundle) -> None:
    page = {"host_id": "web-01", "message": "wide incident"}
    one = ran("incident-agent", ("host.quarantine", {"host_id": "web-01", "reason": "x"}))
    assert decide(bundle, "incident-agent", "oncall.page", page, one).outcome == "allow"
    two = ran(
        "incident-agent",
        ("host.quarantine", {"host_id": "web-01", "reason": "x"}),
        ("host.quarantine", {"host_id": "web-02", "reason": "x"}),
    )
    d = decide(bundle, "incident-agent", "oncall.page", page, two)
    assert (d.outcome, d.approver_group, d.policy_ids) == (
        "approval",
        "sre-oncall",
        ("page.after-quarantines-needs-oncall",),
    )


def test_declared_resource_keeps_the_tools_risk_labels(bundle: PolicyBundle) -> None:
    spec = registry.get("refund-agent")
    assert spec is not None
    notify = spec.tool("customer.notify")
    assert notify is not None
    entity = resource_entity(notify, {"order_id": "A-1001", "message": "hi"})
    assert entity["uid"] == {"type": "Order", "id": "A-1001"}
    assert entity["parents"] == [{"type": "Tool", "id": "customer.notify"}] and entity["attrs"]["egress"] is True
    # `resource.egress` still decides: egress after a regulated read needs a support lead.
    args = {"order_id": "A-1001", "message": "hi"}
    d = decide(bundle, "refund-agent", "customer.notify", args, Chain(), tainted=True)
    assert (d.outcome, d.policy_ids) == ("approval", ("egress.after-regulated-read",))
    assert decide(bundle, "refund-agent", "customer.notify", args, Chain()).outcome == "allow"


def test_chain_context_shape_and_bounds() -> None:
    spec = registry.get("refund-agent")
    assert spec is not None
    chain = ran(
        "refund-agent",
        ("orders.lookup", {"order_id": "A-1001"}),
        ("customers.profile", {"order_id": "A-1001"}),
        ("refunds.issue", A1),
        ("customer.notify", {"order_id": "A-1001", "message": "done"}),
    )
    ctx = chain_context(spec, chain)
    a1 = "A-1001"
    assert ctx["calls"]["refunds.issue"] == 1 and ctx["calls"]["accounts.close"] == 0
    assert ctx["tools"] == ["customer.notify", "customers.profile", "orders.lookup", "refunds.issue"]
    assert ctx["steps"] == 4 and ctx["resources"] == {"Customer": [], "Order": [a1]}
    assert ctx["touched"]["refunds.issue"] == [a1] and ctx["touched"]["accounts.close"] == []
    assert ctx["distinct"] == {"Customer": 0, "Order": 1} and ctx["on_resource"] == []
    here = chain_context(spec, chain, ("Order", "A-1001"))["on_resource"]
    assert here == ["customer.notify", "customers.profile", "orders.lookup", "refunds.issue"]
    assert chain_context(spec, chain, ("Order", "A-1002"))["on_resource"] == []
    assert ctx["data_classes"] == ["internal", "regulated"] and ctx["egress"] is True
    # Bounded: at most CHAIN_RESOURCES distinct resources per type, however long the run.
    big = Chain()
    for i in range(CHAIN_RESOURCES + 20):
        big = big.after("orders.lookup", ("Order", f"B-{i:04d}"), "internal", False)
    assert len(big.resources) == CHAIN_RESOURCES and big.truncated and big.calls["orders.lookup"] == 70
    assert len(big.touched["orders.lookup"]) == CHAIN_RESOURCES
    # A sub-agent's chain counts for its parent.
    merged = chain.merged(ran("refund-agent", ("refunds.issue", A2)))
    assert merged.calls["refunds.issue"] == 2 and ("Order", "A-1002") in merged.touched["refunds.issue"]


def test_shipped_policies_are_checked_against_the_generated_schema() -> None:
    # No hand-written schema for tools: the bundle's schema is the one generated from their models;
    # the shipped schema.cedarschema is that output (`lockgate policy schema`), for readers of the
    # directory, and adds nothing.
    assert load_bundle(ROOT / "policies", demo).schema_text == generate_schema(demo.agents())
    assert (ROOT / "policies/schema.cedarschema").read_text() == generate_schema(demo.agents())


def test_generated_schema_checks_chain_policies() -> None:
    schema = generate_schema(demo.agents())
    good = (
        '@id("g") forbid (principal, action == Action::"refunds.issue", resource) '
        'when { context.chain.touched["refunds.issue"].contains(context.args.order_id) '
        '&& context.chain.on_resource.contains("orders.lookup") && context.chain.distinct.Order > 3 };'
    )
    PolicyBundle.build({"g.cedar": good}, schema_text=schema)
    for bad in (
        'when { context.chain.touched["no.such"].contains("A-1001") }',  # not a tool of the agent
        "when { context.args.amount > 5 }",  # not an argument of refunds.issue
        "when { context.chain.resources.Order.contains(resource) }",  # ids are strings, not entities
        "when { context.chain.distinct.Host > 1 }",  # no refund-agent tool acts on a Host
    ):
        text = f'@id("b") forbid (principal, action == Action::"refunds.issue", resource) {bad};'
        with pytest.raises(PolicyError):
            PolicyBundle.build({"b.cedar": text}, schema_text=schema)


def test_a_written_schema_adds_only_what_the_tools_do_not_declare() -> None:
    generated = generate_schema(demo.agents())
    written = (
        'action "refunds.issue" appliesTo { principal: Agent, resource: Tool, context: {} };\n'
        "// someone else's tool\n"
        'action "orders.count" appliesTo { principal: Agent, resource: Tool, context: { run: Run } };\n'
    )
    merged = merge_schema(generated, written)
    assert merged.startswith(generated) and merged.count('action "refunds.issue"') == 1
    assert 'action "orders.count"' in merged
    policy = '@id("c") permit (principal, action == Action::"orders.count", resource) when { context.run.tainted };'
    PolicyBundle.build({"c.cedar": policy}, schema_text=merged)
