"""Figures 1, 2, 4 and 5: governed runs on the real stack, side by side with the plain baseline."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from temporalio.client import WorkflowHistory

import bench.agents as bench_agents
from bench import baseline
from bench.harness import RUN_TIMEOUT, Bench, closed_loop, median, percentile, result_of, say
from lockgate.models import ApprovalRequest, RunStatus

__all__ = ["approval_latency", "audit_and_replay", "sequential", "throughput"]


# -- 1. sequential: per step and per run -----------------------------------------------------------
async def sequential(b: Bench, n1: int, n2: int, reps: int) -> dict[str, Any]:
    """Per-step cost as (T(n2) - T(n1)) / (n2 - n1), which cancels what every run pays once (start,
    the run identity's open and close, completion); and the whole run of n2 steps as it is.

    Governed and plain runs alternate (and swap order every repetition) so that drift on a shared
    machine hits both sides alike; each T is the median of `reps` runs.
    """
    kinds = {
        "a": (bench_agents.NOOP, baseline.NOOP),
        "b": (bench_agents.PG, baseline.PG),
    }
    out: dict[str, Any] = {"n1": n1, "n2": n2, "reps": reps}
    for kind, (tool, activity) in kinds.items():
        sides = {"governed": lambda n, t=tool: b.governed(t, n), "plain": lambda n, a=activity: b.plain(a, n)}
        for run in sides.values():  # warm-up: imports, sandbox, connection pools, Vault and PG paths
            await run(2)
            await run(2)
        times: dict[str, dict[int, list[float]]] = {s: {n1: [], n2: []} for s in sides}
        for rep in range(reps):
            order = list(sides) if rep % 2 == 0 else list(reversed(sides))
            for n in (n1, n2):
                for side in order:
                    times[side][n].append(await sides[side](n))
        res: dict[str, Any] = {"tool": tool, "activity": activity, "samples_s": times}
        for side in sides:
            t1, t2 = median(times[side][n1]), median(times[side][n2])
            res[side] = {"run_s_n1": t1, "run_s_n2": t2, "step_ms": (t2 - t1) / (n2 - n1) * 1000}
        res["step_ratio"] = res["governed"]["step_ms"] / res["plain"]["step_ms"]
        res["run_ratio"] = res["governed"]["run_s_n2"] / res["plain"]["run_s_n2"]
        say(
            f"sequential ({kind}) {tool}: governed {res['governed']['step_ms']:.1f} ms/step, plain "
            f"{res['plain']['step_ms']:.1f} ms/step, ratio {res['step_ratio']:.2f}x (run {res['run_ratio']:.2f}x)"
        )
        out[kind] = res
    return out


# -- 2. throughput ---------------------------------------------------------------------------------
async def throughput(
    b: Bench, levels: tuple[int, ...], steps: int, min_runs: int, runs_per_level: int, rounds: int = 3
) -> dict[str, Any]:
    """Tool calls per second with C runs in flight at all times (closed loop), governed vs plain, for
    the no-secret tool (a). Each run makes `steps` calls; a governed run also opens and closes its
    run identity, which is part of what governance costs per run.

    The machine is noisy: governed and plain windows alternate (the order swapped every round),
    `rounds` times per level; the figure is the median of the rounds' ratios, with their spread."""
    out: dict[str, Any] = {"steps_per_run": steps, "tool": bench_agents.NOOP, "rounds": rounds}
    for c in levels:
        total = max(min_runs, runs_per_level * c)
        sides = {
            "governed": lambda: b.governed(bench_agents.NOOP, steps),
            "plain": lambda: b.plain(baseline.NOOP, steps),
        }
        # One short window each first: the level's concurrency warms pools and caches on both sides.
        for one in sides.values():
            await closed_loop(c, c, one)
        seconds: dict[str, list[float]] = {"governed": [], "plain": []}
        for r in range(rounds):
            for side in list(sides) if r % 2 == 0 else list(reversed(sides)):
                seconds[side].append(await closed_loop(c, total, sides[side]))
        ratios = sorted(p / g for g, p in zip(seconds["governed"], seconds["plain"], strict=True))
        gov, plain = median(seconds["governed"]), median(seconds["plain"])
        res = {
            "runs": total,
            "calls": total * steps,
            "governed_s": seconds["governed"],
            "plain_s": seconds["plain"],
            "governed_cps": total * steps / gov,
            "plain_cps": total * steps / plain,
            "ratios": ratios,
            "ratio": median(ratios),
            "ratio_min": ratios[0],
            "ratio_max": ratios[-1],
        }
        say(
            f"throughput c={c}: governed {res['governed_cps']:.1f} calls/s, plain {res['plain_cps']:.1f} "
            f"calls/s, ratio {res['ratio']:.2f}x (rounds {', '.join(f'{x:.2f}' for x in ratios)}; "
            f"{total} runs x {steps} calls each)"
        )
        out[str(c)] = res
    return out


# -- 4. approval latency ---------------------------------------------------------------------------
async def _wait_state(b: Bench, handles: list[Any], state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(handles)
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(waiting)} runs never reached {state}")
        statuses = await asyncio.gather(*(h.query("status", result_type=RunStatus) for h in waiting))
        waiting = [h for h, s in zip(waiting, statuses, strict=False) if s.state != state]
        if waiting:
            await asyncio.sleep(0.1)


async def approval_latency(b: Bench, samples: int) -> dict[str, Any]:
    """Signal sent -> tool activity started, one approval at a time.

    t0: just before the approver signs the approval (Transit), which is then sent as an update and
        verified by the worker (signature, groups, separation of duties) before the run answers.
    t1: the first line of the bench.approval tool's implementation, in this same process (the
        worker is in-process, so both clocks are the same perf_counter). Between the two: the signal
        reaches the run, the run accepts it and schedules the tool activity again, which evaluates its
        gate with finance's approval (plus a ledger write) and starts the tool.
    """
    handles = [
        await b.start_governed(bench_agents.APPROVAL, 1, run_id=f"bench-approval-{uuid.uuid4().hex[:10]}")
        for _ in range(samples)
    ]
    await _wait_state(b, handles, "awaiting_approval", timeout=60)
    latencies = []
    for handle in handles:
        (request,) = await handle.query("pending_approvals", result_type=list[ApprovalRequest])
        t0 = time.perf_counter()
        # Sign, send the update and wait for the run's verdict: all inside the interval.
        attempt = await b.approve(handle, request)
        assert attempt.accepted, attempt.reason
        deadline = t0 + 30
        while handle.id not in bench_agents.TOOL_STARTED:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{handle.id}: the tool never started after approval")
            await asyncio.sleep(0.001)  # t1 is stamped by the activity: polling adds nothing to it
        latencies.append((bench_agents.TOOL_STARTED[handle.id] - t0) * 1000)
        await result_of(handle, RUN_TIMEOUT)
    out = {
        "samples_ms": latencies,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "n": len(latencies),
    }
    say(f"approval latency: p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms ({len(latencies)} approvals)")
    return out


# -- 5. audit and replay of a long history ---------------------------------------------------------
async def _histories(b: Bench, run_id: str) -> list[WorkflowHistory]:
    """Every history of a run id, oldest first: a long run continues as new, and each new history's
    start event names the one it continues."""
    out: list[WorkflowHistory] = []
    handle = b.client.get_workflow_handle(run_id)
    while True:
        history = await handle.fetch_history()
        out.append(history)
        started = history.events[0].workflow_execution_started_event_attributes
        previous = started.continued_execution_run_id
        if not previous:
            return list(reversed(out))
        handle = b.client.get_workflow_handle(run_id, run_id=previous)


async def _events(b: Bench, run_id: str) -> int:
    return sum(len(h.events) for h in await _histories(b, run_id))


async def _plain_history(b: Bench, target_events: int) -> WorkflowHistory:
    """The anchor: a plain workflow (bench.baseline) running sequential no-op activities, built to
    about the same number of events as the governed run."""
    probe = await b.client.start_workflow(
        baseline.PlainWorkflow.run,
        baseline.PlainInput(activity=baseline.NOOP, n=10),
        id=f"plain-probe-{uuid.uuid4().hex[:8]}",
        task_queue=b.plain_queue,
    )
    await result_of(probe, RUN_TIMEOUT)
    per_step = (len((await probe.fetch_history()).events) - 5) / 10
    n = max(1, round((target_events - 5) / per_step))
    handle = await b.client.start_workflow(
        baseline.PlainWorkflow.run,
        baseline.PlainInput(activity=baseline.NOOP, n=n),
        id=f"plain-history-{uuid.uuid4().hex[:8]}",
        task_queue=b.plain_queue,
    )
    await result_of(handle, RUN_TIMEOUT + n)
    return await handle.fetch_history()


async def audit_and_replay(b: Bench, target_events: int) -> dict[str, Any]:
    """Builds one run of about `target_events` history events (summed over its continue-as-new
    chain, if the workflow continues as new), then times the audit timeline and the replay, against
    the anchor: temporalio's Replayer on a plain history of about as many events."""
    from lockgate import audit

    # Calibrate events per step on two short runs rather than assume a number.
    probe = {}
    for n in (4, 24):
        handle = await b.start_governed(bench_agents.NOOP, n)
        await result_of(handle, RUN_TIMEOUT)
        probe[n] = await _events(b, handle.id)
    per_step = (probe[24] - probe[4]) / 20
    fixed = probe[4] - 4 * per_step
    steps = max(1, round((target_events - fixed) / per_step))
    run_id = f"bench-history-{uuid.uuid4().hex[:10]}"
    say(
        f"history: {per_step:.1f} events/step (+{fixed:.0f} per run) -> a run of {steps} steps for "
        f"~{target_events} events"
    )
    t0 = time.perf_counter()
    handle = await b.start_governed(bench_agents.NOOP, steps, run_id=run_id)
    plain_task = asyncio.ensure_future(_plain_history(b, target_events))  # built alongside
    await result_of(handle, RUN_TIMEOUT + steps)  # a step takes ~50 ms here: 1 s each is plenty
    plain = await plain_task
    build_s = time.perf_counter() - t0
    histories = await _histories(b, run_id)
    events = sum(len(h.events) for h in histories)
    say(
        f"history: built {events} events in {len(histories)} histor{'y' if len(histories) == 1 else 'ies'} "
        f"and a plain history of {len(plain.events)} events in {build_s:.1f}s; timing audit and replay"
    )
    status = (await handle.query("status", result_type=RunStatus)).model_dump(mode="json")

    # The anchor and lockgate alternate, anchor first and last; each side's best counts, so that
    # drift on a shared machine does not decide the ratio.
    from lockgate import replay as replay_module

    plain_s = [await _raw_replay([plain], b.client.data_converter, plain=True)]
    plain_unsandboxed_s = await _raw_replay([plain], b.client.data_converter, plain=True, sandboxed=False)
    audits: list[float] = []
    replays: list[float] = []
    doc: dict[str, Any] = {}
    reports: list[replay_module.ReplayReport] = []
    for _ in range(2):
        # (i) audit, as `lockgate audit` builds it: the history's lifecycle events, the run's
        # ledger chains checked against their signed checkpoints, the timeline.
        t = time.perf_counter()
        entries: list[dict[str, Any]] = []
        for h in histories:
            entries += audit.history_entries(h.events, b.client.data_converter)
        doc = await asyncio.to_thread(audit.timeline, b.deps.ledger, run_id, status, entries)
        audits.append(time.perf_counter() - t)
        assert doc["ledger_intact"], doc.get("ledger_problems")
        # (ii) replay, as `lockgate replay RUN` does it: fetch every history of the run, Replayer,
        # every recorded decision re-evaluated against its recorded bundle.
        t = time.perf_counter()
        reports = await replay_module.replay(b.client, b.deps.ledger, b.deps.agents, [run_id], b.client.data_converter)
        replays.append(time.perf_counter() - t)
        problems = [p for r in reports for p in r.problems]
        assert not problems, problems
        plain_s.append(await _raw_replay([plain], b.client.data_converter, plain=True))
    decisions = sum(r.decisions for r in reports)
    best = min(range(2), key=lambda i: audits[i] + replays[i])
    audit_s, replay_s = audits[best], replays[best]
    raw_governed_s = await _raw_replay(histories, b.client.data_converter)
    t = time.perf_counter()
    verify_report = await asyncio.to_thread(b.deps.ledger.verify_report)
    verify_s = time.perf_counter() - t
    assert verify_report.ok, verify_report.problems[:5]
    run_rows = await asyncio.to_thread(b.deps.ledger.entries, run_id)
    run_bytes = sum(len(e.data) for e in run_rows)
    anchor = min(plain_s)
    total = audit_s + replay_s
    out = {
        "steps": steps,
        "events": events,
        "histories": len(histories),
        "build_s": build_s,
        "events_per_step": per_step,
        "audit_s": audit_s,
        "audit_entries": len(doc["entries"]),
        "ledger_verify_s": verify_s,
        "ledger_rows": verify_report.entries,
        "run_ledger_rows": len(run_rows),
        "run_ledger_mib": run_bytes / 2**20,
        "events_per_history": [len(h.events) for h in histories],
        "replay_s": replay_s,
        "replay_how": "lockgate.replay.replay (fetch + Replayer + decision re-check)",
        "raw_replayer_s": raw_governed_s,
        "decisions_rechecked": decisions,
        "total_s": total,
        "plain_events": len(plain.events),
        "plain_replay_s": anchor,
        "plain_replay_samples_s": plain_s,
        "lockgate_samples_s": [a + r for a, r in zip(audits, replays, strict=True)],
        "plain_replay_unsandboxed_s": plain_unsandboxed_s,
        "ratio": total / anchor,
    }
    say(
        f"history: audit {audit_s:.2f}s ({len(doc['entries'])} entries), replay {replay_s:.2f}s "
        f"({decisions} decisions), total {total:.2f}s vs plain Replayer {anchor:.2f}s on {len(plain.events)} "
        f"events (unsandboxed {plain_unsandboxed_s:.2f}s) = {total / anchor:.2f}x; governed history alone in the "
        f"Replayer {raw_governed_s:.2f}s; verify of all {verify_report.entries} ledger rows {verify_s:.2f}s"
    )
    return out


async def _raw_replay(
    histories: list[WorkflowHistory], converter: Any, *, plain: bool = False, sandboxed: bool = True
) -> float:
    """temporalio's Replayer, as it comes (sandboxed unless told), over histories already fetched."""
    from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

    from lockgate.plugin import workflow_runner
    from lockgate.workflows.agent import AgentWorkflow

    workflows = [baseline.PlainWorkflow] if plain else [AgentWorkflow]
    runner = workflow_runner() if sandboxed else UnsandboxedWorkflowRunner()
    replayer = Replayer(workflows=workflows, data_converter=converter, workflow_runner=runner)
    t = time.perf_counter()
    for history in histories:
        await replayer.replay_workflow(history)
    return time.perf_counter() - t
