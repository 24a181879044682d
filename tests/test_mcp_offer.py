"""MCP tools without a stack: Cedar types of their args from the pinned inputSchema (so `policy
check` type-checks policies on MCP arguments), and what a model is offered."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lockgate.errors import PolicyError
from lockgate.gates.offer import never_allowed, offered
from lockgate.mcp import pins
from lockgate.policies import load_bundle
from lockgate.schema import generate_schema
from lockgate.spec import AgentRegistry
from tests.mcp import bank_server
from tests.mcp.agent import TELLER

ROOT = Path(__file__).resolve().parents[1]
AGENTS = AgentRegistry([TELLER])


def _pin_all(policy_dir: Path) -> None:
    definitions = {t.name: pins.definition_of(t) for t in bank_server.tools()}
    for server in ("bank", "bankhttp"):
        pins.write_pin(policy_dir, server, definitions, by="test", endpoint="test")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "tests" / "mcp" / "policies.cedar", tmp_path / "mcp.cedar")
    return tmp_path


def test_policies_on_mcp_args_are_type_checked_against_the_pinned_input_schema(policy_dir: Path) -> None:
    # Unpinned, the args of an MCP tool have no attributes: a policy naming one is refused.
    with pytest.raises(PolicyError) as unpinned:
        load_bundle(policy_dir, AGENTS)
    assert "args.account" in str(unpinned.value.problems)
    _pin_all(policy_dir)
    bundle = load_bundle(policy_dir, AGENTS)
    schema = bundle.schema_text or ""
    assert 'action "bank.transfer"' in schema
    assert "args: { account: String, amount_cents: Long, memo?: String }" in schema
    # The bundle hash (named by every decision record) covers the pinned definitions: a new
    # description, which changes no type, still makes another bundle.
    definitions = {t.name: pins.definition_of(t) for t in bank_server.tools()}
    definitions["lookup"]["description"] = "Look up a balance."
    pins.write_pin(policy_dir, "bank", definitions, by="test", endpoint="test")
    assert load_bundle(policy_dir, AGENTS).hash != bundle.hash
    # A typo and a type error in a policy on MCP args are both caught.
    (policy_dir / "typo.cedar").write_text(
        '@id("typo")\nforbid (principal, action == Action::"bank.transfer", resource) when { context.args.amount > 5 };\n'
    )
    with pytest.raises(PolicyError) as typo:
        load_bundle(policy_dir, AGENTS)
    assert "typo.cedar" in str(typo.value.problems) and "amount" in str(typo.value.problems)
    (policy_dir / "typo.cedar").write_text(
        '@id("typo")\nforbid (principal, action == Action::"bank.transfer", resource) '
        "when { context.args.account > 5 };\n"
    )
    with pytest.raises(PolicyError):
        load_bundle(policy_dir, AGENTS)


def test_generated_schema_keeps_python_tools_and_types_mcp_tools() -> None:
    text = generate_schema([TELLER], {"bank.lookup": "{ account: String }"})
    assert "args: { account: String }" in text
    assert 'action "bankhttp.lookup"' in text  # without a given type: `{}`


def test_the_model_is_offered_only_tools_that_could_ever_be_allowed(policy_dir: Path) -> None:
    from lockgate.activities.planner import tool_schemas

    _pin_all(policy_dir)
    (policy_dir / "mcp.cedar").write_text(
        '@id("read")\npermit (principal == Agent::"mcp-teller", action == Action::"bank.lookup", resource);\n'
        '@id("move")\npermit (principal, action in [Action::"bank.transfer", Action::"bank.purge"], resource);\n'
        '@id("other")\npermit (principal == Agent::"someone-else", action == Action::"bank.reverse", resource);\n'
        '@id("never-purge")\nforbid (principal, action == Action::"bank.purge", resource);\n'
        '@id("big")\n@approval("finance")\nforbid (principal, action == Action::"bank.transfer", resource)\n'
        "when { context.args.amount_cents > 100 };\n"
    )
    bundle = load_bundle(policy_dir, AGENTS)
    boundary = [t.name for t in TELLER.tools]
    assert offered(bundle, "mcp-teller", boundary) == ["bank.lookup", "bank.transfer"]
    assert never_allowed(bundle, "mcp-teller", "bank.purge") == "forbidden without condition by never-purge"
    assert never_allowed(bundle, "mcp-teller", "bank.reverse") == "no permit policy can apply"
    schemas = tool_schemas(TELLER, offered(bundle, "mcp-teller", boundary), str(policy_dir))
    by_name = {s["function"]["name"]: s["function"] for s in schemas}
    assert sorted(by_name) == ["bank__lookup", "bank__transfer"]
    # Described by the pinned definition (what a person approved), not by the live server.
    assert by_name["bank__lookup"]["description"] == "Look up an account's balance."
    assert by_name["bank__transfer"]["parameters"]["required"] == ["account", "amount_cents"]
    # An unpinned MCP tool is not offered at all.
    (policy_dir / "mcp" / "bank.json").unlink()
    assert tool_schemas(TELLER, None, str(policy_dir))[0]["function"]["name"] == "bankhttp__lookup"
