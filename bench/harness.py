"""The bench's stack and workers: the real servers on free ports in a temporary directory (as
tests/conftest.py does), an in-process governed worker (worker.build_worker) and a plain worker for
the baseline, on the same Temporal server and client."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

import bench.agents as bench_agents
from bench.baseline import PlainActivities, PlainInput, PlainWorkflow
from lockgate.config import Settings, load_settings
from lockgate.devstack import DevStack, free_port
from lockgate.errors import UserError
from lockgate.models import RunInput

__all__ = [
    "ROOT",
    "RUN_TIMEOUT",
    "Bench",
    "bench_workers",
    "closed_loop",
    "median",
    "new_stack",
    "percentile",
    "result_of",
    "say",
    "stack_env",
    "stack_up",
    "write_policy_dir",
]

ROOT = Path(__file__).resolve().parent.parent
_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr (stdout carries the table)."""
    import sys

    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 1,000 samples is the 990th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


AGENT_MODULES = "lockgate.demo.shop,lockgate.demo.incident,bench.agents"


# -- the stack -----------------------------------------------------------------------------------
def new_stack(base: Path) -> DevStack:
    return DevStack(
        base / "state",
        temporal_port=free_port(),
        ui_port=free_port(),
        vault_port=free_port(),
        ui=False,
        agent_modules=AGENT_MODULES,
    )


def stack_up(dev: DevStack) -> None:
    """`up` with the test suite's retry: a port chosen free can be taken before the server binds it.
    The caller owns `dev` and calls `dev.down()` in a finally whatever happens here."""
    for attempt in range(3):
        try:
            dev.up(progress=lambda m: say(f"stack: {m}"))
            return
        except UserError:
            if attempt == 2:
                raise
            dev.down()
            dev.temporal_port, dev.vault_port = free_port(), free_port()


def write_policy_dir(target: Path) -> Path:
    """The repo's policies/ plus the bench agent's policy and schema actions, in a temp copy."""
    target.mkdir(parents=True, exist_ok=True)
    for item in (ROOT / "policies").iterdir():
        if item.is_file():
            shutil.copy(item, target / item.name)
    (target / "bench-agent.cedar").write_text(bench_agents.POLICY)
    with open(target / "schema.cedarschema", "a") as schema:
        schema.write("\n// bench actions (bench/agents.py)\n" + bench_agents.SCHEMA)
    return target


def stack_env(dev: DevStack, policy_dir: Path) -> dict[str, str]:
    """The environment a worker process of this bench runs with (as tests/conftest.py's `env`)."""
    values = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKGATE_", "VAULT_"))}
    values.update(dev.env())
    values.update(
        {
            "LOCKGATE_STATE_DIR": str(dev.state_dir),
            "LOCKGATE_POLICY_DIR": str(policy_dir),
            "LOCKGATE_LEDGER_URL": f"sqlite:///{dev.state_dir / 'ledger.db'}",
            "LOCKGATE_TASK_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
            "PYTHONPATH": str(ROOT),
            "LOCKGATE_AGENT_MODULES": AGENT_MODULES,
        }
    )
    return values


_PEOPLE: dict[str, Any] = {}


# -- the workers ---------------------------------------------------------------------------------
@dataclass
class Bench:
    """What every measurement needs: the stack's env and settings, the worker's deps, one client."""

    dev: DevStack
    env: dict[str, str]
    settings: Settings
    deps: Any
    client: Client
    queue: str
    plain_queue: str

    def person(self, name: str) -> Any:
        """A dev person, logged in once (runs are started and approved by people)."""
        from lockgate.identity import login_userpass

        if name not in _PEOPLE:
            _PEOPLE[name] = login_userpass(self.settings.vault_addr, name, self.env["LOCKGATE_DEV_PASSWORD"])
        return _PEOPLE[name]

    def run_input(self, tool: str, n: int, run_id: str, initiator: str = bench_agents.INITIATOR) -> RunInput:
        """The input of a governed run, with the initiator's signed start statement."""
        from lockgate.identity import sign
        from lockgate.models import args_digest

        data = bench_agents.bench_input(tool, n)
        start = sign(
            self.person(initiator),
            "start",
            {"run_id": run_id, "agent": bench_agents.AGENT_NAME, "input_digest": args_digest(data)},
        )
        return RunInput(agent=bench_agents.AGENT_NAME, input=data, initiator=initiator, start=start)

    async def approve(self, handle: WorkflowHandle[Any, Any], request: Any, who: str = bench_agents.APPROVER) -> Any:
        """`lockgate approve` as `who`: a signed approval of exactly this request, as an update."""
        from lockgate.ops import send_verdict

        return await send_verdict(self.client, handle.id, request.request_id, session=self.person(who), approve=True)

    async def start_governed(
        self, tool: str, n: int, *, run_id: str | None = None, initiator: str = bench_agents.INITIATOR
    ) -> WorkflowHandle[Any, Any]:
        run_id = run_id or f"bench-{uuid.uuid4().hex[:12]}"
        return await self.client.start_workflow(
            "lockgate.agent", self.run_input(tool, n, run_id, initiator), id=run_id, task_queue=self.queue
        )

    async def governed(self, tool: str, n: int) -> float:
        """Wall seconds of one governed run of `n` calls, start request to result."""
        t0 = time.perf_counter()
        handle = await self.start_governed(tool, n)
        await result_of(handle, RUN_TIMEOUT + n)
        return time.perf_counter() - t0

    async def plain(self, activity: str, n: int) -> float:
        """Wall seconds of one plain run of `n` activities, start request to result."""
        t0 = time.perf_counter()
        handle = await self.client.start_workflow(
            PlainWorkflow.run,
            PlainInput(activity=activity, n=n),
            id=f"plain-{uuid.uuid4().hex[:12]}",
            task_queue=self.plain_queue,
        )
        await result_of(handle, RUN_TIMEOUT + n)
        return time.perf_counter() - t0


# A run that has not finished by then is stuck (a failing workflow task retries forever): the
# section fails with a clear error instead of the bench hanging past its time budget.
RUN_TIMEOUT = 120.0


async def result_of(handle: WorkflowHandle[Any, Any], timeout: float) -> Any:
    try:
        return await asyncio.wait_for(handle.result(), timeout=timeout)
    except TimeoutError:
        raise TimeoutError(
            f"run {handle.id} did not finish within {timeout:.0f}s (see the worker's warnings above)"
        ) from None


@asynccontextmanager
async def bench_workers(dev: DevStack, policy_dir: Path) -> AsyncIterator[Bench]:
    """The governed worker exactly as production builds it, and beside it (same client, same
    process) a plain worker with the same executor settings for the baseline workflow."""
    from lockgate import worker

    env = stack_env(dev, policy_dir)
    settings = load_settings(env)
    deps = worker.build_deps(settings)
    client = await worker.connect(settings, deps.vault)
    plain_queue = f"{settings.task_queue}-plain"
    governed = worker.build_worker(client, deps, extra_workflows=[PlainWorkflow])
    # build_worker takes no extra activities: the baseline's workflow and activities get a worker of
    # their own on another queue, configured like build_worker's (64 threads, 64 slots). The plain
    # workflow runs on that queue too, so its activities are on the workflow's own queue exactly like
    # the governed tool activities are (same dispatch path, eager execution included).
    assert env["LOCKGATE_PG_DSN"]
    plain = Worker(
        client,
        task_queue=plain_queue,
        workflows=[PlainWorkflow],
        activities=PlainActivities(env["LOCKGATE_PG_DSN"]).activities(),
        activity_executor=ThreadPoolExecutor(64, thread_name_prefix="bench-plain"),
        max_concurrent_activities=64,
        max_concurrent_local_activities=64,
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(governed)
        await stack.enter_async_context(plain)
        try:
            yield Bench(
                dev=dev,
                env=env,
                settings=settings,
                deps=deps,
                client=client,
                queue=settings.task_queue,
                plain_queue=plain_queue,
            )
        finally:
            deps.ledger.dispose()


async def closed_loop(concurrency: int, total: int, one: Callable[[], Awaitable[Any]]) -> float:
    """Runs `total` calls of `one` with `concurrency` in flight at all times; returns wall seconds."""
    remaining = total

    async def client_loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return time.perf_counter() - t0
