"""`lockgate policy test | diff | schema` on the shipped policies and on changed copies (no servers)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lockgate.activities.governance import record_decision
from lockgate.activities.ledger import Ledger
from lockgate.gates.engine import evaluate
from lockgate.models import Chain, GateRequest, GateState, ToolCall
from lockgate.policies import load_bundle
from lockgate.schema import generate_schema
from lockgate.spec import load_agents
from tests.support.stack import run_cli

ROOT = Path(__file__).resolve().parent.parent
DEMO = "lockgate.demo.shop,lockgate.demo.incident"
agents = load_agents(DEMO, entry_points=False)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKGATE_", "VAULT_"))}
    return {
        **clean,
        "LOCKGATE_AGENT_MODULES": DEMO,
        "LOCKGATE_STATE_DIR": str(tmp_path / "state"),
        "LOCKGATE_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
    }


def changed_copy(tmp_path: Path) -> Path:
    """The shipped policies with the chain rule dropped and the finance threshold lowered to 20.00."""
    target = tmp_path / "candidate"
    shutil.copytree(ROOT / "policies", target)
    text = (target / "refund-agent.cedar").read_text()
    rule = text.index('@id("refunds.once-per-order")')
    text = text[:rule] + text[text.index(";", rule) + 1 :]
    text = text.replace("context.args.amount_cents > 10000 }", "context.args.amount_cents > 2000 }")
    (target / "refund-agent.cedar").write_text(text)
    return target


def test_policy_test_passes_on_the_shipped_policies(env: dict[str, str]) -> None:
    out = run_cli(env, "policy", "test", str(ROOT / "policies"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "13 passed, 0 failed" in out.stdout
    as_json = json.loads(run_cli(env, "policy", "test", str(ROOT / "policies"), "--json").stdout)
    assert as_json["failed"] == 0 and len(as_json["cases"]) == 13


def test_policy_test_names_each_failure(env: dict[str, str], tmp_path: Path) -> None:
    out = run_cli(env, "policy", "test", str(changed_copy(tmp_path)))
    assert out.returncode == 1, out.stdout + out.stderr
    assert (
        "FAIL refund-agent.tests.yaml#5: a second refund on an order this run already refunded is denied" in out.stdout
    )
    assert "outcome allow, expected deny" in out.stdout
    assert "policies ['refund-agent.issue-refunds'], expected ['refunds.once-per-order']" in out.stdout
    assert "FAIL refund-agent.tests.yaml#1: a small refund runs autonomously" in out.stdout
    assert "11 passed, 2 failed" in out.stdout  # #1 (25.00) now also needs finance


def test_policy_test_refuses_a_malformed_case(env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "bad"
    shutil.copytree(ROOT / "policies", target)
    (target / "broken.tests.yaml").write_text("- name: no expectation\n  agent: refund-agent\n  tool: orders.lookup\n")
    out = run_cli(env, "policy", "test", str(target))
    assert out.returncode == 2 and "broken.tests.yaml: case 1: expect" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def _record(ledger: Ledger, run_id: str, step: int, tool: str, args: dict, chain: Chain) -> None:
    bundle = load_bundle(ROOT / "policies", agents)
    request = GateRequest(
        decision_id=f"{run_id}/{step}/1",
        run_id=run_id,
        agent="refund-agent",
        initiator="erin",
        step=step,
        call=ToolCall(tool=tool, args=args),
        state=GateState(chain=chain),
    )
    record_decision(ledger, evaluate(bundle, agents.get("refund-agent"), request, now=datetime.now(UTC)), request)


def test_policy_diff_lists_every_decision_that_would_change(env: dict[str, str], tmp_path: Path) -> None:
    ledger = Ledger(env["LOCKGATE_LEDGER_URL"])
    spec = agents.get("refund-agent")
    assert spec is not None
    refund = spec.tool("refunds.issue")
    assert refund is not None
    a1 = {"order_id": "A-1001", "amount_cents": 2500}
    done = Chain().after("refunds.issue", refund.resource_of(a1), "internal", False)
    _record(ledger, "run-1", 1, "orders.lookup", {"order_id": "A-1001"}, Chain())  # allow either way
    _record(ledger, "run-1", 2, "refunds.issue", a1, Chain())  # allow -> approval(finance)
    _record(ledger, "run-1", 3, "refunds.issue", a1, done)  # deny (chain) -> approval(finance)
    _record(ledger, "run-2", 1, "refunds.issue", {"order_id": "A-1003", "amount_cents": 1500}, Chain())  # allow
    ledger.dispose()

    same = run_cli(env, "policy", "diff", str(ROOT / "policies"))
    assert same.returncode == 0 and "0 of 4 recorded decisions would change" in same.stdout, same.stdout + same.stderr

    out = run_cli(env, "policy", "diff", str(changed_copy(tmp_path)), "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert (report["checked"], report["changed"]) == (4, 2)
    changes = {(c["run_id"], c["step"]): (c["before"], c["after"]) for c in report["changes"]}
    assert changes == {
        ("run-1", 2): ("allow", "approval(finance)"),
        ("run-1", 3): ("deny", "approval(finance)"),
    }
    assert report["by_policy"] == {"refunds.large-needs-finance": 2, "refunds.once-per-order": 1}
    assert report["by_transition"] == {"allow -> approval(finance)": 1, "deny -> approval(finance)": 1}
    text = run_cli(env, "policy", "diff", str(changed_copy(tmp_path / "t")))
    assert "run-1 step 3 refunds.issue: deny -> approval(finance)" in text.stdout
    assert "2 of 4 recorded decisions would change" in text.stdout


def test_policy_schema_prints_the_generated_schema(env: dict[str, str]) -> None:
    out = run_cli(env, "policy", "schema")
    assert out.returncode == 0, out.stderr
    assert out.stdout == generate_schema(agents.agents()) == (ROOT / "policies/schema.cedarschema").read_text()
    assert 'action "refunds.issue" appliesTo' in out.stdout and "resource: Order" in out.stdout
