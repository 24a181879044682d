"""The reaper acts on proof (SCENARIOS 7, 24): a "compensation outstanding" entry that the run's own
record does not back is no work for it. Planted here as anyone who can write ledger rows would (a
direct append, the way an inserted database row or a forged audit entry arrives), for a run that
completed normally and for a step that never ran: the refund is not reversed, nothing is leased."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import Client

from lockgate import worker
from tests.conftest import Outside, finish, ledger_events, ledger_kinds, start


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
