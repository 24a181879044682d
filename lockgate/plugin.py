"""`LockgatePlugin`: lockgate as a Temporal plugin, beside any others (e.g. `PydanticAIPlugin`).

One object carries everything lockgate adds to a Client, a Worker or a Replayer: the data converter,
the sandbox passthrough, the agent workflow, the governed activities (gate, run identity, audit,
planner and one `tool.<name>` per declared tool), the interceptors, and the worker-side services
(policy hot reload, and the cluster's background jobs) that run as long as the worker does::

    client = await Client.connect("localhost:7233", plugins=[LockgatePlugin()])
    worker = Worker(client, task_queue="lockgate")  # the plugin reaches the worker via the client

A plugin given to a client only sets the data converter there; its worker half builds its
dependencies (Vault login, policy bundle, ledger) the first time a worker is configured.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import temporalio.worker
from temporalio.converter import DataConverter
from temporalio.plugin import SimplePlugin
from temporalio.worker import Replayer, ReplayerConfig, Worker, WorkerConfig
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from lockgate.config import Settings, load_settings
from lockgate.names import is_engine_activity
from lockgate.observability import tracing_interceptors
from lockgate.spec import Agent, AgentRegistry, bind_agents

if TYPE_CHECKING:
    from lockgate.dropin.spec import Governance
    from lockgate.identity import OperatorSession
    from lockgate.worker import Deps

__all__ = ["PASSTHROUGH_MODULES", "LockgatePlugin", "caller_guard", "workflow_runner"]

# Pure declarations and models the workflow reads: passed through so the sandbox does not
# re-import them on every run, and so the agent registry is the one the worker filled.
#
# lockgate's own workflow module too: the sandbox would otherwise execute it afresh for every run
# (and keep that copy of its code and classes for as long as the run is cached), which was most
# of what a governed run cost the worker above a plain one in CPU and memory. Its determinism is
# kept by construction instead (no I/O, clock, randomness or threads in workflows/: ruff bans
# them there, see workflows/ruff.toml) and checked by replaying every run the suite made.
PASSTHROUGH_MODULES = (
    "lockgate.workflows",
    "lockgate.models",
    "lockgate.spec",
    "lockgate.context",
    "lockgate.errors",
    "lockgate.dropin",  # drop-in governance keeps per-process state (the governors of running executions)
    "pydantic",
    "pydantic_core",
    # An OpenAI Agents workflow imports httpx lazily inside the sandbox (at the first replay of its
    # type in a process): httpx's transport stack is network code no workflow runs, and re-imported
    # in the sandbox it touches what the sandbox restricts at import (truststore calls
    # platform.system(), sniffio subclasses threading.local). The whole stack, not one module at a
    # time as each import order reveals the next.
    "httpx",
    "httpcore",
    "httpcore2",
    "h11",
    "h2",
    "hpack",
    "hyperframe",
    "anyio",
    "sniffio",
    "certifi",
    "idna",
    "truststore",
)


def _specialized(existing: DataConverter | None) -> DataConverter | None:
    """A converter another plugin installed for its framework (Pydantic AI's, OpenAI Agents'): its
    payload converter already handles pydantic models and also that framework's own types, so
    lockgate keeps it (adding its codec) rather than break that framework's payloads."""
    from temporalio.contrib.pydantic import PydanticPayloadConverter
    from temporalio.converter import DefaultPayloadConverter

    if existing is not None and existing.payload_converter_class not in (
        DefaultPayloadConverter,
        PydanticPayloadConverter,
    ):
        return existing
    return None


def workflow_runner(existing: temporalio.worker.WorkflowRunner | None = None) -> temporalio.worker.WorkflowRunner:
    """The sandboxed runner with lockgate's passthrough added (to `existing`, when given)."""
    if existing is None:
        return SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH_MODULES)
        )
    if isinstance(existing, SandboxedWorkflowRunner):
        return dataclasses.replace(
            existing, restrictions=existing.restrictions.with_passthrough_modules(*PASSTHROUGH_MODULES)
        )
    return existing  # an unsandboxed runner needs no passthrough


def caller_guard(config: WorkerConfig, deps: Deps, guarded: Callable[[str], bool]) -> temporalio.worker.Interceptor:
    """The worker's `CallerGuard`: its task queue and the workflow types it hosts (activities/callers.py)."""
    from temporalio.workflow import _Definition

    from lockgate.activities.callers import CallerGuard

    hosted = frozenset(
        d.name
        for d in (_Definition.from_class(w) for w in (config.get("workflows") or ()))
        if d is not None and d.name is not None
    )

    def record(key: str, run_id: str, data: dict[str, Any]) -> object:
        return deps.ledger.try_append(key, run_id, "caller.refused", data)

    client = config.get("client")
    if client is None:
        raise ValueError("a lockgate worker needs its client (Worker(client, ...))")
    return CallerGuard(
        client=client,
        task_queue=config.get("task_queue") or "",
        hosted=hosted,
        record=record,
        guarded=guarded,
    )


class LockgatePlugin(SimplePlugin):
    """Governs agent workflows on any Temporal Client and Worker.

    Args:
        settings: lockgate's configuration (default: from the environment and `.lockgate/dev.env`).
        agents: The agents this worker runs (default: `LOCKGATE_AGENT_MODULES` and the entry points
            of group `lockgate.agents`). A worker runs only these.
        deps: Ready dependencies (tests and embedders); built from `settings` when omitted.
        services: Run the worker-side services: the policy watcher, and (unless `LOCKGATE_BACKGROUND`
            is off) the cluster's background jobs (reaper, archiver, checkpointer: Temporal
            workflows, once per cluster, started here idempotently).
        max_concurrent: Activity slots (and threads: Vault, Postgres and the ledger are sync clients).
        max_cached_workflows: Sticky cache size (default `LOCKGATE_MAX_CACHED_WORKFLOWS`, else the
            worker's own setting: Temporal's default is 1,000).
        reap_interval: Seconds between the cluster's reaper passes (default `LOCKGATE_REAP_INTERVAL` or 15).
        govern: Existing apps to govern drop-in (`lockgate.dropin.Governance`): their Pydantic AI,
            OpenAI Agents or plain-activity tool calls are gated, leased, audited and compensated.
        start_as: Who signs the workflow starts this client makes (with `govern`): a person's
            session, or a function returning one (default: the logged-in person, `lockgate login`
            or `LOCKGATE_OPERATOR_TOKEN`). The worker takes the signer as the run's initiator.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        agents: Sequence[Agent] | AgentRegistry | None = None,
        deps: Deps | None = None,
        services: bool = True,
        max_concurrent: int = 64,
        max_cached_workflows: int | None = None,
        reap_interval: float | None = None,
        govern: Sequence[Governance] = (),
        start_as: OperatorSession | Callable[[], OperatorSession | None] | None = None,
    ) -> None:
        from lockgate.workflows.agent import AgentWorkflow

        self.settings = settings or (deps.settings if deps is not None else load_settings())
        self._agents = agents if agents is None or isinstance(agents, AgentRegistry) else AgentRegistry(agents)
        self._deps = deps
        self._services = services
        self._max_concurrent = max_concurrent
        self._max_cached = max_cached_workflows
        self._reap_interval = reap_interval
        self._workflow = AgentWorkflow
        self._govern = tuple(govern)
        interceptors: list[Any] = []
        if self._govern or start_as is not None:
            from lockgate.dropin.start import SignedStarts

            interceptors.append(SignedStarts(self._start_session(start_as)))
        super().__init__(
            "lockgate.LockgatePlugin",
            data_converter=self._converter,
            workflow_runner=workflow_runner,
            interceptors=interceptors,
        )

    def _start_session(
        self, start_as: OperatorSession | Callable[[], OperatorSession | None] | None
    ) -> Callable[[], OperatorSession | None]:
        if callable(start_as):
            return start_as
        if start_as is not None:
            return lambda: start_as
        settings = self.settings

        def logged_in() -> OperatorSession | None:
            from lockgate.errors import UserError
            from lockgate.identity import load_session

            try:
                return load_session(settings)
            except UserError:
                return None

        return logged_in

    def _converter(self, existing: DataConverter | None = None) -> DataConverter:
        """lockgate's converter (`lockgate.worker.data_converter`): payloads encrypted when a key is
        configured, with the worker's own AppRole identity when there is no operator token. Beside a
        framework plugin (Pydantic AI, OpenAI Agents) that framework's payload converter is kept."""
        from lockgate.worker import data_converter

        vault = self._deps.vault if self._deps is not None else None
        settings = self.settings
        if vault is None and settings.payload_key and not (settings.operator_token or settings.vault_token):
            vault = self.deps.vault
        converter = data_converter(settings, vault)
        special = _specialized(existing)
        if special is not None:
            converter = dataclasses.replace(converter, payload_converter_class=special.payload_converter_class)
        return converter

    @property
    def deps(self) -> Deps:
        """The worker-side dependencies, built on first use (Vault login, policies, ledger)."""
        if self._deps is None:
            from lockgate.worker import build_deps

            self._deps = build_deps(self.settings, self._agents)
            if self._govern:
                from lockgate.dropin.plugin import ensure_agents

                ensure_agents(self._deps, self._govern)
        return self._deps

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        config = super().configure_worker(config)
        if self._workflow in (config.get("workflows") or ()):
            return config  # given to both the client and the worker: configure once
        from lockgate.workflows.background import BackgroundWorkflow

        if BackgroundWorkflow in (config.get("workflows") or ()):
            return config  # the background jobs' worker (lockgate.worker.build_background_worker)
        from lockgate.worker import build_activities

        deps = self.deps
        if self._govern:
            from lockgate.dropin.plugin import ensure_agents

            # Before the tool activities are built: the governed apps' compensations are tools too.
            ensure_agents(deps, self._govern)
        bind_agents(config.get("task_queue") or "", deps.agents)
        config["workflows"] = [*(config.get("workflows") or ()), self._workflow]
        config["activities"] = [*(config.get("activities") or ()), *build_activities(deps)]
        config["interceptors"] = [*(config.get("interceptors") or ()), *tracing_interceptors(self.settings)]
        guarded: Callable[[str], bool] = is_engine_activity
        if self._govern:
            from lockgate.dropin.plugin import configure_dropin

            config, index = configure_dropin(config, deps, self._govern)
            guarded = lambda t: is_engine_activity(t) or index.governs(t)  # noqa: E731
        # Outermost: no lockgate activity runs for a caller that is not a run lockgate governs.
        config["interceptors"] = [caller_guard(config, deps, guarded), *(config.get("interceptors") or ())]
        if config.get("activity_executor") is None:
            config["activity_executor"] = ThreadPoolExecutor(
                self._max_concurrent, thread_name_prefix="lockgate-activity"
            )
            config["max_concurrent_activities"] = self._max_concurrent
            config["max_concurrent_local_activities"] = self._max_concurrent
        # Runs waiting for approval sit in the sticky cache until evicted; the cache bounds a
        # worker's memory however many runs wait (an evicted run replays when it wakes). Unless
        # told otherwise, the worker's own setting (Temporal's default: 1,000) stands.
        cached = self._max_cached
        if cached is None:
            cached = self.settings.max_cached_workflows
        if cached is not None:
            config["max_cached_workflows"] = cached
        return config

    def configure_replayer(self, config: ReplayerConfig) -> ReplayerConfig:
        config = super().configure_replayer(config)
        if self._workflow not in (config.get("workflows") or ()):
            config["workflows"] = [*(config.get("workflows") or ()), self._workflow]
            if self._govern:
                from lockgate.dropin.plugin import replay_interceptor

                config["interceptors"] = [*(config.get("interceptors") or ()), replay_interceptor(self._govern)]
        return config

    async def run_worker(self, worker: Worker, next: Callable[[Worker], Awaitable[None]]) -> None:
        from lockgate.workflows.background import BackgroundWorkflow

        if not self._services or BackgroundWorkflow in (worker.config().get("workflows") or ()):
            await next(worker)
            return
        from lockgate.activities.background import keep_background
        from lockgate.worker import background_intervals, build_background_worker, watch_policies

        deps = self.deps
        # Periodic checkpoints are the cluster's background job now: this process's checkpointer
        # only coalesces the seals of the runs it closes.
        deps.ledger.periodic_checkpoints = False
        stop = asyncio.Event()
        tasks = [asyncio.create_task(watch_policies(deps, stop))]
        jobs: Worker | None = None
        if deps.settings.background:
            # The reaper, the archiver and the checkpointer: Temporal workflows, once per cluster,
            # whose passes Temporal hands to one of the workers polling the background queue.
            intervals = background_intervals(deps.settings, self._reap_interval)
            jobs = build_background_worker(worker.client, deps, worker.task_queue, intervals)
            tasks.append(asyncio.create_task(jobs.run()))
            tasks.append(asyncio.create_task(keep_background(worker.client, worker.task_queue, intervals, stop)))
        try:
            await next(worker)
        finally:
            stop.set()
            if jobs is not None and jobs.is_running:
                await jobs.shutdown()
            await asyncio.gather(*tasks, return_exceptions=True)

    def replayer(self, **kwargs: Any) -> Replayer:
        """A Replayer with lockgate's workflow and converter (binds the agents for replay)."""
        from lockgate.spec import registry

        if self._agents is not None:
            registry.extend(self._agents.agents())
        return Replayer(workflows=[], plugins=[self], **kwargs)
