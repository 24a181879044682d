"""The composition root: reads configuration, builds the dependencies `LockgatePlugin` wires in.

`python worker.py` or `lockgate worker` runs a worker. Tests call `build_deps` / `build_worker`.
The worker authenticates to Vault with AppRole (never the root token) and refuses to start on an
invalid policy bundle. Temporal connection settings follow temporalio's environment configuration
(profiles, TLS, API key), with `LOCKGATE_TEMPORAL_ADDRESS` / `LOCKGATE_NAMESPACE` on top.
"""

from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import hvac.exceptions
from temporalio.client import Client, Plugin
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.envconfig import ClientConfig
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from lockgate import standby
from lockgate.activities.anchor import TransitAnchor
from lockgate.activities.approvals import ApprovalActivities
from lockgate.activities.archive import HistoryArchive
from lockgate.activities.codec import TransitCodec, VaultTransit
from lockgate.activities.freeze import FreezeStore, unfreeze_verifier
from lockgate.activities.governance import GovernanceActivities, bundle_content
from lockgate.activities.identity import LedgerKeyArchive, PeopleDirectory
from lockgate.activities.ledger import CHECKPOINT_INTERVAL, Ledger, PoolLimits
from lockgate.activities.ledger.rowkey import LEDGER_ROW_KEY, VaultRowKeys
from lockgate.activities.planner import LLMPlannerActivities
from lockgate.activities.reaper import Reaper
from lockgate.activities.tools import Resources, ToolRunner
from lockgate.activities.vault import VaultBroker
from lockgate.config import Settings, archive_dir, load_settings, production_problems
from lockgate.errors import PolicyError, UserError
from lockgate.gates.bundle import PolicyBundle
from lockgate.metrics import StateGauges
from lockgate.names import BACKGROUND_JOBS, WORKFLOW_BACKGROUND, background_queue
from lockgate.observability import setup_logging, setup_tracing
from lockgate.plugin import LockgatePlugin
from lockgate.policies import load_bundle
from lockgate.probes import Probes
from lockgate.spec import AgentRegistry, load_agents

__all__ = [
    "DATA_CONVERTER",
    "Deps",
    "build_activities",
    "build_archive",
    "build_background_worker",
    "build_deps",
    "build_governance",
    "build_reaper",
    "build_tools",
    "build_worker",
    "connect",
    "connect_config",
    "data_converter",
    "entry",
    "ledger_pool",
    "main",
    "reap_forever",
    "run_worker",
    "watch_policies",
]

log = logging.getLogger("lockgate.worker")

# Pydantic models in, pydantic models out, payloads in clear: what `data_converter` builds when no
# payload key is configured. Use `data_converter(settings)`, which encrypts when one is.
DATA_CONVERTER = pydantic_data_converter


def data_converter(settings: Settings, vault: VaultBroker | None = None) -> DataConverter:
    """The one data converter for worker, CLI, replayer and demo.

    With `LOCKGATE_PAYLOAD_KEY` set, every payload (inputs, results, signals, updates, queries,
    memos, failure messages) is encrypted under that Vault Transit key (activities/codec.py).
    Without it nothing is encrypted, but payloads encrypted earlier still decrypt wherever there is
    a Vault identity to do it with: switching encryption off never makes old runs unreadable.

    Args:
        settings: lockgate's settings.
        vault: the worker's broker: payload keys are then used with the worker's AppRole identity.
            Without it, with the operator's token (`LOCKGATE_OPERATOR_TOKEN`, else `VAULT_TOKEN`).

    Raises:
        UserError: a payload key is configured but there is no Vault identity to use it with.
    """
    token = settings.operator_token or settings.vault_token
    if vault is not None:
        broker = vault
        transit = VaultTransit(lambda: broker.client)
    elif token:
        transit = VaultTransit.with_token(settings.vault_addr, token)
    elif settings.payload_key:
        raise UserError(
            f"payloads are encrypted with Vault Transit key {settings.payload_key!r}: set "
            "LOCKGATE_OPERATOR_TOKEN (or VAULT_TOKEN) to a Vault token that may use it"
        )
    else:
        return DATA_CONVERTER
    if not settings.payload_key:
        return dataclasses.replace(DATA_CONVERTER, payload_codec=TransitCodec(transit, None))
    return dataclasses.replace(
        DATA_CONVERTER,
        payload_codec=TransitCodec(transit, settings.payload_key),
        # Failure messages can quote what a tool saw: they go into the encrypted payload too.
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


@dataclass
class Deps:
    settings: Settings
    vault: VaultBroker
    ledger: Ledger
    bundle: PolicyBundle
    freezes: FreezeStore
    # Verifies people's signed acts (approvals, starts, halts, unfreezes) with Vault's public keys.
    people: PeopleDirectory
    agents: AgentRegistry = field(default_factory=AgentRegistry)
    # Signed team bundles in force (lockgate/teambundles.py); None: the local folder decides all.
    teams: Any = None

    def current_bundle(self, agent: str | None = None) -> PolicyBundle:
        """The bundle that decides `agent`: its team's signed bundle in force, else the local one."""
        return self.teams.bundle_for(agent) if self.teams is not None else self.bundle

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
        from lockgate.teambundles import DENY_ALL, load_local_teams

        if self.teams is not None and self.teams.local is not DENY_ALL:
            try:  # dev mode's team folders (`policies/<team>/bundle.json`): only the hosted teams'
                self.teams.local_teams = load_local_teams(self.settings.policy_dir, self.agents)
            except PolicyError as err:
                log.error("POLICY RELOAD REFUSED: keeping the team folders loaded; %s", "; ".join(err.problems))
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
            if self.teams is not None and self.teams.local is not DENY_ALL:
                self.teams.local = bundle  # dev mode: the folder decides agents without a signed bundle
        return []


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple(
            sorted(
                (str(p.relative_to(directory)), p.stat().st_mtime_ns, p.stat().st_size) for p in directory.rglob("*")
            )
        )
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
        if deps.teams is not None:  # signed team bundles switched in the ledger; the heartbeat
            await asyncio.to_thread(deps.teams.refresh)


def ledger_pool(settings: Settings) -> PoolLimits:
    """The ledger's connection limits from the settings (`LOCKGATE_LEDGER_POOL_*`, `..._PGBOUNCER`)."""
    return PoolLimits(
        size=settings.ledger_pool_size,
        overflow=settings.ledger_pool_overflow,
        raw=settings.ledger_raw_pool,
        timeout=settings.ledger_pool_timeout,
        pgbouncer=settings.ledger_pgbouncer,
    )


def build_deps(settings: Settings, agents: AgentRegistry | None = None) -> Deps:
    """Loads the agents (unless given), policies (PolicyError if invalid), logs in to Vault, opens
    the ledger."""
    if agents is None:
        try:
            agents = load_agents(settings.agent_modules)
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
    # Every row this worker writes carries a MAC with a key derived from Vault (kept in memory);
    # readers act only on rows whose MAC verifies.
    try:
        ledger = Ledger(
            settings.ledger_url,
            signer=TransitAnchor(lambda: vault.client),
            row_key=VaultRowKeys(lambda: vault.client),
            strict_events=True,
            pool=ledger_pool(settings),
        )
    except hvac.exceptions.VaultError as err:
        raise UserError(
            f"cannot derive the ledger's row key from Vault Transit key {LEDGER_ROW_KEY} ({err}): the worker's "
            "policy must allow transit/hmac on it (`lockgate dev up` / the set-up create the key and the policy)"
        ) from err
    ledger.register_bundle(bundle.hash, bundle_content(bundle))
    people = PeopleDirectory(vault, archive=LedgerKeyArchive(ledger))
    teams = team_bundles(settings, ledger, people, agents, bundle)
    return Deps(
        settings=settings,
        vault=vault,
        ledger=ledger,
        bundle=bundle,
        freezes=FreezeStore(ledger, verify=unfreeze_verifier(people)),
        agents=agents,
        people=people,
        teams=teams,
    )


def team_bundles(settings: Settings, ledger: Ledger, people: PeopleDirectory, agents: AgentRegistry, local: Any) -> Any:
    """Signed team bundles from the ledger; the local folder decides the rest only in dev mode."""
    from lockgate.activities.policystore import PolicyStore, people_verifier
    from lockgate.teambundles import DENY_ALL, TeamBundles, load_local_teams

    store = PolicyStore(ledger, people_verifier(people), settings.policy_quorum)
    unsigned = not settings.production or "local-policies" in settings.production_allow.split(",")
    if not unsigned:
        log.warning(
            "production mode: the local policy folder is not used (unsigned); agents without a signed bundle are denied"
        )
        return TeamBundles(store, agents, DENY_ALL)
    return TeamBundles(store, agents, local, local_teams=load_local_teams(settings.policy_dir, agents))


def build_approvals(deps: Deps) -> ApprovalActivities:
    return ApprovalActivities(people=deps.people, agents=deps.agents, ledger=deps.ledger)


def build_governance(deps: Deps) -> GovernanceActivities:
    return GovernanceActivities(
        bundle=deps.current_bundle,
        agents=deps.agents,
        ledger=deps.ledger,
        vault=deps.vault,
        freezes=deps.freezes,
        people=deps.people,
        approvals=build_approvals(deps),
        shadow=deps.teams.shadow if deps.teams is not None else None,
    )


def tool_resources(settings: Settings) -> Resources:
    """Where tools reach their systems: PostgreSQL by socket dir, else LOCKGATE_PG_HOST/PORT (TCP)."""
    return Resources(
        pg_socket_dir=settings.pg_socket_dir,
        pg_host=settings.pg_host,
        pg_port=settings.pg_port,
        policy_dir=str(settings.policy_dir),
    )


def build_tools(deps: Deps, governance: GovernanceActivities | None = None) -> ToolRunner:
    gate = (governance or build_governance(deps)).decide
    if any(t.mcp_server for t in deps.agents.tools()):
        from lockgate.mcp.client import warm

        warm()  # once, at start: the MCP SDK's import takes seconds, a call's budget is 8 s
    return ToolRunner(
        agents=deps.agents,
        vault=deps.vault,
        ledger=deps.ledger,
        gate=gate,
        resources=tool_resources(deps.settings),
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


def background_intervals(settings: Settings, reap_interval: float | None = None) -> dict[str, float]:
    """Seconds between passes of each background job (this worker's settings)."""
    return {
        "reaper": reap_interval if reap_interval is not None else settings.reap_interval,
        "archiver": settings.archive_interval,
        "checkpointer": CHECKPOINT_INTERVAL,
    }


def build_background_worker(
    client: Client, deps: Deps, task_queue: str, intervals: dict[str, float] | None = None
) -> Worker:
    """The worker of the cluster's background jobs (workflows/background.py) on their own queue
    (`background_queue(task_queue)`): only workers with `LOCKGATE_BACKGROUND` on poll it."""
    from lockgate.activities.background import BackgroundActivities
    from lockgate.activities.callers import CallerGuard
    from lockgate.plugin import workflow_runner
    from lockgate.workflows.background import BackgroundWorkflow

    queue = background_queue(task_queue)
    passes = BackgroundActivities(
        client=client,
        reaper=build_reaper(deps),
        archive=build_archive(deps),
        ledger=deps.ledger,
        intervals=intervals or background_intervals(deps.settings),
    )
    guard = CallerGuard(
        client=client,
        task_queue=queue,
        hosted=frozenset({WORKFLOW_BACKGROUND}),
        record=lambda key, run_id, data: deps.ledger.try_append(key, run_id, "caller.refused", data),
        guarded=lambda t: t in BACKGROUND_JOBS.values(),
    )
    return Worker(
        client,
        task_queue=queue,
        workflows=[BackgroundWorkflow],
        activities=passes.activities(),
        interceptors=[guard],
        workflow_runner=workflow_runner(),
        max_concurrent_activities=len(BACKGROUND_JOBS),
        graceful_shutdown_timeout=timedelta(seconds=deps.settings.drain_seconds),
    )


def build_activities(deps: Deps) -> list[Callable[..., Any]]:
    """Every activity a lockgate worker hosts: gate, run identity, audit, planner, one per tool."""
    governance = build_governance(deps)
    tools = build_tools(deps, governance)
    planner = LLMPlannerActivities(
        agents=deps.agents,
        vault=deps.vault,
        bundle=deps.current_bundle,
        policy_dir=str(deps.settings.policy_dir),
        ledger=deps.ledger,
    )
    approvals = build_approvals(deps)
    return [
        approvals.verify,
        approvals.verify_halt,
        governance.evaluate,
        governance.open_run,
        governance.close_run,
        governance.seal,
        governance.resume,
        governance.record,
        planner.plan,
        *tools.activities(),
    ]


def build_worker(
    client: Client,
    deps: Deps,
    *,
    task_queue: str | None = None,
    max_concurrent: int = 64,
    extra_workflows: Sequence[type] = (),
    max_cached_workflows: int | None = None,
    services: bool = False,
) -> Worker:
    """A worker with `LockgatePlugin` (services off by default: tests run the reaper themselves)."""
    plugin = LockgatePlugin(
        deps=deps, services=services, max_concurrent=max_concurrent, max_cached_workflows=max_cached_workflows
    )
    return Worker(
        client,
        task_queue=task_queue or deps.settings.task_queue,
        workflows=list(extra_workflows),
        plugins=[plugin],
        # Drain: on shutdown (SIGTERM) polling stops at once and running activities (a tool holding
        # its lease) get this long to finish, revoke and record before they are cancelled.
        graceful_shutdown_timeout=timedelta(seconds=deps.settings.drain_seconds),
    )


def connect_config(settings: Settings) -> dict[str, Any]:
    """Client.connect arguments: temporalio's environment configuration (TEMPORAL_ADDRESS,
    TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE, the TOML config file),
    with lockgate's own settings on top."""
    try:
        config: dict[str, Any] = dict(ClientConfig.load_client_connect_config())
    except Exception as err:
        raise UserError(f"Temporal environment configuration: {err}") from err
    if settings.temporal_address:
        config["target_host"] = settings.temporal_address
    config.setdefault("target_host", "localhost:7233")
    if settings.namespace:
        config["namespace"] = settings.namespace
    return config


def metrics_runtime(address: str) -> Runtime:
    """A Temporal runtime that serves Prometheus metrics on `address` (host:port): the SDK's and
    lockgate's own (lockgate/metrics.py)."""
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))


async def connect(
    settings: Settings,
    vault: VaultBroker | None = None,
    plugins: Sequence[Plugin] = (),
    runtime: Runtime | None = None,
) -> Client:
    """A client with `data_converter(settings, vault)` (pass the worker's broker in a worker) and
    temporalio's environment configuration."""
    converter = data_converter(settings, vault)
    config = connect_config(settings)
    target = config.pop("target_host")
    if runtime is not None:
        config["runtime"] = runtime
    try:
        return await Client.connect(target, data_converter=converter, plugins=plugins, **config)
    except Exception as err:
        raise UserError(f"cannot reach Temporal at {target}: {err}") from err


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    problems = production_problems(settings)
    if problems:
        raise UserError("production mode refuses: " + "; ".join(problems))
    deps = build_deps(settings)
    tracer_provider = setup_tracing(settings)  # before the client: its interceptor uses it
    runtime = metrics_runtime(settings.metrics_address) if settings.metrics_address else None
    client = await connect(settings, deps.vault, runtime=runtime)
    stop = stop or asyncio.Event()
    gauges = None
    if runtime is not None and settings.metrics_interval > 0:
        secrets = [t.secret for t in deps.agents.tools() if t.secret]
        gauges = asyncio.create_task(
            StateGauges(runtime.metric_meter, client, deps.vault, secrets).run(settings.metrics_interval, stop)
        )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    probes = Probes(deps.vault, deps.ledger) if settings.health_address else None
    if probes is not None and settings.health_address:
        await probes.serve(settings.health_address)  # live at once; ready once the worker polls
    log.info(
        "worker started: task_queue=%s bundle=%s policies=%d",
        settings.task_queue,
        deps.bundle.hash[:12],
        len(deps.bundle.statements),
    )

    def make_worker() -> Worker:
        worker = build_worker(client, deps, services=True)
        if probes is not None:
            probes.worker = worker
        return worker

    def standing_by() -> None:
        if probes is not None:
            probes.worker = None  # not ready (not polling), still live

    async def drain() -> None:
        await stop.wait()
        if probes is not None:
            probes.draining = True  # not ready from now on: the load balancer sends no more

    draining = asyncio.create_task(drain())
    try:
        # Polls only while Vault and the ledger answer (lockgate/standby.py): a host cut off from
        # either stands by and leaves the work to the others.
        await standby.serve(make_worker, dependency_checks(deps), stop, on_standby=standing_by)
    finally:
        draining.cancel()
        if probes is not None:
            await probes.close()
        if gauges is not None:
            gauges.cancel()
        if tracer_provider is not None:
            await asyncio.to_thread(tracer_provider.shutdown)  # the last spans go out
    log.info("worker stopped")


def dependency_checks(deps: Deps) -> list[standby.Check]:
    """What a worker cannot work without: its Vault token (and Vault), the ledger."""

    def vault() -> None:
        deps.vault.client.auth.token.lookup_self()  # the broker's current client (it re-logs in)

    def ledger() -> None:
        with deps.ledger.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    return [standby.Check("Vault", vault), standby.Check("ledger", ledger)]


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    # `kill -USR1 <pid>` dumps every thread's stack to stderr: for a worker that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        settings = load_settings()
    except UserError as err:  # a malformed setting: one line, not a traceback
        print(f"lockgate worker: {err}", file=sys.stderr)
        return 2
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
