"""Figure 8: scale-out. End-to-end throughput of governed runs served by two worker processes
against one, on the same host, with the ledger on PostgreSQL (one database both workers append to).

A ratio near or above 1 on this machine's 2 shared cores says adding a worker costs nothing: no
global lock or single writer stands between workers (the ledger appends per-run chains, the run
identity is per run). The server, Vault and Postgres share the same cores, so the ratio cannot
show the linear gain separate machines would; it shows the absence of a bottleneck.
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

    def spawn(n: int) -> subprocess.Popen[bytes]:
        log = log_dir / f"scale-worker-{queue}-{n}.log"
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
                cps[workers].append(await window())
                say(f"scale-out: {workers} worker(s): {cps[workers][-1]:.1f} calls/s")
    finally:
        for proc in procs:
            stop(proc)
    one_w, two_w = median(cps["1"]), median(cps["2"])
    out = {
        "concurrency": concurrency,
        "runs_per_window": runs,
        "steps_per_run": steps,
        "ledger": "postgresql",
        "calls_per_s": cps,
        "one_worker_cps": one_w,
        "two_workers_cps": two_w,
        "ratio": two_w / one_w,
    }
    say(f"scale-out: two workers {two_w:.1f} vs one {one_w:.1f} calls/s: {out['ratio']:.2f}x")
    return out
