"""`lockgate replay`: prove the recorded runs are what the current code and the recorded policies say.

Two checks per run:
1. Temporal's Replayer re-runs the workflow code against the recorded history; any nondeterminism
   (code that would now take another path) is a failure.
2. Every recorded gate decision is evaluated again, from the exact request it recorded, against the
   policy bundle it recorded by hash (rebuilt from a recorded copy, which must hash the same); a
   different outcome, gate or set of determining policies is a failure.

Histories come from the server, from the archive once the server no longer has them, or from files
(`--history`): an evidence bundle, or plain history JSON as the Temporal UI and CLI export it. A file
needs no server at all: decisions are then re-checked from the bundle's proven ledger entries, or,
for a plain history, from the requests and decisions the history itself carries (each tool
activity's input is its gate request, its result the decision).

`--all` streams histories to one replay process per core.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHistory

from lockgate.activities.ledger import Ledger
from lockgate.errors import PolicyError, UserError
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.bundles import rebuild
from lockgate.gates.engine import evaluate, tool_entities
from lockgate.models import Decision, GateRequest, ToolInvocation, ToolOutcome
from lockgate.plugin import workflow_runner
from lockgate.spec import AgentRegistry

__all__ = [
    "PolicySource",
    "ReplayReport",
    "history_decisions",
    "recheck",
    "recheck_decisions",
    "replay",
    "replay_files",
    "workflow_type_of",
]


@dataclass
class ReplayReport:
    run_id: str
    histories: int = 0
    events: int = 0
    decisions: int = 0
    problems: list[str] = field(default_factory=list)
    source: str = "server"
    # Why this run was not replayed (a workflow type no loaded declaration replays): not a mismatch,
    # and never silent.
    skipped: str | None = None
    workflow_type: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "ok": self.ok,
            "skipped": self.skipped,
            "workflow_type": self.workflow_type,
            "histories": self.histories,
            "events": self.events,
            "decisions": self.decisions,
            "source": self.source,
            "problems": self.problems,
        }


class PolicySource:
    """Policy bundles by hash, from recorded copies: a bundle file's, the ledger's, or the current
    policy directory's (used only when it hashes the same)."""

    def __init__(
        self,
        agents: AgentRegistry,
        *,
        ledger: Ledger | None = None,
        contents: dict[str, Any] | None = None,
        current: PolicyBundle | None = None,
    ) -> None:
        self._agents, self._ledger, self._contents, self._current = agents, ledger, contents or {}, current
        self._cache: dict[str, PolicyBundle | str] = {}

    def get(self, bundle_hash: str) -> PolicyBundle | str:
        """The bundle recorded under this hash, or a string saying why it cannot be had."""
        if bundle_hash not in self._cache:
            self._cache[bundle_hash] = self._load(bundle_hash)
        return self._cache[bundle_hash]

    def _load(self, bundle_hash: str) -> PolicyBundle | str:
        if self._current is not None and self._current.hash == bundle_hash:
            return self._current.with_entities(tool_entities(self._agents.agents()))
        content = self._contents.get(bundle_hash)
        if content is None and self._ledger is not None:
            content = self._ledger.bundle(bundle_hash)
        if content is None:
            return f"bundle {bundle_hash[:12]} is not recorded anywhere this replay can read"
        try:
            # A team's bundle rebuilds in its namespace (gates/bundles.py).
            bundle = rebuild(content)
        except PolicyError as err:
            return f"bundle {bundle_hash[:12]} no longer parses: {err}"
        if bundle.hash != bundle_hash:
            return f"bundle {bundle_hash[:12]}'s recorded content hashes to {bundle.hash[:12]}"
        return bundle.with_entities(tool_entities(self._agents.agents()))


# Old name, kept for callers.
_Bundles = PolicySource


def recheck(
    decisions: Iterable[tuple[dict[str, Any], str]], agents: AgentRegistry, bundles: PolicySource
) -> tuple[int, list[str]]:
    """Re-evaluates recorded decisions (decision data, time decided); returns (checked, problems)."""
    problems: list[str] = []
    checked = 0
    for data, at in decisions:
        checked += 1
        where = f"decision {data.get('decision_id')}"
        if "request" not in data:
            problems.append(f"{where}: no recorded request to re-check")
            continue
        bundle = bundles.get(data["bundle_hash"])
        if isinstance(bundle, str):
            problems.append(f"{where}: {bundle}")
            continue
        request = GateRequest.model_validate(data["request"])
        again = evaluate(bundle, agents.get(request.agent), request, now=datetime.fromisoformat(at), lookup=agents.get)
        recorded = (data["outcome"], data["gate"], tuple(data["policy_ids"]))
        now = (again.outcome, again.gate, again.policy_ids)
        if recorded != now:
            problems.append(
                f"{where}: recorded {recorded[0]} by {recorded[1]} {list(recorded[2])}, "
                f"re-evaluated {now[0]} by {now[1]} {list(now[2])}"
            )
    return checked, problems


def _ledger_decisions(entries: Iterable[Any]) -> Iterable[tuple[dict[str, Any], str]]:
    for e in entries:
        kind, raw, at = (e["kind"], e["data"], e["at"]) if isinstance(e, dict) else (e.kind, e.data, e.at)
        if kind == "decision":
            yield json.loads(raw), at


def recheck_decisions(
    ledger: Ledger, agents: AgentRegistry, run_id: str, bundles: PolicySource | None = None
) -> tuple[int, list[str]]:
    """Re-checks every decision the ledger recorded for a run."""
    bundles = bundles or PolicySource(agents, ledger=ledger)
    return recheck(_ledger_decisions(ledger.entries(run_id)), agents, bundles)


def history_decisions(
    history: WorkflowHistory, converter: Any, unreadable: list[str] | None = None
) -> list[tuple[dict[str, Any], str]]:
    """The gate decisions a history carries itself: each tool activity's input is the gate request,
    its result holds the decision the activity's gate made (attempt and kill switch as it saw them).
    Decisions that cannot be decoded are listed in `unreadable` (a replay reports them)."""
    if unreadable is None:
        unreadable = []
    from temporalio.api.enums.v1 import EventType

    scheduled: dict[int, Any] = {}
    out = []
    pc = converter.payload_converter
    for ev in history.events:
        if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = ev.activity_task_scheduled_event_attributes
            if attrs.activity_type.name.startswith("tool."):
                scheduled[ev.event_id] = attrs.input.payloads
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attrs = ev.activity_task_completed_event_attributes
            payloads = scheduled.get(attrs.scheduled_event_id)
            if payloads is None or not attrs.result.payloads:
                continue
            try:
                (inv,) = pc.from_payloads(payloads, [ToolInvocation])
                (outcome,) = pc.from_payloads(attrs.result.payloads, [ToolOutcome])
            except Exception as err:  # noqa: BLE001 - e.g. encrypted payloads without their codec
                unreadable.append(f"event {ev.event_id}: recorded decision not readable ({type(err).__name__})")
                continue
            decision: Decision = outcome.decision
            request = inv.gate.model_copy(update={"decision_id": decision.decision_id})
            if decision.gate == "kill_switch":
                # The gate read the kill switch itself; it is the first gate, so only then was it set.
                request = request.model_copy(update={"state": request.state.model_copy(update={"frozen": True})})
            out.append(
                (
                    {
                        "decision_id": decision.decision_id,
                        "outcome": decision.outcome,
                        "gate": decision.gate,
                        "policy_ids": list(decision.policy_ids),
                        "bundle_hash": decision.bundle_hash,
                        "request": request.model_dump(mode="json"),
                    },
                    decision.at.isoformat(),
                )
            )
    return out


# -- the replayer ----------------------------------------------------------------------------------
def _replayable(agents: AgentRegistry) -> None:
    """A Replayer's workflows find their agents in the process-wide registry (a replay has no
    worker task queue bound): make `agents` the ones they find."""
    from lockgate.spec import registry

    if agents is not registry:
        registry.extend(agents.agents())


AGENT_TYPE = "lockgate.agent"


def _replayer(data_converter: Any) -> Any:
    from temporalio.worker import Replayer

    from lockgate.workflows.agent import AgentWorkflow

    return Replayer(workflows=[AgentWorkflow], data_converter=data_converter, workflow_runner=workflow_runner())


def _dropin_replayer(governance: Any, data_converter: Any) -> Any:
    """A Replayer for a governed app's own workflows: the framework plugins its `Governance`
    declares, lockgate's drop-in interceptor (each governed call is a `dropin.gate` decision in the
    history, replayed in place) and this replay's converter, keeping the framework's payload
    converter as a worker beside that framework does."""
    import dataclasses

    from temporalio.plugin import SimplePlugin
    from temporalio.worker import Replayer

    from lockgate.dropin.plugin import replay_interceptor
    from lockgate.plugin import _specialized

    def converter(existing: Any) -> Any:
        special = _specialized(existing)
        if special is None:
            return data_converter
        return dataclasses.replace(data_converter, payload_converter_class=special.payload_converter_class)

    ours = SimplePlugin(
        "lockgate.replay",
        data_converter=converter,
        workflow_runner=workflow_runner,
        interceptors=[replay_interceptor([governance])],
    )
    framework = list(governance.replay_plugins()) if governance.replay_plugins is not None else []
    return Replayer(workflows=governance.workflow_classes(), plugins=[*framework, ours])


def workflow_type_of(history: WorkflowHistory) -> str:
    if not history.events:
        return ""
    return history.events[0].workflow_execution_started_event_attributes.workflow_type.name


def _governed_types() -> dict[str, Any]:
    """Workflow type -> the `Governance` that declares it, from the loaded agent modules."""
    from lockgate.spec import declared_governances

    return {name: gov for gov in declared_governances() for name in gov.workflow_types()}


def skip_reason(type_name: str, governed: dict[str, Any]) -> str | None:
    """Why a history of this workflow type cannot be replayed here (None: it can)."""
    if type_name == AGENT_TYPE or type_name in governed:
        return None
    return (
        f"workflow type {type_name or '?'} is not lockgate's agent and no Governance loaded here declares it "
        "(add the app's module to LOCKGATE_AGENT_MODULES, with workflows=... and replay_plugins=... "
        "on its Governance)"
    )


async def _replay_histories(data_converter: Any, histories: list[WorkflowHistory]) -> dict[str, str]:
    """Replays histories in this process (each with the replayer of its workflow type); returns
    failures by Temporal run id."""
    governed = _governed_types()
    groups: dict[str, list[WorkflowHistory]] = {}
    for history in histories:
        groups.setdefault(workflow_type_of(history), []).append(history)
    failures: dict[str, str] = {}
    for type_name, group in groups.items():

        async def each(items: list[WorkflowHistory] = group) -> AsyncIterator[WorkflowHistory]:
            for history in items:
                yield history

        if type_name in governed:
            replayer = _dropin_replayer(governed[type_name], data_converter)
        else:
            replayer = _replayer(data_converter)
        results = await replayer.replay_workflows(each(), raise_on_replay_failure=False)
        failures.update({run_id: str(failure) for run_id, failure in results.replay_failures.items()})
    return failures


def _pool_init(agent_modules: str) -> None:
    from lockgate.spec import load_agent_modules

    load_agent_modules(agent_modules)


def _pool_replay(items: list[tuple[str, bytes]]) -> dict[str, str]:
    """In a replay process: replays serialized histories, returns failures by Temporal run id."""
    from temporalio.api.history.v1 import History

    from lockgate.worker import DATA_CONVERTER

    histories = []
    for workflow_id, raw in items:
        proto = History()
        proto.ParseFromString(raw)
        histories.append(WorkflowHistory(workflow_id, list(proto.events)))
    return asyncio.run(_replay_histories(DATA_CONVERTER, histories))


class _Pool:
    """Histories streamed to one replay process per core, in batches, with bounded memory."""

    BATCH_EVENTS = 20_000

    def __init__(self, processes: int) -> None:
        import multiprocessing

        # spawn: this process runs Temporal's native runtime threads, which fork would not carry.
        self._executor = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_pool_init,
            initargs=(os.environ.get("LOCKGATE_AGENT_MODULES", ""),),
        )
        self._limit = asyncio.Semaphore(processes * 2)
        self._batch: list[tuple[str, bytes]] = []
        self._events = 0
        self._tasks: list[asyncio.Task[dict[str, str]]] = []

    async def add(self, history: WorkflowHistory) -> None:
        from temporalio.api.history.v1 import History

        self._batch.append((history.workflow_id, History(events=history.events).SerializeToString()))
        self._events += len(history.events)
        if self._events >= self.BATCH_EVENTS:
            await self._flush()

    async def _flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._events = self._batch, [], 0
        await self._limit.acquire()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, _pool_replay, batch)

        async def done() -> dict[str, str]:
            try:
                return await future
            finally:
                self._limit.release()

        self._tasks.append(asyncio.ensure_future(done()))

    async def results(self) -> dict[str, str]:
        await self._flush()
        failures: dict[str, str] = {}
        try:
            for part in await asyncio.gather(*self._tasks):
                failures.update(part)
        finally:
            self._executor.shutdown(wait=True)
        return failures


class _ByType:
    """lockgate's agent histories to `agent` (a pool or one local replayer), each governed app's
    kept and replayed by a replayer of its own workflows, one app after another."""

    def __init__(self, agent: _Pool | _Local, data_converter: Any, governed: dict[str, Any]) -> None:
        self._agent, self._converter, self._governed = agent, data_converter, governed
        self._apps: dict[str, list[WorkflowHistory]] = {}

    async def add(self, history: WorkflowHistory) -> None:
        type_name = workflow_type_of(history)
        if type_name not in self._governed:
            await self._agent.add(history)
            return
        self._apps.setdefault(type_name, []).append(history)

    async def results(self) -> dict[str, str]:
        failures = await self._agent.results()
        # One app at a time: a framework's plugin (OpenAI Agents') installs process-wide overrides
        # (its runner, its model provider) for the duration of a replay, so two apps' replays
        # interleaved in one process ran one app's workflows without its overrides.
        for type_name, histories in self._apps.items():

            async def each(items: list[WorkflowHistory] = histories) -> AsyncIterator[WorkflowHistory]:
                for history in items:
                    yield history

            replayer = _dropin_replayer(self._governed[type_name], self._converter)
            results = await replayer.replay_workflows(each(), raise_on_replay_failure=False)
            failures.update({run_id: str(failure) for run_id, failure in results.replay_failures.items()})
        return failures


class _Local:
    """One in-process Replayer fed as histories arrive: fetching the next overlaps replaying this."""

    def __init__(self, data_converter: Any, replayer: Any = None) -> None:
        self._queue: asyncio.Queue[WorkflowHistory | None] = asyncio.Queue()

        async def each() -> AsyncIterator[WorkflowHistory]:
            while (history := await self._queue.get()) is not None:
                yield history

        self._task = asyncio.ensure_future(
            (replayer or _replayer(data_converter)).replay_workflows(each(), raise_on_replay_failure=False)
        )

    async def add(self, history: WorkflowHistory) -> None:
        await self._queue.put(history)

    async def results(self) -> dict[str, str]:
        await self._queue.put(None)
        results = await self._task
        return {run_id: str(failure) for run_id, failure in results.replay_failures.items()}


async def replay(
    client: Client,
    ledger: Ledger,
    agents: AgentRegistry,
    run_ids: list[str] | None,
    data_converter: Any,
    *,
    archive: Any = None,
    processes: int | None = None,
) -> list[ReplayReport]:
    """Replays the given runs (every history of each id, continue-as-new chains included), or all:
    from the server, or from the archive for runs the server no longer has."""
    from lockgate.activities.archive import run_histories

    _replayable(agents)
    bundles = PolicySource(agents, ledger=ledger)
    reports: dict[str, ReplayReport] = {}
    owner: dict[str, str] = {}  # Temporal run id -> run id
    workers = processes if processes is not None else ((os.cpu_count() or 1) if run_ids is None else 1)
    # Worker processes replay with the plain converter: encrypted histories replay here, with this
    # process's codec (and Vault identity), one at a time.
    parallel = workers > 1 and getattr(data_converter, "payload_codec", None) is None
    governed = _governed_types()
    replayer = _ByType(_Pool(workers) if parallel else _Local(data_converter), data_converter, governed)
    # Each run's decisions are re-checked (in a thread) while its histories replay.
    rechecks: dict[str, asyncio.Future[tuple[int, list[str]]]] = {}

    def report_of(run_id: str) -> ReplayReport:
        if run_id not in reports:
            reports[run_id] = ReplayReport(run_id)
            rechecks[run_id] = asyncio.ensure_future(
                asyncio.to_thread(recheck_decisions, ledger, agents, run_id, bundles)
            )
        return reports[run_id]

    for run_id in run_ids or []:
        report_of(run_id)

    async def take(run_id: str, history: WorkflowHistory, source: str) -> None:
        report = report_of(run_id)
        report.workflow_type = workflow_type_of(history)
        report.skipped = skip_reason(report.workflow_type, governed)
        if report.skipped is not None:
            return
        report.histories += 1
        report.events += len(history.events)
        report.source = source
        owner[history.run_id] = run_id
        await replayer.add(history)

    try:
        if run_ids is None:
            # Streamed: each history goes to a replayer as soon as it is fetched.
            # Every governed run: lockgate's own agents, and the apps' workflows that made a
            # governed call (the drop-in governor sets LockgateAgent on the first one).
            query = f'WorkflowType = "{AGENT_TYPE}" OR LockgateAgent IS NOT NULL'
            async for wf in client.list_workflows(query):
                if wf.workflow_type != AGENT_TYPE and skip_reason(wf.workflow_type, governed) is not None:
                    report = report_of(wf.id)
                    report.workflow_type = wf.workflow_type
                    report.skipped = skip_reason(wf.workflow_type, governed)
                    continue  # not fetched: nothing here could replay it
                history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
                await take(wf.id, history, "server")
            targets = list(archive.archived_runs()) if archive is not None else []
        else:
            targets = list(run_ids)
        for run_id in targets:
            if run_ids is None and run_id in reports:
                continue  # the server still has it
            server = [] if run_ids is None else await run_histories(client, run_id)
            for history, _closed in server:
                await take(run_id, history, "server")
            if not server and archive is not None:
                archived, problems = await asyncio.to_thread(archive.load, run_id)
                for item in archived:
                    await take(run_id, item.history, "archive (the server no longer has it)")
                if problems:
                    report_of(run_id).problems += problems
    finally:
        failures = await replayer.results()
    for temporal_run, failure in failures.items():
        run_id = owner.get(temporal_run, temporal_run)
        report_of(run_id).problems.append(f"history {temporal_run}: replay failed: {failure}")
    for run_id, report in reports.items():
        if report.skipped is not None:
            rechecks[run_id].cancel()
            continue
        if report.histories == 0:
            report.problems.append("no workflow history found for this run id (server or archive)")
        report.decisions, problems = await rechecks[run_id]
        report.problems += problems
    return sorted(reports.values(), key=lambda r: r.run_id)


# -- files ---------------------------------------------------------------------------------------
def _workflow_id(doc: dict[str, Any], path: str, converter: Any) -> str:
    """A plain history JSON does not name its workflow: lockgate's first activity input does."""
    history = WorkflowHistory.from_json("unknown", doc)
    for ev in history.events:
        attrs = ev.activity_task_scheduled_event_attributes
        if ev.HasField("activity_task_scheduled_event_attributes") and attrs.input.payloads:
            try:
                (first,) = converter.payload_converter.from_payloads(attrs.input.payloads[:1])
            except Exception:  # noqa: BLE001, S112 - not one of ours: try the next
                continue
            if isinstance(first, dict) and first.get("run_id"):
                return str(first["run_id"])
    return Path(path).name.split(".")[0]


def _converter_for(
    path: str, doc: dict[str, Any], histories: list[WorkflowHistory], data_converter: Any, auditor_key: Any
) -> Any:
    """The converter that reads these histories offline: as given when nothing in them is
    encrypted (or it can ask Vault itself), else one holding the data keys sealed in the bundle
    for `auditor_key`. A history nothing here can decrypt is bad input (UserError: one line, exit
    2), never a replay mismatch: the history may be perfectly sound."""
    import dataclasses

    from temporalio.converter import DefaultFailureConverterWithEncodedAttributes

    from lockgate.activities.codec import OfflineTransit, TransitCodec, encrypted_data_keys

    if getattr(data_converter, "payload_codec", None) is not None:
        return data_converter
    needed = set()
    for h in histories:
        needed |= encrypted_data_keys(h.events)
    if not needed:
        return data_converter
    names = ", ".join(sorted({name for name, _ in needed}))
    if "payload_keys" not in doc:
        how = (
            "export the bundle with `lockgate audit RUN --export FILE --auditor-key AUDITOR.pub` and replay it "
            "with --key AUDITOR_KEY"
            if doc.get("schema")
            else "export it decoded (temporal workflow show ... --codec-endpoint of `lockgate codec-server`) "
            "or replay the run's evidence bundle with --key"
        )
        raise UserError(f"{path}: the history's payloads are encrypted (Vault Transit key {names}); {how}")
    if auditor_key is None:
        raise UserError(
            f"{path}: the history's payloads are encrypted (Vault Transit key {names}) and the bundle carries "
            f"their keys sealed for auditor key {doc['payload_keys'].get('recipient')}: pass --key AUDITOR_KEY"
        )
    from lockgate.auditkeys import open_payload_keys

    keys = open_payload_keys(doc["payload_keys"], auditor_key)
    lacking = {w for _, w in needed} - set(keys)
    if lacking:
        raise UserError(f"{path}: {len(lacking)} of the history's data keys are not in the bundle's payload keys")
    return dataclasses.replace(
        data_converter,
        payload_codec=TransitCodec(OfflineTransit(keys), None),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def replay_files(
    paths: list[str],
    agents: AgentRegistry,
    data_converter: Any,
    *,
    ledger: Ledger | None = None,
    current: PolicyBundle | None = None,
    trusted_keys: dict[int, str] | None = None,
    trust: str = "",
    auditor_key: Any = None,
) -> list[ReplayReport]:
    """Replays exported histories offline: evidence bundles, or plain history JSON (Temporal UI/CLI).

    Encrypted histories replay with `auditor_key` (an X25519 private key, lockgate.auditkeys) when
    the bundle carries their data keys sealed for it; otherwise UserError, one line.
    """
    _replayable(agents)
    from lockgate.export import SCHEMA, verify_bundle

    reports = []
    for path in paths:
        try:
            doc = json.loads(await asyncio.to_thread(Path(path).read_text))
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror or err}") from None
        except ValueError as err:
            raise UserError(f"{path} is not JSON: {err}") from None
        if not isinstance(doc, dict):
            raise UserError(f"{path}: neither an evidence bundle nor a history (a JSON object)")
        if doc.get("schema") == SCHEMA:
            run_id = str(doc.get("run_id"))
            report = ReplayReport(run_id, source=f"bundle {path}")
            check = verify_bundle(doc, trusted_keys=trusted_keys, trust=trust)
            report.problems += [f"bundle: {p}" for p in check.problems]
            histories = [WorkflowHistory.from_json(run_id, h["history"]) for h in doc.get("histories", [])]
            converter = _converter_for(path, doc, histories, data_converter, auditor_key)
            entries = [e for chain in doc.get("chains", []) for e in chain.get("entries", [])]
            decisions = list(_ledger_decisions(entries))
            bundles = PolicySource(agents, contents=doc.get("policy_bundles") or {})
        elif isinstance(doc.get("events"), list):
            run_id = _workflow_id(doc, path, data_converter)
            report = ReplayReport(run_id, source=f"history file {path}")
            try:
                histories = [WorkflowHistory.from_json(run_id, doc)]
            except Exception as err:  # noqa: BLE001 - a malformed export is bad input
                raise UserError(f"{path}: not a Temporal history: {err}") from None
            converter = _converter_for(path, doc, histories, data_converter, auditor_key)
            unreadable: list[str] = []
            decisions = history_decisions(histories[0], converter, unreadable)
            report.problems += unreadable
            bundles = PolicySource(agents, ledger=ledger, current=current)
        else:
            raise UserError(f"{path}: neither an evidence bundle ({SCHEMA}) nor a history (no events)")
        governed = _governed_types()
        reasons = {r for h in histories if (r := skip_reason(workflow_type_of(h), governed)) is not None}
        if reasons:
            report.problems += [f"not replayed: {r}" for r in sorted(reasons)]
            reports.append(report)
            continue
        for h in histories:
            report.histories += 1
            report.events += len(h.events)
        failures = await _replay_histories(converter, histories)
        report.problems += [f"history {r}: replay failed: {f}" for r, f in failures.items()]
        report.decisions, problems = recheck(decisions, agents, bundles)
        report.problems += problems
        reports.append(report)
    return reports
