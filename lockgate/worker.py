"""The composition root: reads configuration, wires clients, activities and workflows.

`python worker.py` or `lockgate worker` runs a worker. Tests call `build_deps` / `build_worker`.
The worker authenticates to Vault with AppRole (never the root token) and refuses to start on an
invalid policy bundle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

import lockgate.activities.incident
import lockgate.activities.shop
import lockgate.agents  # noqa: F401 - registers the built-in agents
from lockgate.activities.anchor import TransitAnchor
from lockgate.activities.archive import HistoryArchive, archive_forever
from lockgate.activities.freeze import FreezeStore
from lockgate.activities.governance import GovernanceActivities, bundle_content
from lockgate.activities.ledger import Ledger
from lockgate.activities.planner import LLMPlannerActivities
from lockgate.activities.reaper import Reaper
from lockgate.activities.tools import Resources, ToolRunner
from lockgate.activities.vault import VaultBroker
from lockgate.config import Settings, archive_dir, load_settings
from lockgate.errors import PolicyError, UserError
from lockgate.gates.bundle import PolicyBundle
from lockgate.observability import setup_logging, tracing_interceptors
from lockgate.policies import load_bundle
from lockgate.spec import AgentRegistry, load_agent_modules, registry
from lockgate.workflows.agent import AgentWorkflow

__all__ = [
    "DATA_CONVERTER",
    "Deps",
    "build_archive",
    "build_deps",
    "build_governance",
    "build_reaper",
    "build_tools",
    "build_worker",
    "connect",
    "entry",
    "main",
    "reap_forever",
    "run_worker",
    "watch_policies",
]

log = logging.getLogger("lockgate.worker")

# One converter for worker, CLI and replayer: pydantic models in, pydantic models out.
DATA_CONVERTER = pydantic_data_converter


@dataclass
class Deps:
    settings: Settings
    vault: VaultBroker
    ledger: Ledger
    bundle: PolicyBundle
    freezes: FreezeStore
    agents: AgentRegistry = field(default_factory=lambda: registry)

    def current_bundle(self) -> PolicyBundle:
        return self.bundle

    def reload_policies(self) -> list[str]:
        """Loads the policy dir again. A valid bundle takes effect at the next gate; an invalid one
        is refused (the last good bundle stays) and its problems are returned and logged loudly."""
        try:
            bundle = load_bundle(self.settings.policy_dir, self.agents)
        except PolicyError as err:
            log.error(
                "POLICY RELOAD REFUSED: keeping bundle %s; %d problem(s) in %s",
                self.bundle.hash[:12],
                len(err.problems),
                self.settings.policy_dir,
            )
            for problem in err.problems:
                log.error("  %s", problem)
            return err.problems
        if bundle.hash != self.bundle.hash:
            self.ledger.register_bundle(bundle.hash, bundle_content(bundle))
            log.warning(
                "policy bundle reloaded: %s -> %s (%d policies)",
                self.bundle.hash[:12],
                bundle.hash[:12],
                len(bundle.statements),
            )
            self.bundle = bundle
        return []


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in directory.iterdir()))
    except OSError:
        return ()


async def watch_policies(deps: Deps, stop: asyncio.Event, interval: float = 2.0) -> None:
    """Hot reload: a changed policy dir is re-read, without a worker restart."""
    seen = _fingerprint(deps.settings.policy_dir)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
        now = _fingerprint(deps.settings.policy_dir)
        if now != seen:
            seen = now
            await asyncio.to_thread(deps.reload_policies)


def build_deps(settings: Settings, agents: AgentRegistry = registry) -> Deps:
    """Loads policies (PolicyError if invalid), logs in to Vault, opens the ledger."""
    try:
        load_agent_modules()
    except ImportError as err:
        raise UserError(f"LOCKGATE_AGENT_MODULES: {err}") from err
    bundle = load_bundle(settings.policy_dir, agents)
    if not (settings.vault_role_id and settings.vault_secret_id):
        raise UserError("LOCKGATE_VAULT_ROLE_ID and LOCKGATE_VAULT_SECRET_ID are not set (run `lockgate dev up`)")
    vault = VaultBroker(settings.vault_addr, settings.vault_role_id, settings.vault_secret_id)
    try:
        vault.check()
    except Exception as err:
        raise UserError(f"cannot log in to Vault at {settings.vault_addr} with AppRole: {err}") from err
    # Checkpoints signed with the ledger's Transit key: at run close and every few seconds.
    ledger = Ledger(settings.ledger_url, signer=TransitAnchor(lambda: vault.client))
    ledger.register_bundle(bundle.hash, bundle_content(bundle))
    return Deps(
        settings=settings, vault=vault, ledger=ledger, bundle=bundle, freezes=FreezeStore(ledger), agents=agents
    )


def build_governance(deps: Deps) -> GovernanceActivities:
    return GovernanceActivities(
        bundle=deps.current_bundle, agents=deps.agents, ledger=deps.ledger, vault=deps.vault, freezes=deps.freezes
    )


def build_tools(deps: Deps, governance: GovernanceActivities | None = None) -> ToolRunner:
    gate = (governance or build_governance(deps)).decide
    return ToolRunner(
        agents=deps.agents,
        vault=deps.vault,
        ledger=deps.ledger,
        gate=gate,
        resources=Resources(pg_socket_dir=deps.settings.pg_socket_dir),
    )


def build_archive(deps: Deps) -> HistoryArchive:
    """Closed runs' histories, archived beside the ledger so audits outlive the server's retention."""
    return HistoryArchive(archive_dir(deps.settings), deps.ledger)


def build_reaper(deps: Deps) -> Reaper:
    return Reaper(
        vault=deps.vault, ledger=deps.ledger, agents=deps.agents, tools=build_tools(deps), bundle=deps.current_bundle
    )


async def reap_forever(client: Client, reaper: Reaper, interval: float, stop: asyncio.Event) -> None:
    """The worker's periodic reaper pass (Temporal runs no workflow code on terminate)."""
    while not stop.is_set():
        try:
            await reaper.reap_once(client)
        except Exception:
            log.exception("reaper pass failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass


def build_worker(
    client: Client,
    deps: Deps,
    *,
    task_queue: str | None = None,
    max_concurrent: int = 64,
    extra_workflows: Sequence[type] = (),
    max_cached_workflows: int | None = None,
) -> Worker:
    governance = build_governance(deps)
    tools = build_tools(deps, governance)
    planner = LLMPlannerActivities(agents=deps.agents, vault=deps.vault)
    return Worker(
        client,
        task_queue=task_queue or deps.settings.task_queue,
        workflows=[AgentWorkflow, *extra_workflows],
        activities=[
            governance.evaluate,
            governance.open_run,
            governance.close_run,
            governance.record,
            planner.plan,
            *tools.activities(),
        ],
        # Vault, Postgres and the ledger are synchronous clients: activities run in threads.
        activity_executor=ThreadPoolExecutor(max_concurrent, thread_name_prefix="lockgate-activity"),
        max_concurrent_activities=max_concurrent,
        max_concurrent_local_activities=max_concurrent,
        interceptors=tracing_interceptors(),
        # Runs waiting for approval sit in the sticky cache until evicted; a bounded cache keeps a
        # worker's memory flat however many runs wait (an evicted run replays when it wakes).
        max_cached_workflows=max_cached_workflows
        if max_cached_workflows is not None
        else int(os.environ.get("LOCKGATE_MAX_CACHED_WORKFLOWS", "100")),
    )


async def connect(settings: Settings) -> Client:
    try:
        return await Client.connect(
            settings.temporal_address, namespace=settings.namespace, data_converter=DATA_CONVERTER
        )
    except Exception as err:
        raise UserError(f"cannot reach Temporal at {settings.temporal_address}: {err}") from err


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    deps = build_deps(settings)
    client = await connect(settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = build_worker(client, deps)
    log.info(
        "worker started: task_queue=%s bundle=%s policies=%d",
        settings.task_queue,
        deps.bundle.hash[:12],
        len(deps.bundle.statements),
    )
    interval = float(os.environ.get("LOCKGATE_REAP_INTERVAL", "15"))
    async with worker:
        background = [
            asyncio.create_task(reap_forever(client, build_reaper(deps), interval, stop)),
            asyncio.create_task(watch_policies(deps, stop)),
            asyncio.create_task(
                archive_forever(
                    client, build_archive(deps), float(os.environ.get("LOCKGATE_ARCHIVE_INTERVAL", "10")), stop
                )
            ),
        ]
        await stop.wait()
        await asyncio.gather(*background)
    log.info("worker stopped")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    settings = load_settings()
    try:
        asyncio.run(run_worker(settings))
    except PolicyError as err:
        print(f"lockgate worker: refusing to start: invalid policy bundle in {settings.policy_dir}", file=sys.stderr)
        for problem in err.problems:
            print(f"  {Path(settings.policy_dir) / problem}", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"lockgate worker: {err}", file=sys.stderr)
        return 2
    return 0


def entry() -> None:
    """Console entry (`python worker.py`, `lockgate worker`): exits with `main`'s code."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # see lockgate.cli.entry: avoids an abort in the native runtime at finalization


if __name__ == "__main__":
    entry()
