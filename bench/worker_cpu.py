"""Figure 0: worker CPU per governed call, governed vs plain Temporal, in the same run.

Each side has a worker process of its own (`python -m bench.worker_cpu governed|plain`), so the
bench's client (starting runs, signing the initiator's start statement, waiting for results) is
never counted: only what the worker spends. CPU is psutil's user + system time of that process
(every thread: the event loop, the activity threads and the Temporal core's native threads).

Windows of runs alternate between the sides (order swapped every round) so that the machine's load
weighs on both alike. A window is a closed loop of `concurrency` runs in flight; runs of 1 call and
of 5 calls are measured, so that the marginal CPU of a call ((run of 5 - run of 1) / 4) is apart
from what every run pays once (a governed run's open/close: run identity, sealing). The CPU of the
stack's servers (Temporal, OpenBao) over the same windows is reported beside it: a governed call
also costs there.

Then a profile: one governed window with the worker under cProfile (every Python thread: the
event loop and the activity threads), its top entries by own time and by cumulative time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

import bench.agents as bench_agents
from bench import baseline
from bench.harness import ROOT, RUN_TIMEOUT, Bench, closed_loop, median, result_of, say
from bench.ledger_bench import _database
from bench.memory import CHILDREN, stop

__all__ = ["profile_summary", "worker_cpu"]


# -- the worker processes --------------------------------------------------------------------------
def _profiled(path: str) -> Any:
    """cProfile (timer: the thread's CPU time) in this thread and in every thread started from now
    on (the activity threads); returns a function that writes the merged totals to `path` as JSON
    ({"file:line:name": [calls, own s, cumulative s]}). The bench takes one snapshot when its
    measured window starts (SIGUSR1) and one at the end, and reports the difference."""
    import cProfile
    import json

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(*_: Any) -> None:
        sys.setprofile(None)
        prof = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(prof)
        prof.enable()

    main = cProfile.Profile(time.thread_time)  # CPU time: waiting (epoll, locks, queues) is no cost
    profiles.append(main)
    threading.setprofile(start_in_thread)
    main.enable()

    def snapshot(target: str = path) -> None:
        merged: dict[str, list[float]] = {}
        with lock:
            current = list(profiles)
        for prof in current:
            prof.snapshot_stats()  # reads the totals so far without stopping the profiler
            for (file, line, name), (_cc, nc, tt, ct, _callers) in prof.stats.items():  # type: ignore[attr-defined]
                m = merged.setdefault(f"{file}:{line}:{name}", [0, 0.0, 0.0])
                m[0] += nc
                m[1] += tt
                m[2] += ct
        Path(target + ".tmp").write_text(json.dumps(merged))
        os.replace(target + ".tmp", target)

    return snapshot


async def _serve(kind: str) -> None:
    from lockgate import worker
    from lockgate.config import load_settings

    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_event.set)
    if SNAPSHOT is not None:
        loop.add_signal_handler(signal.SIGUSR1, lambda: SNAPSHOT(os.environ["BENCH_PROFILE"] + ".start"))
    settings = load_settings()
    if kind == "governed":
        deps = worker.build_deps(settings)
        client = await worker.connect(settings, deps.vault)
        w = worker.build_worker(client, deps)
    else:
        from temporalio.worker import Worker

        client = await worker.connect(settings)
        w = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[baseline.PlainWorkflow],
            activities=baseline.PlainActivities(os.environ["LOCKGATE_PG_DSN"]).activities(),
            activity_executor=ThreadPoolExecutor(64, thread_name_prefix="bench-plain"),
            max_concurrent_activities=64,
            max_concurrent_local_activities=64,
        )
    async with w:
        print("ready", flush=True)
        await stop_event.wait()


SNAPSHOT: Any = None


def main() -> None:
    global SNAPSHOT
    kind = sys.argv[1]
    dump = _profiled(os.environ["BENCH_PROFILE"]) if os.environ.get("BENCH_PROFILE") else None
    SNAPSHOT = dump
    try:
        asyncio.run(_serve(kind))
    finally:
        if dump is not None:
            dump()
        sys.stdout.flush()
        os._exit(0)  # as worker.py: the native runtime can abort the interpreter at finalization


# -- the measurement -------------------------------------------------------------------------------
class _Proc:
    def __init__(self, b: Bench, kind: str, log_dir: Path, profile: Path | None = None, ledger: str = "") -> None:
        self.kind = kind
        self.queue = f"bench-cpu-{kind}-{uuid.uuid4().hex[:8]}"
        env = {**b.env, "LOCKGATE_TASK_QUEUE": self.queue, "LOCKGATE_REAP_INTERVAL": "3600"}
        if ledger:
            env["LOCKGATE_LEDGER_URL"] = ledger
        if profile is not None:
            env["BENCH_PROFILE"] = str(profile)
        self.log = log_dir / f"cpu-worker-{self.queue}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.worker_cpu", kind],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        CHILDREN.append(self.proc)
        self.ps = psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the {self.kind} worker exited ({self.proc.returncode}); see {self.log}")
        t = self.ps.cpu_times()
        return t.user + t.system

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while b"ready" not in self.log.read_bytes():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the {self.kind} worker did not start; see {self.log}")
            await asyncio.sleep(0.1)


def _server_procs(b: Bench) -> dict[str, psutil.Process]:
    pids = b.dev._pids()
    out = {}
    for name in ("temporal", "vault"):
        if pids.get(name):
            try:
                out[name] = psutil.Process(int(pids[name]))
            except psutil.Error:
                pass
    pg = b.dev._postgres_pid()
    if pg is not None:
        try:
            out["postgres"] = psutil.Process(pg)
        except psutil.Error:
            pass
    return out


def _cpu_of(p: psutil.Process) -> float:
    """User + system CPU of a server; for PostgreSQL (one process per connection) the postmaster's
    live and exited children too."""
    try:
        t = p.cpu_times()
        total = t.user + t.system
        if p.name().startswith("postgres"):
            total += t.children_user + t.children_system
            for child in p.children():
                try:
                    c = child.cpu_times()
                    total += c.user + c.system
                except psutil.Error:
                    pass
        return total
    except psutil.Error:
        return 0.0


async def worker_cpu(
    b: Bench,
    log_dir: Path,
    *,
    concurrency: int = 10,
    runs: int = 20,
    rounds: int = 3,
    profile_runs: int = 20,
) -> dict[str, Any]:
    # The ledger on PostgreSQL, as production runs it (LOCKGATE_PRODUCTION refuses SQLite): an
    # in-process SQLite would put the database's own work into the worker's CPU.
    ledger = _database(b, f"bench_cpu_{uuid.uuid4().hex[:8]}")
    gov, plain = _Proc(b, "governed", log_dir, ledger=ledger), _Proc(b, "plain", log_dir)
    servers = _server_procs(b)
    try:
        await gov.ready()
        await plain.ready()

        def starter(side: _Proc, steps: int) -> Any:
            async def one() -> None:
                if side is gov:
                    run_id = f"bench-cpu-{uuid.uuid4().hex[:12]}"
                    handle = await b.client.start_workflow(
                        "lockgate.agent",
                        b.run_input(bench_agents.NOOP, steps, run_id),
                        id=run_id,
                        task_queue=side.queue,
                    )
                else:
                    handle = await b.client.start_workflow(
                        baseline.PlainWorkflow.run,
                        baseline.PlainInput(activity=baseline.NOOP, n=steps),
                        id=f"plain-cpu-{uuid.uuid4().hex[:12]}",
                        task_queue=side.queue,
                    )
                await result_of(handle, RUN_TIMEOUT + steps)

            return one

        async def window(side: _Proc, steps: int, n: int) -> dict[str, float]:
            c0 = side.cpu()
            s0 = {k: _cpu_of(p) for k, p in servers.items()}
            wall = await closed_loop(concurrency, n, starter(side, steps))
            used = side.cpu() - c0
            out = {"cpu_ms_per_run": used / n * 1000, "wall_s": wall}
            for k, p in servers.items():
                out[f"{k}_cpu_ms_per_run"] = (_cpu_of(p) - s0[k]) / n * 1000
            return out

        for side in (gov, plain):  # warm-up: imports, sandbox, pools, caches on both sides
            for steps in (1, 5):
                await closed_loop(concurrency, concurrency * 2, starter(side, steps))
        samples: dict[str, dict[str, list[dict[str, float]]]] = {s: {"1": [], "5": []} for s in ("governed", "plain")}
        for r in range(rounds):
            order = [(gov, "governed"), (plain, "plain")]
            if r % 2:
                order.reverse()
            for steps in (1, 5):
                for side, name in order:
                    samples[name][str(steps)].append(await window(side, steps, runs))
        idle0 = (gov.cpu(), plain.cpu())
        await asyncio.sleep(2.0)
        idle = {"governed": (gov.cpu() - idle0[0]) / 2.0 * 1000, "plain": (plain.cpu() - idle0[1]) / 2.0 * 1000}
    finally:
        stop(gov.proc)
        stop(plain.proc)

    def cpu(name: str, steps: str, key: str = "cpu_ms_per_run") -> list[float]:
        return [w[key] for w in samples[name][steps]]

    # Per round: the ratio of governed to plain CPU per run of 5, and per call (marginal).
    run_ratios = sorted(g / p for g, p in zip(cpu("governed", "5"), cpu("plain", "5"), strict=True))
    call = {
        name: [(five - one) / 4 for five, one in zip(cpu(name, "5"), cpu(name, "1"), strict=True)]
        for name in ("governed", "plain")
    }
    call_ratios = sorted(g / p for g, p in zip(call["governed"], call["plain"], strict=True) if p > 0)
    out: dict[str, Any] = {
        "ledger": "postgresql",
        "concurrency": concurrency,
        "runs_per_window": runs,
        "rounds": rounds,
        "samples": samples,
        "idle_cpu_ms_per_s": idle,
        "governed_ms_per_run5": median(cpu("governed", "5")),
        "plain_ms_per_run5": median(cpu("plain", "5")),
        "governed_ms_per_run1": median(cpu("governed", "1")),
        "plain_ms_per_run1": median(cpu("plain", "1")),
        "governed_ms_per_call": median(call["governed"]),
        "plain_ms_per_call": median(call["plain"]),
        "run_ratio": median(run_ratios),
        "run_ratios": run_ratios,
        "call_ratio": median(call_ratios) if call_ratios else None,
        "call_ratios": call_ratios,
        "servers": {
            f"{k}_ms_per_run5": {
                "governed": median(cpu("governed", "5", f"{k}_cpu_ms_per_run")),
                "plain": median(cpu("plain", "5", f"{k}_cpu_ms_per_run")),
            }
            for k in servers
        },
    }
    say(
        f"worker cpu: run of 5 governed {out['governed_ms_per_run5']:.1f} ms vs plain {out['plain_ms_per_run5']:.1f} "
        f"ms = {out['run_ratio']:.2f}x (rounds {', '.join(f'{x:.2f}' for x in run_ratios)}); per call "
        f"{out['governed_ms_per_call']:.1f} vs {out['plain_ms_per_call']:.1f} ms"
    )
    if profile_runs:
        out["profile"] = await _profile(b, log_dir, concurrency, profile_runs, ledger=ledger)
    return out


async def _profile(
    b: Bench, log_dir: Path, concurrency: int, runs: int, steps: int = 5, *, ledger: str
) -> dict[str, Any]:
    path = log_dir / f"worker-{uuid.uuid4().hex[:8]}.pstats"
    side = _Proc(b, "governed", log_dir, profile=path, ledger=ledger)
    try:
        await side.ready()

        async def one() -> None:
            run_id = f"bench-prof-{uuid.uuid4().hex[:12]}"
            handle = await b.client.start_workflow(
                "lockgate.agent", b.run_input(bench_agents.NOOP, steps, run_id), id=run_id, task_queue=side.queue
            )
            await result_of(handle, RUN_TIMEOUT + steps)

        await closed_loop(concurrency, concurrency * 2, one)  # warm-up, as in the figure
        start = Path(str(path) + ".start")
        side.proc.send_signal(signal.SIGUSR1)
        await asyncio.to_thread(_wait_file, start, 5.0)
        c0 = side.cpu()
        await closed_loop(concurrency, runs, one)
        cpu_ms = (side.cpu() - c0) * 1000
    finally:
        stop(side.proc)
    await asyncio.to_thread(_wait_file, path, 5.0)
    summary = profile_summary(path, Path(str(path) + ".start"), runs * steps)
    summary.update({"runs": runs, "calls": runs * steps, "cpu_ms_per_run_profiled": cpu_ms / runs})
    return summary


def _wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _where(key: str) -> str:
    file, line, name = key.rsplit(":", 2)
    if file == "~":
        return name  # a builtin
    for prefix in (str(ROOT) + "/", *(p + "/" for p in sys.path if p.endswith("site-packages"))):
        if file.startswith(prefix):
            file = file[len(prefix) :]
            break
    return f"{file}:{line}({name})"


def _ours(file: str) -> bool:
    return file.startswith(str(ROOT) + "/") and "/.venv/" not in file and "site-packages" not in file


def _area(key: str) -> str:
    """Which part of the stack a function belongs to, for the summary by area."""
    file = key.rsplit(":", 2)[0]
    if _ours(file):
        return "bench (tool bodies)" if "/bench/" in file else "lockgate"
    for needle, area in (
        ("temporalio/worker/workflow_sandbox", "temporalio sandbox"),
        ("temporalio", "temporalio"),
        ("sqlalchemy", "sqlalchemy (ledger)"),
        ("sqlmodel", "sqlalchemy (ledger)"),
        ("hvac", "hvac/requests (Vault)"),
        ("requests", "hvac/requests (Vault)"),
        ("urllib3", "hvac/requests (Vault)"),
        ("http/client", "hvac/requests (Vault)"),
        ("cedarpy", "cedarpy"),
        ("pydantic", "pydantic"),
        ("cryptography", "cryptography"),
        ("google/protobuf", "protobuf"),
        ("json/", "json"),
        ("asyncio", "asyncio"),
        ("concurrent/futures", "threads"),
        ("threading", "threads"),
    ):
        if needle in file:
            return area
    return "builtins" if file == "~" else "other"


def profile_summary(path: Path, start: Path, calls: int, top: int = 15) -> dict[str, Any]:
    """The window's profile (totals at the end minus at its start): top entries by own time and by
    cumulative time (ms per governed call), and own time summed by area (lockgate, temporalio,
    ledger, Vault client, cedarpy, ...)."""
    import cProfile
    import json

    cprofile_file = str(cProfile.__file__)
    end_totals: dict[str, list[float]] = json.loads(path.read_text())
    before: dict[str, list[float]] = json.loads(start.read_text()) if start.exists() else {}
    raw = {}
    for key, (nc, tt, ct) in end_totals.items():
        if key.startswith(cprofile_file) or (":snapshot" in key and "worker_cpu" in key):
            continue  # the end snapshot's own cost
        b = before.get(key, [0, 0.0, 0.0])
        if nc - b[0] > 0:
            raw[key] = (int(nc - b[0]), tt - b[1], ct - b[2])
    total = sum(v[1] for v in raw.values())
    own = sorted(raw.items(), key=lambda kv: kv[1][1], reverse=True)[:top]
    cum = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)
    areas: dict[str, float] = {}
    for key, v in raw.items():
        areas[_area(key)] = areas.get(_area(key), 0.0) + v[1]
    per = 1000 / max(1, calls)
    lockgate_cum = [(k, v) for k, v in cum if _ours(k.rsplit(":", 2)[0]) and "/bench/" not in k][:top]
    return {
        "profiled_python_ms_per_call": total * per,
        "by_area_ms_per_call": {k: round(v * per, 3) for k, v in sorted(areas.items(), key=lambda kv: -kv[1])},
        "top_own": [{"where": _where(k), "own_ms_per_call": round(v[1] * per, 3), "calls": v[0]} for k, v in own],
        "top_cumulative_lockgate": [
            {"where": _where(k), "cum_ms_per_call": round(v[2] * per, 3), "calls": v[0]} for k, v in lockgate_cum
        ],
        "how": "cProfile (timer: the thread's CPU time) in every Python thread of a governed worker process, over "
        "the measured window only; profiling slows it: the shares, not the ms, carry over to an unprofiled worker",
    }


if __name__ == "__main__":
    main()
