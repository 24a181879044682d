"""The operator CLI against the real stack: run, status, audit, leases, errors (exit codes 0/1/2)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from lockgate.text import safe_md
from tests.support.stack import as_person, cli


@pytest.fixture(scope="module")
def cli_env(env: dict[str, str], worker_running: str) -> dict[str, str]:
    # A support lead and operator: may start refunds and read payloads (erin, a requester, may start
    # but not read them: tests/test_payload_roles.py).
    return as_person(env, "carol")


async def test_run_wait_json_then_status_and_audit(cli_env: dict[str, str]) -> None:
    result = await cli(
        cli_env,
        "run",
        "refund-agent",
        "--input",
        '{"order_id": "A-1001", "amount_cents": 300}',
        "--wait",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["state"] == "completed" and status["initiator"] == "carol"
    run_id = status["run_id"]

    result = await cli(cli_env, "status", run_id, "--json")
    assert result.returncode == 0
    again = json.loads(result.stdout)
    assert again["state"] == "completed" and again["open_leases"] == 0 and again["step"] == 2
    assert [s["tool"] for s in again["steps"]] == ["orders.lookup", "refunds.issue"]

    text = await cli(cli_env, "status", run_id)
    assert text.returncode == 0 and "completed" in text.stdout and "refunds.issue" in text.stdout

    audit = await cli(cli_env, "audit", run_id, "--format", "json")
    assert audit.returncode == 0, audit.stderr
    doc = json.loads(audit.stdout)
    assert doc["schema"] == "lockgate.audit/v1" and doc["ledger_intact"] is True
    decisions = [e for e in doc["entries"] if e["kind"] == "decision"]
    assert [d["data"]["policy_ids"] for d in decisions] == [
        ["refund-agent.read-orders"],
        ["refund-agent.issue-refunds"],
    ]
    lease_ids = [s["lease_id"] for s in again["steps"]]
    issued = [e["data"]["lease_id"] for e in doc["entries"] if e["kind"] == "lease.issued"]
    assert issued == lease_ids
    text = await cli(cli_env, "audit", run_id)
    assert all(lease in text.stdout for lease in lease_ids) and "refund-agent.issue-refunds" in text.stdout
    md = await cli(cli_env, "audit", run_id, "--format", "md")
    assert md.stdout.startswith(f"# Audit of run {safe_md(run_id)}")


async def test_run_prints_the_run_id_without_wait(cli_env: dict[str, str]) -> None:
    run_id = f"cli-fixed-{uuid.uuid4().hex[:6]}"
    result = await cli(
        cli_env, "run", "refund-agent", "--input", '{"order_id": "A-1001", "amount_cents": 100}', "--id", run_id
    )
    assert (result.returncode, result.stdout.strip()) == (0, run_id), result.stderr
    dup = await cli(
        cli_env, "run", "refund-agent", "--input", '{"order_id": "A-1001", "amount_cents": 100}', "--id", run_id
    )
    assert dup.returncode == 2 and "already exists" in dup.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "no-such-agent"], "unknown agent"),
        (["run", "refund-agent", "--input", "{not json"], "not valid JSON"),
        (["run", "refund-agent", "--input", "[1, 2]"], "JSON object"),
        (["run", "refund-agent", "--input", '{"order_id": "A-1001"}'], "amount_cents"),
        (["status", "no-such-run"], "unknown run"),
        (["audit", "no-such-run"], "unknown run"),
        (["halt", "no-such-run"], "unknown run"),
        (["approve", "no-such-run", "1.1"], "unknown run"),
    ],
)
async def test_bad_input_exits_2_with_one_clear_line(cli_env: dict[str, str], args: list[str], message: str) -> None:
    result = await cli(cli_env, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


async def test_unreachable_server_is_a_clear_refusal(cli_env: dict[str, str]) -> None:
    result = await cli({**cli_env, "LOCKGATE_TEMPORAL_ADDRESS": "127.0.0.1:1"}, "status", "whatever")
    assert result.returncode == 2 and "cannot reach Temporal" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_leases_json_is_empty_when_idle(cli_env: dict[str, str]) -> None:
    result = await cli(cli_env, "leases", "--json")
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)


async def test_help_lists_every_command(cli_env: dict[str, str]) -> None:
    result = await cli(cli_env, "--help")
    assert result.returncode == 0
    for command in (
        "dev",
        "worker",
        "demo",
        "run",
        "status",
        "pending",
        "approve",
        "reject",
        "halt",
        "audit",
        "leases",
        "policy",
    ):
        assert command in result.stdout


async def test_verify_ledger(cli_env: dict[str, str]) -> None:
    result = await cli(cli_env, "verify", "--json")
    data: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == 0 and data["intact"] is True


async def test_acting_without_being_logged_in_is_refused(
    env: dict[str, str], worker_running: str, tmp_path: Path
) -> None:
    for args in (
        ["run", "refund-agent", "--input", '{"order_id": "A-1001", "amount_cents": 300}'],
        ["approve", "some-run", "1.1"],
        ["halt", "some-run"],
        ["freeze", "--agent", "refund-agent"],
    ):
        result = await cli({**env, "LOCKGATE_OPERATOR_TOKEN": "", "LOCKGATE_STATE_DIR": str(tmp_path)}, *args)
        assert result.returncode == 2 and "not logged in" in result.stderr, (args, result.stderr)
