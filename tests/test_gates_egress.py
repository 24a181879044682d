"""The model-egress gate (gates/egress.py), pure: which endpoint may see regulated results, what the
others get of them, and how its policies are validated apart from tool policies."""

from __future__ import annotations

import pytest

from lockgate.errors import PolicyError
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.egress import REDACTED, decide_model, model_view
from lockgate.gates.starts import decide_start

APPROVE = (
    '@id("llm.ok") permit (principal == Agent::"teller", action == lockgate::Action::"model.send", '
    'resource == Model::"https://llm.internal/v1");\n'
)
# An open-scope tool policy: it must neither allow nor forbid a model request.
TOOLS = (
    '@id("all") permit (principal, action, resource);\n'
    '@id("no-egress") forbid (principal, action, resource) when { resource.egress };\n'
)


def test_default_deny_and_only_the_approved_endpoint_for_the_named_agent() -> None:
    none = PolicyBundle.build({"t.cedar": TOOLS})
    verdict = decide_model(none, "teller", "https://llm.internal/v1")
    assert not verdict.allowed and "no policy approves" in verdict.reason
    bundle = PolicyBundle.build({"t.cedar": TOOLS, "m.cedar": APPROVE})
    ok = decide_model(bundle, "teller", "https://llm.internal/v1")
    assert ok.allowed and ok.policy_ids == ("llm.ok",)
    # Another endpoint, another agent, a look-alike URL: refused.
    assert not decide_model(bundle, "teller", "https://api.provider.example/v1").allowed
    assert not decide_model(bundle, "other", "https://llm.internal/v1").allowed
    assert not decide_model(bundle, "teller", "https://llm.internal/v1/../evil").allowed
    # A model policy decides no start, and a start policy approves no model.
    assert not decide_start(bundle, "erin", ("requesters",), "teller", "o").allowed


def test_a_forbid_wins_over_an_approval() -> None:
    bundle = PolicyBundle.build(
        {
            "m.cedar": APPROVE
            + '@id("llm.frozen") forbid (principal, action == lockgate::Action::"model.send", resource);\n'
        }
    )
    verdict = decide_model(bundle, "teller", "https://llm.internal/v1")
    assert not verdict.allowed and verdict.policy_ids == ("llm.frozen",)


def test_model_policies_validate_against_their_own_schema() -> None:
    with pytest.raises(PolicyError) as err:
        PolicyBundle.build(
            {
                "m.cedar": '@id("bad") permit (principal, action == lockgate::Action::"model.send", resource)\n'
                "when { resource.egress };\n"
            }
        )
    assert err.value.problems[0].startswith("m.cedar:1:") and "egress" in err.value.problems[0]
    with pytest.raises(PolicyError):
        PolicyBundle.build(
            {
                "m.cedar": '@id("two") permit (principal, action in [lockgate::Action::"model.send", '
                'lockgate::Action::"start"], resource);\n'
            }
        )


def test_what_an_unapproved_model_sees_of_a_regulated_result() -> None:
    mcp = {
        "server": "bank",
        "tool": "lookup",
        "definition": "sha256:x",
        "data_class": "regulated",
        "content": [{"type": "text", "text": "balance of A-1: 1000, owner Jane Roe"}],
        "summary": "balance of A-1: 1000, owner Jane Roe",
        "structured": {"balance_cents": 1000, "owner": "Jane Roe"},
    }
    assert model_view(mcp) == {"server": "bank", "tool": "lookup", "content": REDACTED}
    kept = model_view(mcp, ("balance_cents",))
    assert kept["structured"] == {"balance_cents": 1000} and "Jane" not in str(kept)
    assert model_view({"name": "Jane Roe", "tier": "gold"}, ("tier",)) == {"name": REDACTED, "tier": "gold"}
    assert model_view("Jane Roe, 1 Main St") == REDACTED
