"""Figure 8: scale-out. End-to-end throughput of governed runs served by two worker processes
against one, on the same host, with the ledger on PostgreSQL (one database both workers append to).

A ratio near or above 1 on this machine's 2 shared cores says adding a worker costs nothing: no
global lock or single writer stands between workers (the ledger appends per-run chains, the run
identity is per run). The server, Vault and Postgres share the same cores, so the ratio cannot
show the linear gain separate machines would; it shows the absence of a bottleneck.

Rounds alternate (1, 2, then 2, 1, ...) so drift on the shared machine falls on both sides; the
figure is the median of the rounds' paired ratios (each round's two-worker window over its
one-worker window), shown with their spread. Each two-worker window also counts the gate decisions
each worker logged: a second worker that got no work would make the ratio meaningless, so its
share is reported beside it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import bench.agents as bench_agents
from bench.harness import ROOT, RUN_TIMEOUT, Bench, closed_loop, median, result_of, say
from bench.ledger_bench import _database
from bench.memory import CHILDREN, stop

__all__ = ["two_workers"]


async def two_workers(
    b: Bench, log_dir: Path, *, concurrency: int = 20, runs: int = 60, steps: int = 5, rounds: int = 2
) -> dict[str, Any]:
    """Closed-loop throughput with one worker process, then two, alternating (1, 2, 2, 1, ...)."""
    queue = f"bench-scale-{uuid.uuid4().hex[:8]}"
    url = _database(b, f"bench_scale_{uuid.uuid4().hex[:8]}")
    env = {**b.env, "LOCKGATE_TASK_QUEUE": queue, "LOCKGATE_LEDGER_URL": url, "LOCKGATE_REAP_INTERVAL": "3600"}
    procs: list[subprocess.Popen[bytes]] = []
    logs = [log_dir / f"scale-worker-{queue}-{n}.log" for n in (1, 2)]

    def decisions() -> list[int]:
        """Gate decisions each worker has logged so far (0 for one not started yet)."""
        return [log.read_text(errors="replace").count("lockgate.gate decision") if log.exists() else 0 for log in logs]

    def spawn(n: int) -> subprocess.Popen[bytes]:
        log = logs[n - 1]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "worker.py")], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )
        CHILDREN.append(proc)
        return proc

    async def one() -> float:
        run_id = f"bench-scale-{uuid.uuid4().hex[:12]}"
        t0 = time.perf_counter()
        handle = await b.client.start_workflow(
            "lockgate.agent",
            b.run_input(bench_agents.NOOP, steps, run_id),
            id=run_id,
            task_queue=queue,
        )
        await result_of(handle, RUN_TIMEOUT + steps)
        return time.perf_counter() - t0

    async def window() -> float:
        return runs * steps / await closed_loop(concurrency, runs, one)

    cps: dict[str, list[float]] = {"1": [], "2": []}
    shares: list[float] = []  # the second worker's share of the decisions in each two-worker window
    try:
        procs.append(spawn(1))
        await closed_loop(concurrency, concurrency, one)  # the first worker is up and warm
        for r in range(rounds):
            order = ["1", "2"] if r % 2 == 0 else ["2", "1"]
            for workers in order:
                if workers == "2" and len(procs) == 1:
                    procs.append(spawn(2))
                    await asyncio.sleep(3.0)  # polling; the warm-up window below reaches it
                    await closed_loop(concurrency, concurrency * 2, one)
                if workers == "1" and len(procs) == 2:
                    stop(procs.pop())
                before = decisions()
                cps[workers].append(await window())
                after = decisions()
                if workers == "2":
                    done = [a - b for a, b in zip(after, before, strict=True)]
                    shares.append(done[1] / max(1, sum(done)))
                say(f"scale-out: {workers} worker(s): {cps[workers][-1]:.1f} calls/s")
    finally:
        for proc in procs:
            stop(proc)
    one_w, two_w = median(cps["1"]), median(cps["2"])
    paired = [t / o for t, o in zip(cps["2"], cps["1"], strict=True)]
    out = {
        "concurrency": concurrency,
        "runs_per_window": runs,
        "steps_per_run": steps,
        "ledger": "postgresql",
        "calls_per_s": cps,
        "one_worker_cps": one_w,
        "two_workers_cps": two_w,
        "ratio": median(paired),
        "paired_ratios": paired,
        "ratio_of_medians": two_w / one_w,
        "second_worker_share": shares,
    }
    say(f"scale-out: two workers {two_w:.1f} vs one {one_w:.1f} calls/s: {out['ratio']:.2f}x")
    return out
