"""The reaper acts on proof (SCENARIOS 7, 24): a "compensation outstanding" entry that the run's own
record does not back is no work for it. Planted here as anyone who can write ledger rows would (a
direct append, the way an inserted database row or a forged audit entry arrives), for a run that
completed normally and for a step that never ran: the refund is not reversed, nothing is leased."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from pathlib import Path
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
    reaper = worker.build_reaper(deps)
    before = ledger_kinds(deps, run_id)
    assert reaper.reap_run(run_id, "completed") is None
    assert ledger_kinds(deps, run_id) == before  # nothing planted yet: nothing to claim, refuse or record
    _plant(deps, run_id, step, "refunds.reverse")
    await reaper.reap_once(client)
    ((_, amount, _, _, reversed_at),) = outside.refunds(run_id)
    assert amount == 300 and reversed_at is None  # control: the reaper would reverse it
    assert "reaper.compensation" not in ledger_kinds(deps, run_id)
    assert "reaper.refused" in ledger_kinds(deps, run_id)
    assert ledger_events(deps, run_id, "lease.issued") == leases
    # Its own close says completed: the same when Temporal no longer knows the workflow.
    assert reaper.reap_run(run_id, "unknown") is None
    ((_, _, _, _, reversed_at),) = outside.refunds(run_id)
    assert reversed_at is None and "reaper.compensation" not in ledger_kinds(deps, run_id)
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


async def _terminated_with_a_mark(
    client: Client, worker_running: str, outside: Outside, *, fail_undo: bool
) -> tuple[str, str, str]:
    """A script-agent run killed while waiting for finance, after step 1 marked (its compensation
    qa.unmark still owed): its identity still open. Returns (run id, accessor, mark label)."""
    from tests.support.stack import pending_request, status_of

    label = f"reap-{uuid.uuid4().hex[:8]}"
    handle = await start(
        client,
        worker_running,
        "script-agent",
        {
            "steps": [
                {"tool": "qa.mark", "args": {"label": label, "fail_undo": fail_undo}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}},
            ]
        },
    )
    await pending_request(handle)
    accessor = (await status_of(handle)).identity_accessor
    assert accessor and outside.token_alive(accessor)
    await handle.terminate("pulled the plug")
    return handle.id, accessor, label


def _sealed(deps: Any, run_id: str) -> None:
    """Every entry of the run (both chains) is covered by a signed head."""
    evidence = deps.ledger.run_evidence(run_id)
    assert evidence["chains"]
    for chain in evidence["chains"]:
        assert chain["proofs"], f"{chain['chain']}: no signed head"
        assert chain["proofs"][-1]["size"] == len(chain["entries"]), chain["chain"]


async def test_a_failed_reaper_compensation_stays_outstanding_and_is_retried_after_its_backoff(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    """A terminated run whose compensation fails when the reaper runs it: the identity is revoked
    anyway, the reap is sealed, and the failure is recorded as outstanding. Another reaper's claim
    (one that died mid-run) holds this one off for the claim window, every time; once the claim and
    the backoff have passed, the retry runs it and resolves it; then there is nothing left to do."""
    from lockgate.activities.reaper import CLAIM_SECONDS
    from tests import agents

    run_id, accessor, label = await _terminated_with_a_mark(client, worker_running, outside, fail_undo=True)
    base = time.time()
    reaper, other = worker.build_reaper(deps), worker.build_reaper(deps)
    reaper.clock = other.clock = lambda: base
    assert other._claim(run_id)  # pyright: ignore[reportPrivateUsage] - a reaper that died after its claim
    assert reaper.reap_run(run_id, "terminated") is None
    assert outside.token_alive(accessor) and "reaper.found" not in ledger_kinds(deps, run_id)

    reaper.clock = lambda: base + CLAIM_SECONDS
    report = reaper.reap_run(run_id, "terminated")
    _sealed(deps, run_id)
    assert report is not None and report.identity_revoked and not outside.token_alive(accessor)
    assert [(c["step"], c["tool"], c["ok"]) for c in report.compensations] == [(1, "qa.unmark", False)]
    (failed,) = ledger_events(deps, run_id, "reaper.compensation")
    assert failed["ok"] is False and failed["step"] == 1 and f"cannot unmark {label}" in failed["error"]
    assert failed["detail"] == json.dumps(json.loads(failed["detail"]), sort_keys=True)
    (owed,) = ledger_events(deps, run_id, "compensation.outstanding")
    assert (owed["step"], owed["tool"], owed["args"]) == (1, "qa.unmark", {"idempotency_key": f"{run_id}:1"})

    agents.MARKS[f"{run_id}:1"]["fail_undo"] = False  # the downstream system recovers
    assert reaper.reap_run(run_id, "terminated") is None  # its backoff is not due yet
    later = base + 3600
    reaper.clock = other.clock = lambda: later
    assert other._claim(run_id)  # pyright: ignore[reportPrivateUsage]
    assert reaper.reap_run(run_id, "terminated") is None  # the other reaper's claim holds
    assert label not in agents.UNDONE

    reaper.clock = lambda: later + CLAIM_SECONDS
    retried = reaper.reap_run(run_id, "terminated")
    assert retried is not None and [(c["step"], c["ok"]) for c in retried.compensations] == [(1, True)]
    assert agents.UNDONE.count(label) == 1
    assert [e["step"] for e in ledger_events(deps, run_id, "compensation.resolved")] == [1]

    claims = ledger_kinds(deps, run_id).count("reaper.claim")
    reaper.clock = lambda: later + 10 * CLAIM_SECONDS
    assert reaper.reap_run(run_id, "terminated") is None  # nothing left: not even a claim
    assert ledger_kinds(deps, run_id).count("reaper.claim") == claims
    assert agents.UNDONE.count(label) == 1
    outside.assert_nothing_leaked()


async def test_a_compensation_the_policy_denies_is_not_run_and_stays_outstanding(
    client: Client, worker_running: str, deps: Any, outside: Outside, policy_dir: Path, tmp_path: Path
) -> None:
    """Under policies that forbid the compensation, the reaper does not run it: the gate's denial
    is recorded (with its reasons) as a failed compensation, still outstanding."""
    from lockgate.activities.governance import bundle_content
    from lockgate.activities.reaper import Reaper
    from lockgate.policies import load_bundle
    from tests import agents

    denying = tmp_path / "policies"
    shutil.copytree(policy_dir, denying)
    (denying / "zz-no-unmark.cedar").write_text(
        '@id("test.no-unmark")\nforbid (principal == Agent::"script-agent", action == Action::"qa.unmark", resource);\n'
    )
    bundle = load_bundle(denying, deps.agents)
    deps.ledger.register_bundle(bundle.hash, bundle_content(bundle))  # as a worker that loads it does
    run_id, accessor, label = await _terminated_with_a_mark(client, worker_running, outside, fail_undo=False)
    reaper = Reaper(
        vault=deps.vault,
        ledger=deps.ledger,
        agents=deps.agents,
        tools=worker.build_tools(deps),
        bundle=lambda _: bundle,
    )
    report = reaper.reap_run(run_id, "terminated")
    assert report is not None and not outside.token_alive(accessor)
    ((step, tool, ok, error),) = [(c["step"], c["tool"], c["ok"], c.get("error", "")) for c in report.compensations]
    assert (step, tool, ok) == (1, "qa.unmark", False)
    assert error.startswith("denied: ") and "test.no-unmark" in error, error
    assert label not in agents.UNDONE
    assert [e["outcome"] for e in ledger_events(deps, run_id, "decision") if e["tool"] == "qa.unmark"] == ["deny"]
    assert not [e for e in ledger_events(deps, run_id, "tool.completed") if e["tool"] == "qa.unmark"]
    assert [e["ok"] for e in ledger_events(deps, run_id, "reaper.compensation")] == [False]
    assert [e["step"] for e in ledger_events(deps, run_id, "compensation.outstanding")] == [1]
    outside.assert_nothing_leaked()
    # Under the usual policies, once its backoff has passed, a reaper runs it: nothing left owed.
    usual = worker.build_reaper(deps)
    usual.clock = lambda: time.time() + 3600
    retried = usual.reap_run(run_id, "terminated")
    assert retried is not None and [(c["step"], c["ok"]) for c in retried.compensations] == [(1, True)]
    assert agents.UNDONE.count(label) == 1


async def test_a_completed_workflow_that_left_an_identity_open_has_it_closed_after_any_claim(
    client: Client, worker_running: str, deps: Any, outside: Outside, rogue: Any
) -> None:
    """Workflow code that opened a run identity and completed without closing it (hostile code
    registered beside lockgate's can): Temporal says completed, so the reaper compensates nothing,
    but it revokes the identity, once no other reaper holds the run's claim."""
    from lockgate.activities.reaper import CLAIM_SECONDS, workflow_state
    from lockgate.identity import sign
    from lockgate.models import RunOpen, args_digest
    from tests.support.stack import person

    run_id = f"refund-agent-{uuid.uuid4().hex[:10]}"
    data = {"order_id": "A-1003", "amount_cents": 300}
    signed = await asyncio.to_thread(
        sign, person("erin"), "start", {"run_id": run_id, "agent": "refund-agent", "input_digest": args_digest(data)}
    )
    ask = RunOpen(
        run_id=run_id,
        agent="refund-agent",
        initiator="erin",
        ttl_seconds=600,
        origin_run_id="",
        start=signed,
        input_digest=args_digest(data),
    )
    opened = await rogue(run_id, "run.open", ask, own_origin=True)
    assert opened["ok"], opened
    accessor = opened["result"]["accessor"]
    assert outside.token_alive(accessor)
    status = await workflow_state(client, run_id)
    assert status == "completed"

    base = time.time()
    reaper, other = worker.build_reaper(deps), worker.build_reaper(deps)
    reaper.clock = other.clock = lambda: base
    assert other._claim(run_id)  # pyright: ignore[reportPrivateUsage] - a reaper that died after its claim
    assert reaper.reap_run(run_id, status) is None
    assert outside.token_alive(accessor)  # the other reaper's to close, for now

    reaper.clock = lambda: base + CLAIM_SECONDS
    assert reaper.reap_run(run_id, status) is None
    assert not outside.token_alive(accessor) and deps.vault.read_run(run_id) is None
    kinds = ledger_kinds(deps, run_id)
    assert "reaper.compensation" not in kinds and "reaper.refused" not in kinds
    outside.assert_nothing_leaked()


async def test_workflow_state_of_a_workflow_the_server_does_not_know_is_unknown(client: Client) -> None:
    """NOT_FOUND is an answer ("unknown": the reaper may close the run); any other error is not."""
    from temporalio.service import RPCError

    from lockgate.activities.reaper import workflow_state

    assert await workflow_state(client, f"never-started-{uuid.uuid4().hex[:10]}") == "unknown"
    try:
        answer = await workflow_state(client, "")
    except RPCError:
        pass
    else:
        raise AssertionError(f"an invalid request answered {answer!r}")
