"""The governed tool call end to end on the real stack: gate -> lease -> tool -> revoke."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from lockgate import errors
from lockgate.models import RunInput
from tests.support.stack import Outside, finish, ledger_events, ledger_kinds, start, status_of


async def test_refund_runs_governed_end_to_end(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1001", "amount_cents": 700})
    assert await finish(handle) is None
    status = await status_of(handle)
    assert status.state == "completed"
    assert [s.tool for s in status.steps] == ["orders.lookup", "refunds.issue"]

    # Exactly one refund, keyed by run id + step.
    assert outside.refunds(handle.id) == [("A-1001", 700, f"{handle.id}:2", 2, None)]

    # Every call was decided by named policies, in the ledger, with the bundle's hash.
    decisions = ledger_events(deps, handle.id, "decision")
    assert [(d["tool"], d["outcome"], d["policy_ids"]) for d in decisions] == [
        ("orders.lookup", "allow", ["refund-agent.read-orders"]),
        ("refunds.issue", "allow", ["refund-agent.issue-refunds"]),
    ]
    assert {d["bundle_hash"] for d in decisions} == {deps.bundle.hash}

    # One fresh lease per call, each revoked by the call itself, scoped to that tool's role.
    issued = ledger_events(deps, handle.id, "lease.issued")
    revoked = ledger_events(deps, handle.id, "lease.revoked")
    assert [i["secret_path"] for i in issued] == ["database/creds/shop-reader", "database/creds/shop-refunds"]
    assert sorted(i["lease_id"] for i in issued) == sorted(r["lease_id"] for r in revoked)
    assert [s.lease_id for s in status.steps] == [i["lease_id"] for i in issued]

    # The run's identity is gone, and nothing of the run is left in Vault or Postgres.
    assert status.identity_accessor and not outside.token_alive(status.identity_accessor)
    outside.assert_nothing_leaked()
    # The start was authorized (start policy) before the run opened.
    assert ledger_kinds(deps, handle.id)[:2] == ["start.decision", "run.opened"]
    assert ledger_kinds(deps, handle.id)[-1] == "run.closed"


async def test_denied_call_issues_no_lease_and_has_no_side_effect(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    handle = await start(client, worker_running, "refund-agent", {"order_id": "A-1002", "amount_cents": 150000})
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.TOOL_DENIED
    assert "refunds.hard-cap" in cause.message

    deny = [d for d in ledger_events(deps, handle.id, "decision") if d["outcome"] == "deny"]
    assert len(deny) == 1 and deny[0]["step"] == 2 and "refunds.hard-cap" in deny[0]["policy_ids"]
    assert [i["step"] for i in ledger_events(deps, handle.id, "lease.issued")] == [1]  # the lookup only
    assert outside.refunds(handle.id) == []
    outside.assert_nothing_leaked()


async def test_planner_proposing_an_unknown_tool_is_denied(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    handle = await start(
        client, worker_running, "script-agent", {"steps": [{"tool": "shell.exec", "args": {"cmd": "id"}}]}
    )
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.TOOL_DENIED
    assert "task boundary" in cause.message
    assert ledger_events(deps, handle.id, "lease.issued") == []
    outside.assert_nothing_leaked()


async def test_args_failing_the_schema_are_denied_before_any_lease(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": "a lot"}},
            ]
        },
    )
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.TOOL_DENIED
    assert "amount_cents" in cause.message
    assert [d["gate"] for d in ledger_events(deps, handle.id, "decision")] == ["args"]
    assert ledger_events(deps, handle.id, "lease.issued") == []
    assert outside.refunds(handle.id) == []


async def test_oversized_args_are_denied(client: Client, worker_running: str, deps: Any) -> None:
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 5, "reason": "x" * 270_000}},
            ]
        },
    )
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.TOOL_DENIED and "limit" in cause.message
    assert ledger_events(deps, handle.id, "lease.issued") == []


async def test_unknown_agent_and_invalid_input_fail_before_anything_runs(
    client: Client, worker_running: str, deps: Any
) -> None:
    ghost = await start(client, worker_running, "ghost-agent", {})
    cause = await finish(ghost)
    assert isinstance(cause, ApplicationError) and cause.type == errors.BAD_INPUT
    bad = await start(client, worker_running, "refund-agent", {"order_id": "nope", "amount_cents": -5})
    cause = await finish(bad)
    assert isinstance(cause, ApplicationError) and cause.type == errors.BAD_INPUT
    assert "order_id" in cause.message and "amount_cents" in cause.message
    assert ledger_kinds(deps, ghost.id) == [] and ledger_kinds(deps, bad.id) == []


async def test_tool_failure_compensates_earlier_side_effects(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1003", "amount_cents": 900}},
                {"tool": "customer.notify", "args": {"order_id": "A-1003", "message": "hi"}},
            ]
        },
    )
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.TOOL_FAILED
    assert "no deliverable email" in cause.message
    rows = outside.refunds(handle.id)
    assert len(rows) == 1 and rows[0][4] is not None  # refunded, then reversed
    status = await status_of(handle)
    assert status.state == "failed" and [c.tool for c in status.compensations] == ["refunds.reverse"]
    outside.assert_nothing_leaked()


async def test_a_failed_tools_step_record_holds_its_error(client: Client, worker_running: str, deps: Any) -> None:
    """A tool that fails shows in the run's steps with what it said (`lockgate status`), not as a
    clean step and not missing."""
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {"steps": [{"tool": "customer.notify", "args": {"order_id": "A-1003", "message": "hi"}}]},
    )
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.TOOL_FAILED
    (record,) = (await status_of(handle)).steps
    assert (record.step, record.tool) == (1, "customer.notify")
    assert record.error is not None and "no deliverable email" in record.error


async def test_status_counts_the_spend_taint_and_summaries_of_calls_that_ran(
    client: Client, worker_running: str, deps: Any
) -> None:
    """What ran is the run's own account: its cost counts as spent, a regulated tool taints the run,
    and each step keeps the summary its tool returned."""
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 700}},
                {"tool": "customers.profile", "args": {"order_id": "A-1001"}},
            ]
        },
    )
    assert await finish(handle) is None
    status = await status_of(handle)
    assert status.state == "completed"
    assert status.spent == 700
    assert status.tainted is True
    assert [(s.tool, s.outcome, s.error) for s in status.steps] == [
        ("refunds.issue", "allow", None),
        ("customers.profile", "allow", None),
    ]
    refund, profile = status.steps
    assert refund.summary is not None and refund.summary.startswith("refunded 7.00 on A-1001")
    assert profile.summary is not None and profile.summary.endswith("(PII)")


async def test_a_sub_agents_spend_and_taint_count_for_its_parent(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    """A delegation that ran is a step of the parent (no cost of its own, not compensated); what the
    sub-agent spent and the taint it took come back to the parent run."""
    parent = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {
                    "tool": "agent.delegate",
                    "args": {
                        "agent": "script-agent",
                        "tools": ["refunds.issue", "refunds.reverse", "customers.profile"],
                        "budget": 5000,
                        "input": {
                            "steps": [
                                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 400}},
                                {"tool": "customers.profile", "args": {"order_id": "A-1001"}},
                            ]
                        },
                    },
                },
            ]
        },
    )
    assert await finish(parent) is None
    status = await status_of(parent)
    assert status.state == "completed"
    assert (status.spent, status.tainted) == (400, True)
    assert [(s.tool, s.outcome, s.error) for s in status.steps] == [("agent.delegate", "allow", None)]
    assert status.steps[0].summary == f"sub-agent {parent.id}.1 completed: spent 400"
    outside.assert_nothing_leaked()


async def test_a_long_runs_carry_keeps_no_call_history_of_tools_without_a_rate_limit(
    client: Client, worker_running: str, deps: Any
) -> None:
    """Call times are kept only for a tool's rate-limit window: a tool without a rate limit carries
    no growing list of its calls into the next history (the carry stays small however long the run)."""
    steps = [{"tool": "qa.mark", "args": {"label": f"carry-{i}"}} for i in range(12)]
    handle = await start(client, worker_running, "long-agent", {"steps": steps})
    assert await finish(handle) is None
    history = await client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id).fetch_history()
    continued = [
        e.workflow_execution_continued_as_new_event_attributes
        for e in history.events
        if e.HasField("workflow_execution_continued_as_new_event_attributes")
    ]
    assert continued, "the run did not continue as new"
    (carried,) = await client.data_converter.decode(list(continued[0].input.payloads), [RunInput])
    assert isinstance(carried, RunInput) and carried.carry is not None
    assert carried.carry.step >= 3
    assert all(len(times) <= 1 for times in carried.carry.call_times.values()), carried.carry.call_times
