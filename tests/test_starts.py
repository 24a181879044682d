"""Who may start what (issue 27): a start is a Cedar decision, default deny, enforced where the run
opens. Attacked as the person who must be refused: mallory (no group) starting refund-agent, from the
CLI and with a correctly signed start sent straight to Temporal."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from temporalio.client import Client

from lockgate.errors import PolicyError
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.starts import decide_start
from lockgate.policies import load_bundle
from lockgate.spec import registry
from tests.support.stack import ROOT, Outside, as_person, cli, finish, ledger_events, start

REFUND = {"order_id": "A-1001", "amount_cents": 100}


@pytest.fixture(scope="module")
def shipped() -> PolicyBundle:
    import lockgate.demo.incident
    import lockgate.demo.shop  # noqa: F401

    return load_bundle(ROOT / "policies", registry)


@pytest.mark.parametrize(
    ("person", "groups", "agent", "allowed"),
    [
        ("erin", ("requesters",), "refund-agent", True),
        ("alice", ("finance",), "refund-agent", True),
        ("carol", ("operators", "support-leads"), "refund-agent", True),
        ("mallory", (), "refund-agent", False),
        ("frank", ("sre-oncall",), "refund-agent", False),
        ("frank", ("sre-oncall",), "incident-agent", True),
        ("alice", ("finance",), "incident-agent", False),
        ("erin", ("requesters",), "no-such-agent", False),
    ],
)
def test_the_shipped_start_policies(
    shipped: PolicyBundle, person: str, groups: tuple[str, ...], agent: str, allowed: bool
) -> None:
    verdict = decide_start(shipped, person, groups, agent, "someone")
    assert verdict.allowed is allowed, verdict
    if allowed:
        assert verdict.policy_ids == (f"start.{agent}",)
    else:
        assert f"{person} (groups: {', '.join(sorted(groups)) or 'none'}) may not start {agent}" in verdict.reason


def test_groups_come_from_the_caller_not_entities_json(shipped: PolicyBundle) -> None:
    """entities.json says alice is in finance; the start is decided on the groups Vault gives now."""
    assert '"id": "alice"}, "attrs": {}, "parents": [{"type": "Group", "id": "finance"}]' in shipped.entities_json
    assert not decide_start(shipped, "alice", (), "refund-agent", "x").allowed


def test_default_deny_and_forbid() -> None:
    tool = '@id("t") permit (principal, action == Action::"x", resource);\n'
    assert (
        "default deny" in decide_start(PolicyBundle.build({"p.cedar": tool}), "erin", ("requesters",), "a", "o").reason
    )
    both = PolicyBundle.build(
        {
            "p.cedar": tool
            + '@id("s") permit (principal in Group::"requesters", action == lockgate::Action::"start", resource);\n'
            + '@id("no-mallory") forbid (principal == User::"mallory", action == lockgate::Action::"start", resource);\n'
        }
    )
    assert decide_start(both, "erin", ("requesters",), "a", "o").allowed
    refused = decide_start(both, "mallory", ("requesters",), "a", "o")
    assert not refused.allowed and refused.policy_ids == ("no-mallory",)


def test_no_start_policy_at_all_refuses_every_start() -> None:
    only_tools = PolicyBundle.build({"p.cedar": '@id("t") permit (principal, action == Action::"x", resource);\n'})
    verdict = decide_start(only_tools, "erin", ("requesters",), "a", "o")
    assert not verdict.allowed and verdict.policy_ids == ()
    assert verdict.reason == "no policy permits starting any agent (default deny)"


_START = 'permit (principal, action == lockgate::Action::"start", resource)'


def _start_bundle(policy: str, entities: list[dict[str, Any]] | None = None) -> PolicyBundle:
    return PolicyBundle.build({"s.cedar": f'@id("s") {policy};\n'}, entities_json=json.dumps(entities or []))


def test_an_agent_not_in_entities_json_is_judged_by_its_declared_owner() -> None:
    """`resource.owner` is the owner the agent declares when entities.json does not list it (other
    agents listed there change nothing)."""
    bundle = _start_bundle(
        f'{_START} when {{ resource.owner == "payments" }}',
        [{"uid": {"type": "Agent", "id": "other-agent"}, "attrs": {"owner": "payments"}, "parents": []}],
    )
    assert decide_start(bundle, "erin", (), "refund-agent", "payments").allowed
    assert not decide_start(bundle, "erin", (), "refund-agent", "marketing").allowed


def test_an_agent_listed_in_entities_json_keeps_its_listed_owner() -> None:
    bundle = _start_bundle(
        f'{_START} when {{ resource.owner == "payments" }}',
        [{"uid": {"type": "Agent", "id": "refund-agent"}, "attrs": {"owner": "payments"}, "parents": []}],
    )
    assert decide_start(bundle, "erin", (), "refund-agent", "whatever-it-declares").allowed


def test_nested_groups_of_entities_json_count_and_the_persons_own_entry_does_not() -> None:
    """Vault gives the person's groups; entities.json still nests groups (leads within requesters),
    whether it lists the person before or after the groups. The person's own entry there (alice in
    requesters) is replaced by what Vault says; other people's entries stay."""
    entities = [
        {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": [{"type": "Group", "id": "requesters"}]},
        {"uid": {"type": "Group", "id": "leads"}, "attrs": {}, "parents": [{"type": "Group", "id": "requesters"}]},
        {"uid": {"type": "User", "id": "bob"}, "attrs": {}, "parents": [{"type": "Group", "id": "requesters"}]},
    ]
    bundle = _start_bundle(f'{_START} when {{ principal in Group::"requesters" }}', entities)
    assert decide_start(bundle, "alice", ("leads",), "a", "o").allowed
    assert not decide_start(bundle, "alice", (), "a", "o").allowed
    # A buddy rule reads another person's entry: it stays as entities.json lists it.
    buddy = _start_bundle(f'{_START} when {{ User::"bob" in Group::"requesters" }}', entities)
    assert decide_start(buddy, "alice", (), "a", "o").allowed


def test_a_start_that_cannot_be_evaluated_is_refused() -> None:
    bundle = _start_bundle(_START)
    verdict = decide_start(bundle, "erin", ("requesters", None), "a", "o")  # type: ignore[arg-type]  # a broken group list
    assert not verdict.allowed and verdict.reason == "start policy could not be evaluated: TypeError"


def test_start_policies_validate_apart_from_tool_policies(shipped: PolicyBundle) -> None:
    """An open-scope tool forbid reading a tool label (refund-agent.cedar's egress rule) does not have
    to type-check against a start, and a start policy is checked against the start schema."""
    assert any(s.policy_id == "egress.after-regulated-read" for s in shipped.statements)
    with pytest.raises(PolicyError) as err:
        PolicyBundle.build(
            {
                "s.cedar": '@id("bad") permit (principal, action == lockgate::Action::"start", resource)\n'
                "when { resource.egress };\n"
            }
        )
    assert err.value.problems[0].startswith("s.cedar:1:") and "egress" in err.value.problems[0]


async def test_mallory_cannot_start_refund_agent_from_the_cli(env: dict[str, str], deps: Any) -> None:
    run_id = f"refund-agent-{uuid.uuid4().hex[:10]}"
    refused = await cli(as_person(env, "mallory"), "run", "refund-agent", "--input", json.dumps(REFUND), "--id", run_id)
    assert refused.returncode == 2, refused
    assert refused.stderr.strip() == (
        "lockgate: start refused: mallory (groups: none) may not start refund-agent: "
        "no start policy permits it (default deny)"
    )
    assert "Traceback" not in refused.stderr
    (event,) = ledger_events(deps, run_id, "run.refused")
    assert event["initiator"] == "mallory" and "default deny" in event["reason"]


async def test_a_signed_start_straight_to_temporal_is_refused_where_the_run_opens(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    """mallory's start is correctly signed (authenticated) but authorizes nothing: the worker refuses
    it before any identity exists or any tool runs, and records the decision and the refusal."""
    handle = await start(client, worker_running, "refund-agent", REFUND, initiator="mallory")
    cause = await finish(handle)
    assert cause is not None and "mallory (groups: none) may not start refund-agent" in str(cause)
    (decision,) = ledger_events(deps, handle.id, "start.decision")
    assert (decision["person"], decision["outcome"], decision["groups"]) == ("mallory", "deny", [])
    assert decision["bundle_hash"] == deps.bundle.hash
    (refusal,) = ledger_events(deps, handle.id, "run.refused")
    assert refusal["reason"].startswith("start: mallory (groups: none) may not start refund-agent")
    assert ledger_events(deps, handle.id, "run.opened") == []
    assert outside.refunds(handle.id) == []

    allowed = await start(client, worker_running, "refund-agent", REFUND, initiator="erin")
    assert await finish(allowed) is None
    (decision,) = ledger_events(deps, allowed.id, "start.decision")
    assert (decision["outcome"], decision["groups"], decision["policy_ids"]) == (
        "allow",
        ["requesters"],
        ["start.refund-agent"],
    )
