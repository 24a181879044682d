"""Saga compensation and revocation on failure, halt and terminate (scenarios 3, 4, 7)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.exceptions import ApplicationError, CancelledError

from lockgate import errors
from tests import agents
from tests.support.stack import (
    Outside,
    as_person,
    cli,
    finish,
    ledger_events,
    ledger_kinds,
    pending_request,
    start,
    status_of,
    wait_file,
)


async def test_failing_compensation_does_not_stop_the_others(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "qa.mark", "args": {"label": "first"}},
                {"tool": "qa.mark", "args": {"label": "second", "fail_undo": True}},
                {"tool": "qa.mark", "args": {"label": "third"}},
                {"tool": "qa.explode", "args": {"why": "the original error"}},
            ]
        },
        initiator="erin",
    )
    agents.UNDONE.clear()
    cause = await finish(handle)
    # The original error surfaces, not the compensation's.
    assert isinstance(cause, ApplicationError) and cause.type == errors.TOOL_FAILED
    assert "the original error" in cause.message
    assert agents.UNDONE == ["third", "first"]  # reverse order; the failing one did not stop "first"
    status = await status_of(handle)
    assert status.state == "failed"
    assert [(c.tool, c.error is None) for c in status.compensations] == [
        ("qa.unmark", True),
        ("qa.unmark", False),
        ("qa.unmark", True),
    ]
    assert "cannot unmark second" in (status.error or "")
    # The failed one is never dropped: recorded outstanding for the reaper, with the run's close.
    (outstanding,) = ledger_events(deps, handle.id, "compensation.outstanding")
    assert (outstanding["step"], outstanding["tool"]) == (2, "qa.unmark"), outstanding
    (closed,) = ledger_events(deps, handle.id, "run.closed")
    assert closed["outstanding_compensations"] == [2]
    failures = ledger_events(deps, handle.id, "tool.failed")
    assert any("cannot unmark second" in f["error"] for f in failures)


async def test_halt_compensates_in_reverse_and_revokes(
    client: Client, worker_running: str, deps: Any, outside: Outside, env: dict[str, str]
) -> None:
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 300}},
                {"tool": "qa.mark", "args": {"label": "halted-mark"}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}},
            ]
        },
        initiator="erin",
    )
    await pending_request(handle)
    result = await cli(as_person(env, "dave"), "halt", handle.id, "--reason", "customer withdrew")
    assert result.returncode == 0, result.stderr
    assert "halted" in result.stdout
    # One outcome: the run's state, not also the workflow's close status ("failed" then "halted").
    assert result.stdout.startswith(f"run {handle.id}: halted"), result.stdout
    assert f"run {handle.id}: failed" not in result.stdout
    cause = await finish(handle)
    assert isinstance(cause, CancelledError)
    status = await status_of(handle)
    assert status.state == "halted" and "customer withdrew" in (status.error or "")
    assert [c.tool for c in status.compensations] == ["qa.unmark", "refunds.reverse"]  # reverse order
    rows = outside.refunds(handle.id)
    assert len(rows) == 1 and rows[0][4] is not None
    assert status.identity_accessor and not outside.token_alive(status.identity_accessor)
    outside.assert_nothing_leaked()


async def test_terminate_is_cleaned_up_by_the_reaper_within_60s(
    client: Client, worker_running: str, deps: Any, outside: Outside, env: dict[str, str]
) -> None:
    from lockgate import worker

    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 250}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}},
            ]
        },
        initiator="erin",
    )
    await pending_request(handle)
    accessor = (await status_of(handle)).identity_accessor
    assert accessor and outside.token_alive(accessor)
    await handle.terminate("operator pulled the plug")
    terminated_at = time.monotonic()

    stop = asyncio.Event()
    reaping = asyncio.create_task(worker.reap_forever(client, worker.build_reaper(deps), 1.0, stop))
    try:
        while "run.closed" not in ledger_kinds(deps, handle.id):
            assert time.monotonic() - terminated_at < 60, "the reaper did not clean up within 60 s"
            await asyncio.sleep(0.25)
    finally:
        stop.set()
        await reaping
    rows = outside.refunds(handle.id)
    assert len(rows) == 1 and rows[0][4] is not None  # the refund of step 1 was reversed
    assert not outside.token_alive(accessor)
    outside.assert_nothing_leaked()
    kinds = ledger_kinds(deps, handle.id)
    assert {"reaper.found", "reaper.compensation", "reaper.revoked"} <= set(kinds)

    audit = await cli(env, "audit", handle.id)
    assert audit.returncode == 0 and "reaper" in audit.stdout and "terminated" in audit.stdout
    # A second pass finds nothing to do.
    again = await cli(env, "reap", "--json")
    assert again.returncode == 0 and handle.id not in again.stdout


async def test_a_compensation_knows_the_call_it_undoes(client: Client, worker_running: str, deps: Any) -> None:
    """`ctx.forward`: the forward call's tool, step and the exact args its gate allowed, with what its
    completion recorded, read from the run's ledger (a compensation's own args name only the key)."""
    label = f"fwd-{time.monotonic_ns()}"
    steps = [
        {"tool": "qa.mark", "args": {"label": label}},
        {"tool": "qa.explode", "args": {"why": "fail after the mark"}},
    ]
    handle = await start(client, worker_running, "script-agent", {"steps": steps})
    await finish(handle)
    forward = agents.FORWARDS[f"{handle.id}:1"]
    assert forward is not None
    assert (forward.tool, forward.step, forward.args) == ("qa.mark", 1, {"label": label})
    assert forward.summary == f"marked {label}"


async def test_a_call_that_acted_then_raised_is_undone_too(client: Client, worker_running: str, deps: Any) -> None:
    """A forward call may act before it raises: its compensation runs as well (first: reverse order),
    told the call from the run's record (the args its gate allowed; no summary: it completed
    nothing). Nothing stays outstanding."""
    label = f"raised-{time.monotonic_ns()}"
    steps = [
        {"tool": "qa.mark", "args": {"label": f"{label}-a"}},
        {"tool": "qa.mark", "args": {"label": f"{label}-b", "fail": True}},
    ]
    handle = await start(client, worker_running, "script-agent", {"steps": steps})
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and "then failed" in cause.message
    assert [u for u in agents.UNDONE if u.startswith(label)] == [f"{label}-b", f"{label}-a"]
    forward = agents.FORWARDS[f"{handle.id}:2"]
    assert forward is not None
    assert (forward.tool, forward.step, forward.args, forward.summary) == (
        "qa.mark",
        2,
        {"label": f"{label}-b", "fail": True},
        "",
    )
    assert agents.FORWARDS[f"{handle.id}:1"].summary == f"marked {label}-a"
    assert "compensation.outstanding" not in ledger_kinds(deps, handle.id)


async def test_a_denied_call_is_not_compensated(client: Client, worker_running: str, deps: Any) -> None:
    """A compensable call the gate denied never ran: the run compensates what ran before it, and
    nothing for the denied step (its compensation is dropped from the saga)."""
    label = f"before-deny-{time.monotonic_ns()}"
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "qa.mark", "args": {"label": label}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 150000}},
            ]
        },
    )
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.TOOL_DENIED
    status = await status_of(handle)
    assert status.state == "failed"
    assert [c.tool for c in status.compensations] == ["qa.unmark"]
    assert label in agents.UNDONE
    undone = [e["compensates"] for e in ledger_events(deps, handle.id, "tool.completed") if e["compensates"]]
    assert undone == [f"{handle.id}:1"]


async def test_a_denied_call_without_compensation_keeps_the_earlier_ones(
    client: Client, worker_running: str, deps: Any
) -> None:
    """A denied call that has no compensation of its own takes no other step's out of the saga: the
    calls that ran before it are still compensated, in reverse."""
    label = f"kept-{time.monotonic_ns()}"
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "qa.mark", "args": {"label": f"{label}-a"}},
                {"tool": "qa.mark", "args": {"label": f"{label}-b"}},
                {"tool": "shell.exec", "args": {"cmd": "id"}},
            ]
        },
    )
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.TOOL_DENIED
    status = await status_of(handle)
    assert [c.tool for c in status.compensations] == ["qa.unmark", "qa.unmark"]
    assert [u for u in agents.UNDONE if u.startswith(label)] == [f"{label}-b", f"{label}-a"]
    undone = [e["compensates"] for e in ledger_events(deps, handle.id, "tool.completed") if e["compensates"]]
    assert undone == [f"{handle.id}:2", f"{handle.id}:1"]


async def test_a_run_cancelled_while_its_tool_runs_stops_there_and_compensates_it(
    client: Client, worker_running: str, deps: Any, outside: Outside, tmp_path: Path
) -> None:
    """Cancelled while a tool runs: the tool finishes (fenced), its step is recorded as halted with
    what it returned, no further call is made, and the call is compensated; the run ends halted."""
    marker = tmp_path / "go"
    label = f"never-{time.monotonic_ns()}"
    os.environ["LOCKGATE_TEST_PAUSE_AFTER_LEASE"] = f"refunds.issue:{marker}"
    try:
        handle = await start(
            client,
            worker_running,
            "script-agent",
            {
                "steps": [
                    {"tool": "refunds.issue", "args": {"order_id": "A-1003", "amount_cents": 900}},
                    {"tool": "qa.mark", "args": {"label": label}},
                ]
            },
        )
        await wait_file(f"{marker}.reached", timeout=15)  # the refund started
        await handle.cancel()
        await asyncio.sleep(0.5)
        marker.touch()  # the refund goes on, after the cancel
        cause = await finish(handle)
    finally:
        os.environ.pop("LOCKGATE_TEST_PAUSE_AFTER_LEASE", None)
    assert isinstance(cause, CancelledError)
    ((_, amount, _, _, reversed_at),) = outside.refunds(handle.id)
    assert amount == 900 and reversed_at is not None
    status = await status_of(handle)
    assert status.state == "halted"
    (record,) = status.steps
    assert (record.tool, record.outcome, record.error) == ("refunds.issue", "allow", "halted while the tool ran")
    assert record.summary is not None and record.summary.startswith("refunded 9.00 on A-1003")
    assert [c.tool for c in status.compensations] == ["refunds.reverse"]
    assert [d["tool"] for d in ledger_events(deps, handle.id, "decision")] == ["refunds.issue", "refunds.reverse"]
    assert f"{handle.id}:2" not in agents.MARKS
    outside.assert_nothing_leaked()
