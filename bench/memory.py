"""Figure 6: worker RSS with N runs waiting for approval vs none, the worker in a subprocess.

The worker is `python worker.py` with the stack's env (as tests/test_crash.py starts one), on its
own task queue, so that nothing else in its process (this bench's in-process workers, their
clients) is counted. RSS is psutil's resident set size of that process.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

import bench.agents as bench_agents
from bench.harness import ROOT, RUN_TIMEOUT, Bench, result_of, say
from lockgate.models import ApprovalRequest

__all__ = ["CHILDREN", "plain_rss", "worker_rss"]

# Subprocesses this bench started and has not yet reaped: run.py stops them in its finally.
CHILDREN: list[subprocess.Popen[bytes]] = []

_MiB = 1024 * 1024


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc in CHILDREN:
        CHILDREN.remove(proc)


async def _rss(proc: subprocess.Popen[bytes], samples: int = 5) -> int:
    """Median of a few readings a moment apart, once the process has settled."""
    if proc.poll() is not None:
        raise RuntimeError(f"the worker subprocess exited ({proc.returncode})")
    p = psutil.Process(proc.pid)
    readings = []
    for _ in range(samples):
        readings.append(p.memory_info().rss)
        await asyncio.sleep(0.2)
    return int(statistics.median(readings))


async def _count(b: Bench, query: str) -> int:
    return (await b.client.count_workflows(query)).count


async def _gather_limited(limit: int, coros: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with sem:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def _terminate(b: Bench, run_ids: list[str]) -> None:
    """Terminates the figure's runs, 50 at a time (a run already closed is left as it is)."""

    async def end(run_id: str) -> None:
        try:
            await b.client.get_workflow_handle(run_id).terminate("bench: memory figure done")
        except Exception:  # noqa: BLE001, S110 - already closed
            pass

    await _gather_limited(50, [end(r) for r in run_ids])


async def worker_rss(
    b: Bench, waiting: int, log_dir: Path, *, cache: int | None = None, timeout: float = 300
) -> dict[str, Any]:
    """RSS of a fresh worker subprocess after warm-up, then with `waiting` runs awaiting approval.

    RSS is also read half-way (half the runs waiting): growth in the second half shows whether
    memory keeps growing with waiting runs or is bounded (by the sticky cache).

    `cache`: LOCKGATE_MAX_CACHED_WORKFLOWS for the worker; None leaves the worker's own default.
    """
    queue = f"bench-mem-{uuid.uuid4().hex[:8]}"
    tag = f"bench-mem-{uuid.uuid4().hex[:8]}"  # the runs' initiator: a visibility filter for them
    env = {**b.env, "LOCKGATE_TASK_QUEUE": queue, "LOCKGATE_REAP_INTERVAL": "3600"}
    if cache is not None:
        env["LOCKGATE_MAX_CACHED_WORKFLOWS"] = str(cache)
    argv = [sys.executable, str(ROOT / "worker.py")]
    log = log_dir / f"worker-{queue}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    CHILDREN.append(proc)
    started: list[str] = []
    try:

        async def run(tool: str, n: int, approve: bool) -> None:
            run_id = f"{tag}-warm-{uuid.uuid4().hex[:8]}"
            handle = await b.client.start_workflow(
                "lockgate.agent", b.run_input(tool, n, run_id), id=run_id, task_queue=queue
            )
            if approve:
                deadline = time.monotonic() + 60
                while not (pending := await handle.query("pending_approvals", result_type=list[ApprovalRequest])):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"warm-up run {handle.id} never asked for approval; see {log}")
                    await asyncio.sleep(0.05)
                await b.approve(handle, pending[0])
            await result_of(handle, RUN_TIMEOUT)

        # Warm-up: every code path the waiting runs take (gate, approval request, audit, tools), so
        # that the baseline already holds the imports, sandbox module caches and connection pools.
        await _gather_limited(
            10,
            [run(bench_agents.APPROVAL, 1, True) for _ in range(10)]
            + [run(bench_agents.NOOP, 3, False) for _ in range(10)],
        )
        await asyncio.sleep(1.0)
        before = await _rss(proc)
        say(
            f"memory: worker pid {proc.pid} RSS {before / _MiB:.1f} MiB after warm-up; starting {waiting} runs "
            f"that wait for approval"
        )

        async def start(k: int) -> None:
            run_id = f"{tag}-{k:05d}"
            await b.client.start_workflow(
                "lockgate.agent", b.run_input(bench_agents.APPROVAL, 1, run_id), id=run_id, task_queue=queue
            )
            started.append(run_id)

        query = (
            f'WorkflowId STARTS_WITH "{tag}-" AND LockgateState = "awaiting_approval" AND ExecutionStatus = "Running"'
        )
        t0 = time.monotonic()

        async def fill(upto: int) -> int:
            """Starts runs until `upto` exist, waits until they all wait; returns the settled RSS."""
            await _gather_limited(50, [start(k) for k in range(len(started), upto)])
            while (n := await _count(b, query)) < upto:
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"only {n} of {upto} runs reached awaiting_approval in {timeout:.0f}s")
                if proc.poll() is not None:
                    raise RuntimeError(f"worker subprocess died; see {log}")
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)  # let in-flight completions and GC settle
            return await _rss(proc)

        half = await fill(waiting // 2)
        after = await fill(waiting)
        ready_s = time.monotonic() - t0
        growth = after - before
        out = {
            "waiting_runs": waiting,
            "cache": cache if cache is not None else env.get("LOCKGATE_MAX_CACHED_WORKFLOWS", "worker default"),
            "rss_before_mib": before / _MiB,
            "rss_half_mib": half / _MiB,
            "rss_after_mib": after / _MiB,
            "growth_mib": growth / _MiB,
            "growth_kib_per_run": growth / 1024 / waiting,
            "second_half_mib": (after - half) / _MiB,
            "second_half_kib_per_run": (after - half) / 1024 / (waiting - waiting // 2),
            "seconds_to_all_waiting": ready_s,
        }
        say(
            f"memory: {waiting} runs waiting after {ready_s:.1f}s; RSS {before / _MiB:.1f} -> {half / _MiB:.1f} "
            f"(half) -> {after / _MiB:.1f} MiB (+{growth / _MiB:.1f} MiB, {out['growth_kib_per_run']:.1f} KiB/run; "
            f"second half {out['second_half_kib_per_run']:.1f} KiB/run)"
        )
        return out
    finally:
        stop(proc)

        # The waiting runs are no longer needed: terminate them (the stack is torn down afterwards;
        # their run identities expire with it).
        t = time.monotonic()
        await _terminate(b, started)
        say(f"memory: terminated {len(started)} waiting runs in {time.monotonic() - t:.1f}s")


async def plain_rss(b: Bench, waiting: int, log_dir: Path, *, cache: int, timeout: float = 300) -> dict[str, Any]:
    """The anchor of the memory figure: the same measurement for a plain temporalio worker process
    (`bench.plain_worker`, sandboxed, the same sticky cache size) with `waiting` plain runs each
    waiting for a signal. Every run is queried once it is started, so it is in the worker's cache
    when RSS is read (a query is answered by the worker that holds the run)."""
    queue = f"bench-plainmem-{uuid.uuid4().hex[:8]}"
    tag = f"bench-plainmem-{uuid.uuid4().hex[:8]}"
    env = {
        **b.env,
        "TEMPORAL_ADDRESS": b.settings.temporal_address or "localhost:7233",
        "TEMPORAL_NAMESPACE": b.settings.namespace or "default",
        "BENCH_QUEUE": queue,
        "BENCH_MAX_CACHED": str(cache),
        "PYTHONPATH": str(ROOT),
    }
    log = log_dir / f"plain-worker-{queue}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.plain_worker"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    CHILDREN.append(proc)
    started: list[str] = []
    try:

        async def start(k: int) -> Any:
            handle = await b.client.start_workflow(
                "bench.plain.wait", id=f"{tag}-{k:05d}", task_queue=queue, result_type=bool
            )
            started.append(handle.id)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if await handle.query("waiting", result_type=bool):
                        return handle
                except Exception:  # not yet picked up by the worker: asked again
                    if proc.poll() is not None:
                        raise RuntimeError(f"plain worker subprocess died; see {log}") from None
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.1)

        # Warm-up as for the governed worker: runs that wait, then finish.
        warm = await _gather_limited(10, [start(100_000 + k) for k in range(20)])
        for handle in warm:
            await handle.signal("approve")
            await result_of(handle, RUN_TIMEOUT)
        await asyncio.sleep(1.0)
        before = await _rss(proc)
        t0 = time.monotonic()
        await _gather_limited(50, [start(k) for k in range(waiting // 2)])
        await asyncio.sleep(2.0)
        half = await _rss(proc)
        await _gather_limited(50, [start(k) for k in range(waiting // 2, waiting)])
        await asyncio.sleep(2.0)
        after = await _rss(proc)
        growth = after - before
        out = {
            "waiting_runs": waiting,
            "cache": cache,
            "rss_before_mib": before / _MiB,
            "rss_half_mib": half / _MiB,
            "rss_after_mib": after / _MiB,
            "growth_mib": growth / _MiB,
            "growth_kib_per_run": growth / 1024 / waiting,
            "second_half_kib_per_run": (after - half) / 1024 / (waiting - waiting // 2),
            "seconds_to_all_waiting": time.monotonic() - t0,
        }
        say(
            f"memory (plain temporalio, sandboxed): {waiting} runs waiting; RSS {before / _MiB:.1f} -> "
            f"{after / _MiB:.1f} MiB ({out['growth_kib_per_run']:.1f} KiB/run)"
        )
        return out
    finally:
        stop(proc)
        await _terminate(b, started)


async def per_cached_run(b: Bench, waiting: int, log_dir: Path) -> dict[str, Any]:
    """Memory per cached waiting run, governed vs plain temporalio, in the same bench run with the
    same worker settings (sticky cache = `waiting`, so every waiting run stays cached)."""
    plain = await plain_rss(b, waiting, log_dir, cache=waiting)
    governed = await worker_rss(b, waiting, log_dir, cache=waiting)
    return {
        "waiting_runs": waiting,
        "cache": waiting,
        "governed": governed,
        "plain": plain,
        "governed_kib_per_run": governed["growth_kib_per_run"],
        "plain_kib_per_run": plain["growth_kib_per_run"],
        "ratio": governed["growth_kib_per_run"] / plain["growth_kib_per_run"],
    }
