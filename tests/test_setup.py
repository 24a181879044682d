"""`lockgate setup`'s pieces that need no servers (the whole command: tests/test_production.py)."""

from __future__ import annotations

import re
from pathlib import Path

from lockgate import bootstrap, setup
from lockgate.spec import load_agents

ROOT = Path(__file__).resolve().parent.parent


def test_setup_registers_every_search_attribute_the_workflows_write() -> None:
    written = set()
    for path in [*(ROOT / "workflows").glob("*.py"), *(ROOT / "lockgate").rglob("*.py")]:
        written |= set(re.findall(r'SearchAttributeKey\.for_\w+\("(\w+)"\)', path.read_text()))
    assert written, "no SearchAttributeKey found in workflows/ or lockgate/"
    assert set(setup.search_attributes()) == written
    assert setup.search_attribute_flags() == [
        "LockgateAgent=Keyword",
        "LockgateInitiator=Keyword",
        "LockgatePending=KeywordList",
        "LockgateState=Keyword",
    ]


def test_temporal_cloud_is_recognised() -> None:
    assert setup._is_cloud("prod.a1b2c.tmprl.cloud:7233")
    assert setup._is_cloud("us-east-1.aws.api.temporal.io:7233")
    assert not setup._is_cloud("temporal-frontend.temporal.svc:7233")
    assert not setup._is_cloud("tmprl.cloud.example.com:7233")


def test_vault_durations_compare_as_seconds() -> None:
    assert bootstrap._same(3600, "1h") and bootstrap._same(2592000, "720h") and bootstrap._same(0, "0")
    assert not bootstrap._same(3600, "2h")
    assert bootstrap._same(["b", "a"], ["a", "b"]) and not bootstrap._same(["a"], ["a", "b"])
    assert bootstrap._same(None, []) and not bootstrap._same("x", [])


def test_approver_groups_come_from_policies_and_agents() -> None:
    groups = setup.approver_groups(ROOT / "policies", load_agents("lockgate.demo.shop"))
    assert {"finance", "support-leads", "operators"} <= set(groups)


def test_setup_policy_cannot_sign_as_a_person_or_read_runs() -> None:
    text = setup.setup_policy()
    assert "transit/sign" not in text and "transit/hmac" not in text
    assert f'"{bootstrap.RUNS_MOUNT}/' not in text  # run tokens live there
    assert "sys/storage/raft" not in text and 'path "*"' not in text


def test_changes_in_a_dry_run_are_recorded_not_applied() -> None:
    changes = bootstrap.Changes(dry_run=True)
    assert changes("policy x: created") is False
    assert changes.done == ["policy x: created"] and bool(changes)
    assert bootstrap.Changes()("y") is True
