"""Kill switch (scenario 12), delegation (scenario 13), thresholds that escalate, policy hot reload."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, CancelledError

from lockgate import errors
from lockgate.ops import send_verdict
from tests.support.stack import (
    Outside,
    as_person,
    cli,
    finish,
    ledger_events,
    pending_request,
    person,
    start,
    status_of,
)


async def wait_state(handle: Any, state: str, timeout: float = 20) -> None:
    for _ in range(int(timeout / 0.1)):
        if (await status_of(handle)).state == state:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{handle.id} never reached {state}: {(await status_of(handle)).state}")


async def test_freeze_holds_runs_unfreeze_resumes_halt_compensates(
    client: Client, worker_running: str, deps: Any, outside: Outside, env: dict[str, str]
) -> None:
    def steps(first):
        return {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": first}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}},
            ]
        }

    resumed = await start(client, worker_running, "script-agent", steps(300), initiator="erin")
    halted = await start(client, worker_running, "script-agent", steps(250), initiator="erin")
    req_resumed, req_halted = await pending_request(resumed), await pending_request(halted)
    try:
        frozen = await cli(as_person(env, "carol"), "freeze", "--agent", "script-agent", "--reason", "incident 42")
        assert frozen.returncode == 0, frozen.stderr
        # Approvals arrive while frozen: the re-evaluated gate holds both runs.
        for handle, req in ((resumed, req_resumed), (halted, req_halted)):
            assert (
                await send_verdict(client, handle.id, req.request_id, session=person("alice"), approve=True)
            ).accepted
            await wait_state(handle, "frozen")
        await asyncio.sleep(1)
        for handle in (resumed, halted):
            assert len(outside.refunds(handle.id)) == 1  # the gated step has not run
            kill = [d for d in ledger_events(deps, handle.id, "decision") if d["gate"] == "kill_switch"]
            assert kill and kill[-1]["outcome"] == "deny"

        halt = await cli(as_person(env, "carol"), "halt", halted.id, "--reason", "incident 42 cleanup")
        assert halt.returncode == 0, halt.stderr
        assert isinstance(await finish(halted), CancelledError)
        rows = outside.refunds(halted.id)
        assert len(rows) == 1 and rows[0][4] is not None  # compensated
    finally:
        unfrozen = await cli(as_person(env, "carol"), "unfreeze", "--agent", "script-agent", "--json")
    assert unfrozen.returncode == 0, unfrozen.stderr
    assert await finish(resumed) is None
    assert [r[1] for r in outside.refunds(resumed.id)] == [300, 20000]
    kinds = [e.kind for e in deps.ledger.entries("scope:script-agent")]
    assert kinds[-2:] == ["freeze", "unfreeze"]
    outside.assert_nothing_leaked()


async def test_freezing_every_agent_holds_runs_of_any_agent_until_lifted(
    client: Client, worker_running: str, deps: Any, outside: Outside, env: dict[str, str]
) -> None:
    """`freeze --all` (the kill switch for every agent, scope "*"): a run of an agent nobody froze
    by name is held at its next gate, its tool never runs, and it resumes once every agent is
    unfrozen. Lifting one agent's freeze does not lift the freeze of all."""
    frozen = await cli(as_person(env, "carol"), "freeze", "--all", "--reason", "incident 43")
    assert frozen.returncode == 0, frozen.stderr
    try:
        handle = await start(
            client,
            worker_running,
            "script-agent",
            {"steps": [{"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 300}}]},
            initiator="erin",
        )
        await wait_state(handle, "frozen")
        # An unfreeze of this agent alone is no unfreeze of every agent.
        lifted_one = await cli(as_person(env, "dave"), "unfreeze", "--agent", "script-agent")
        assert lifted_one.returncode == 0, lifted_one.stderr
        await asyncio.sleep(1)
        assert (await status_of(handle)).state == "frozen"
        assert outside.refunds(handle.id) == []
        kill = [d for d in ledger_events(deps, handle.id, "decision") if d["gate"] == "kill_switch"]
        assert kill and all(d["outcome"] == "deny" for d in kill)
    finally:
        unfrozen = await cli(as_person(env, "carol"), "unfreeze", "--all", "--json")
    assert unfrozen.returncode == 0, unfrozen.stderr
    assert await finish(handle) is None
    assert [r[1] for r in outside.refunds(handle.id)] == [300]
    assert [e.kind for e in deps.ledger.entries("scope:*")][-2:] == ["freeze", "unfreeze"]
    outside.assert_nothing_leaked()


async def test_sub_agent_outside_boundary_is_denied(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
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
                        "tools": ["refunds.issue"],
                        "budget": 5000,
                        "input": {"steps": [{"tool": "qa.mark", "args": {"label": "sneaky"}}]},
                    },
                },
            ]
        },
        initiator="erin",
    )
    cause = await finish(parent)
    assert isinstance(cause, ApplicationError) and cause.type == errors.TOOL_DENIED
    assert "outside this sub-agent's boundary" in cause.message
    child = f"{parent.id}.1"
    assert [d["gate"] for d in ledger_events(deps, child, "decision")] == ["boundary"]
    assert ledger_events(deps, child, "lease.issued") == []
    outside.assert_nothing_leaked()


async def test_sub_agent_spend_counts_against_the_parent_budget(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    # script-agent budget: 25000. Child spends 9000; the parent 9000; a further 9000 crosses it.
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
                        "tools": ["refunds.issue", "refunds.reverse"],
                        "budget": 10000,
                        "input": {
                            "steps": [{"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 9000}}]
                        },
                    },
                },
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 9000}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 9000}},
            ]
        },
        initiator="erin",
    )
    req = await pending_request(parent)
    assert (req.group, req.step) == ("finance", 3)
    status = await status_of(parent)
    assert status.spent == 18000
    budget = [d for d in ledger_events(deps, parent.id, "decision") if d["gate"] == "budget"]
    assert "spent 18000 + 9000 = 27000 > budget 25000" in budget[0]["reasons"][0]
    child = f"{parent.id}.1"
    opened = [e for e in ledger_events(deps, child, "run.opened")]
    assert opened[0]["parent_run_id"] == parent.id
    await parent.cancel()
    await finish(parent)
    outside.assert_nothing_leaked()


async def test_low_confidence_escalates_to_approval(client: Client, worker_running: str, deps: Any) -> None:
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "qa.mark", "args": {"label": "unsure"}, "confidence": 0.3, "rationale": "a guess"},
            ]
        },
        initiator="erin",
    )
    req = await pending_request(handle)
    assert req.group == "support-leads"
    assert (await send_verdict(client, handle.id, req.request_id, session=person("dave"), approve=True)).accepted
    assert await finish(handle) is None
    decisions = ledger_events(deps, handle.id, "decision")
    assert [(d["gate"], d["outcome"]) for d in decisions] == [("confidence", "approval"), ("policy", "allow")]
    assert decisions[0]["confidence"] == 0.3 and decisions[0]["rationale"] == "a guess"


async def test_rate_limit_denies_the_fourth_call(client: Client, worker_running: str) -> None:
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {"steps": [{"tool": "qa.mark", "args": {"label": f"m{i}"}} for i in range(4)]},
        initiator="erin",
    )
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and "rate limit: 3 calls of qa.mark" in cause.message
    assert [s.outcome for s in (await status_of(handle)).steps] == ["allow", "allow", "allow", "deny"]


async def test_policy_hot_reload_takes_effect_and_refuses_bad_bundles(
    client: Client, worker_running: str, deps: Any, policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lockgate import worker

    good_hash = deps.bundle.hash
    extra = policy_dir / "zz-hot-reload.cedar"
    stop = asyncio.Event()
    watcher = asyncio.create_task(worker.watch_policies(deps, stop, interval=0.2))
    await asyncio.sleep(0.3)  # the watcher takes its first look before anything changes
    try:
        extra.write_text('@id("reload.no-marks")\nforbid (principal, action == Action::"qa.mark", resource);\n')
        for _ in range(100):
            if deps.bundle.hash != good_hash:
                break
            await asyncio.sleep(0.1)
        assert deps.bundle.hash != good_hash
        handle = await start(
            client,
            worker_running,
            "script-agent",
            {"steps": [{"tool": "qa.mark", "args": {"label": "x"}}]},
            initiator="erin",
        )
        cause = await finish(handle)
        assert isinstance(cause, ApplicationError) and "reload.no-marks" in cause.message

        reloaded = deps.bundle.hash
        extra.write_text('@id("reload.broken")\nforbid (principal, action ==, resource);\n')
        await asyncio.sleep(1)
        assert deps.bundle.hash == reloaded  # the last good bundle stays
        assert any("POLICY RELOAD REFUSED" in r.getMessage() for r in caplog.records)
        assert deps.reload_policies()[0].startswith("zz-hot-reload.cedar:1:")
    finally:
        extra.unlink()
        deps.reload_policies()
        stop.set()
        await watcher
    assert deps.bundle.hash == good_hash
