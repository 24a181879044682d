"""The reaper acts on proof (SCENARIOS 7, 24): a "compensation outstanding" entry that the run's own
record does not back is no work for it. Planted here as anyone who can write ledger rows would (a
direct append, the way an inserted database row or a forged audit entry arrives), for a run that
completed normally and for a step that never ran: the refund is not reversed, nothing is leased."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import Client

from lockgate import worker
from tests.support.stack import Outside, finish, ledger_events, ledger_kinds, start


def _plant(deps: Any, run_id: str, step: int, tool: str) -> None:
    deps.ledger.append(
        f"compensation.outstanding:{run_id}:{step}:planted",
        run_id,
        "compensation.outstanding",
        {"step": step, "tool": tool, "args": {"idempotency_key": f"{run_id}:{step}"}},
    )


async def test_a_completed_runs_planted_outstanding_compensation_is_not_acted_on(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    run_id = f"refund-agent-{uuid.uuid4().hex[:10]}"
    handle = await start(
        client, worker_running, "refund-agent", {"order_id": "A-1003", "amount_cents": 300}, run_id=run_id
    )
    assert await finish(handle) is None
    step = next(e["step"] for e in ledger_events(deps, run_id, "tool.completed") if e["tool"] == "refunds.issue")
    leases = ledger_events(deps, run_id, "lease.issued")
    _plant(deps, run_id, step, "refunds.reverse")
    reaper = worker.build_reaper(deps)
    await reaper.reap_once(client)
    ((_, amount, _, _, reversed_at),) = outside.refunds(run_id)
    assert amount == 300 and reversed_at is None  # control: the reaper would reverse it
    assert "reaper.compensation" not in ledger_kinds(deps, run_id)
    assert "reaper.refused" in ledger_kinds(deps, run_id)
    assert ledger_events(deps, run_id, "lease.issued") == leases
    outside.assert_nothing_leaked()


async def test_an_outstanding_entry_for_a_step_that_never_ran_is_ignored(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    """A failed run (it marks, then explodes; undoing the mark fails, so it is really outstanding): an
    entry planted for a step that never ran, or naming another tool than the step's compensation, is
    no work for the reaper; the real one is."""
    from lockgate.activities.reaper import failed_compensations
    from lockgate.spec import registry

    steps = [
        {"tool": "qa.mark", "args": {"label": f"proof-{uuid.uuid4().hex[:6]}", "fail_undo": True}},
        {"tool": "qa.explode", "args": {"why": "fail after the mark"}},
    ]
    handle = await start(client, worker_running, "script-agent", {"steps": steps})
    assert await finish(handle) is not None
    run_id = handle.id
    _plant(deps, run_id, 42, "qa.unmark")  # no step 42 ever ran
    _plant(deps, run_id, 1, "qa.explode")  # step 1 ran qa.mark: its compensation is qa.unmark
    events = [{"run_id": run_id, **e} for e in deps.ledger.events(run_id)]
    work = failed_compensations(events, registry)
    assert [(i["step"], i["compensation"]) for i in work] == [(1, "qa.unmark")]
    await worker.build_reaper(deps).reap_once(client)
    tried = [(int(e["step"]), e["tool"]) for e in ledger_events(deps, run_id, "reaper.compensation")]
    assert tried == [(1, "qa.unmark")], tried
    outside.assert_nothing_leaked()


async def test_one_reap_of_a_terminated_run_undoes_revokes_and_records_each_act(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    """What one reaper call does for a run killed mid-way (terminated: no workflow code ran after),
    exactly: the completed refund reversed as a compensation (gated, at a step of the reaper's own,
    naming what it undoes), the run's identity revoked, each act recorded, the run closed; a second
    call finds nothing to do."""
    from tests.support.stack import pending_request, status_of

    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 260}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}},
            ]
        },
    )
    await pending_request(handle)
    accessor = (await status_of(handle)).identity_accessor
    assert accessor and outside.token_alive(accessor)
    await handle.terminate("pulled the plug")
    issued = next(e for e in ledger_events(deps, handle.id, "tool.completed") if e["tool"] == "refunds.issue")

    reaper = worker.build_reaper(deps)
    report = reaper.reap_run(handle.id, "terminated")
    assert report is not None and report.identity_revoked
    assert [(c["step"], c["tool"], c["ok"]) for c in report.compensations] == [
        (issued["step"], "refunds.reverse", True)
    ]
    ((_, _, _, _, reversed_at),) = outside.refunds(handle.id)
    assert reversed_at is not None
    assert not outside.token_alive(accessor)

    (undo,) = [e for e in ledger_events(deps, handle.id, "tool.completed") if e["tool"] == "refunds.reverse"]
    assert undo["step"] == 1000 + issued["step"] and undo["compensates"] == issued["idempotency_key"]
    (decision,) = [d for d in ledger_events(deps, handle.id, "decision") if d["tool"] == "refunds.reverse"]
    assert decision["outcome"] == "allow" and decision["phase"] == "reaper compensation"
    assert decision["request"]["compensation"] is True and decision["initiator"] == "lockgate-reaper"
    (done,) = ledger_events(deps, handle.id, "reaper.compensation")
    assert done["ok"] is True and done["action"] == "compensation" and done["step"] == issued["step"]
    (closed,) = ledger_events(deps, handle.id, "run.closed")
    assert closed["identity_revoked"] is True and closed["revoked_by_this_call"] is True
    assert closed["reason"] == "closed by the reaper" and closed["identity_accessor"] == accessor
    kinds = ledger_kinds(deps, handle.id)
    assert kinds.count("reaper.found") == 1 and kinds.count("reaper.revoked") == 1

    assert reaper.reap_run(handle.id, "terminated") is None
    assert ledger_kinds(deps, handle.id).count("reaper.found") == 1
    assert len(ledger_events(deps, handle.id, "tool.completed")) == 2
    outside.assert_nothing_leaked()
