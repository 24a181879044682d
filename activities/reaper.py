"""The reaper: cleanup for runs that ended without running their own (terminate, timeout, a crash
mid-compensation). Temporal runs no workflow code on terminate, so this runs outside any run.

A run's open identity is recorded in Vault (`lockgate/runs/<run id>`) from `run.open` until
`run.close`; a record whose workflow is no longer running is a run that did not clean up. For each,
the reaper runs the outstanding compensations (every step that was allowed to start a tool with a
compensation, minus the compensations already done: compensations are idempotent, so a step that
never happened costs a no-op), each gated and leased like any call, then revokes the run's identity
and with it every lease it still holds. Everything it does is in the ledger under the run's id.
Several reapers may run: a claim in the ledger lets one of them work on a run at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from lockgate.activities.governance import record_decision
from lockgate.activities.ledger import Ledger
from lockgate.activities.tools import ToolRunner
from lockgate.activities.vault import VaultBroker
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.engine import evaluate
from lockgate.models import GateRequest, GateState, ToolCall
from lockgate.spec import AgentRegistry

__all__ = [
    "CLAIM_SECONDS",
    "SWEEP",
    "ReapPass",
    "ReapReport",
    "Reaper",
    "outstanding_compensations",
    "workflow_state",
]

log = logging.getLogger("lockgate.reaper")

# A reaper that died mid-run leaves its claim; another may take over once the claim is this old.
CLAIM_SECONDS = 120
# A bounded pass (`reap_pass`) describes the runs Temporal's visibility says closed since its
# watermark, plus this many open runs in turn (the sweep catches what visibility cannot show: a run
# the server deleted or never had); every open run is described once every open/SWEEP passes.
SWEEP = 100
# Visibility is eventually consistent: a pass looks this far back before its watermark.
OVERLAP = timedelta(minutes=2)


@dataclass
class ReapReport:
    run_id: str
    workflow_status: str
    compensations: list[dict[str, Any]] = field(default_factory=list)
    identity_revoked: bool = False


def failed_compensations(events: list[dict[str, Any]], agents: AgentRegistry) -> list[dict[str, Any]]:
    """Compensations a closed run recorded as outstanding and nothing has done since, newest first.

    Only on proof: an entry counts when the run's own record shows its step allowed to run a
    forward tool whose declared compensation is the entry's tool. An entry for a step that never
    ran, or naming another tool than the forward tool's compensation, is no work for the reaper
    (whoever wrote it)."""
    run_id = events[0]["run_id"] if events else ""
    done = {str(e["compensates"]) for e in events if e["kind"] == "tool.completed" and e.get("compensates")}
    forward = {item["step"]: item for item in outstanding_compensations(events, agents)}
    out = []
    for e in sorted((e for e in events if e["kind"] == "compensation.outstanding"), key=lambda e: -int(e["step"])):
        key = f"{run_id}:{e['step']}"
        proven = forward.get(int(e["step"]))
        if key in done:
            continue
        if proven is None or proven["compensation"] != e["tool"]:
            log.error("run=%s step=%s: outstanding compensation without proof ignored", run_id, e["step"])
            continue
        out.append(
            {
                "step": int(e["step"]),
                "tool": proven["tool"],
                "compensation": e["tool"],
                "idempotency_key": key,
            }
        )
    return out


def backoff_due(events: list[dict[str, Any]], step: int, now: float) -> bool:
    """Retries of one failed compensation back off exponentially: 15 s, 30 s, ... up to an hour."""
    failures = [
        e for e in events if e["kind"] == "reaper.compensation" and int(e.get("step", -1)) == step and not e.get("ok")
    ]
    if not failures:
        return True
    last = datetime.fromisoformat(str(failures[-1]["at"])).timestamp()
    return now >= last + min(3600.0, 15.0 * 2 ** (len(failures) - 1))


def outstanding_compensations(events: list[dict[str, Any]], agents: AgentRegistry) -> list[dict[str, Any]]:
    """Steps allowed to run a tool that has a compensation, not yet compensated, newest first."""
    started: dict[int, dict[str, Any]] = {}
    compensated: set[str] = set()
    for e in events:
        if e["kind"] == "decision" and e.get("outcome") == "allow":
            tool = agents.tool(e["tool"])
            if tool is not None and tool.compensation:
                started[int(e["step"])] = {"step": int(e["step"]), "tool": e["tool"], "compensation": tool.compensation}
        elif e["kind"] == "tool.completed" and e.get("compensates"):
            compensated.add(str(e["compensates"]))
    run_id = events[0]["run_id"] if events else ""
    out = []
    for step in sorted(started, reverse=True):
        key = f"{run_id}:{step}"
        if key not in compensated:
            out.append({**started[step], "idempotency_key": key})
    return out


@dataclass
class ReapPass:
    """One bounded pass: what it reaped, its next watermark and sweep cursor, what it cost
    (`examined`: runs described in Temporal) and what it left (`backlog`: runs found needing the
    reaper that it did not finish, e.g. claimed by another reaper or failing)."""

    reports: list[ReapReport]
    since: str
    cursor: str
    examined: int
    backlog: int
    open_runs: int


# Closed runs whose recorded outstanding compensations outnumber those resolved since: index scans
# on (kind, run_id), never the whole ledger.
_UNRESOLVED = text(
    "SELECT o.run_id FROM (SELECT run_id, count(*) AS n FROM ledger WHERE kind = 'compensation.outstanding' "
    "GROUP BY run_id) o LEFT JOIN (SELECT run_id, count(*) AS n FROM ledger WHERE kind = 'compensation.resolved' "
    "GROUP BY run_id) r ON r.run_id = o.run_id WHERE coalesce(r.n, 0) < o.n"
)


class Reaper:
    def __init__(
        self,
        *,
        vault: VaultBroker,
        ledger: Ledger,
        agents: AgentRegistry,
        tools: ToolRunner,
        bundle: Any,
    ) -> None:
        self._vault = vault
        self._ledger = ledger
        self._agents = agents
        self._tools = tools
        self._bundle = bundle
        # Seconds since the epoch; tests move it forward instead of sleeping through backoffs.
        self.clock: Callable[[], float] = time.time

    def candidates(self) -> list[str]:
        """Runs whose identity is still open, and closed runs with compensations still outstanding."""
        return sorted(set(self._vault.open_runs()) | set(self._ledger.run_ids_with("compensation.outstanding")))

    def reap_run(self, run_id: str, status: str) -> ReapReport | None:
        events = [{"run_id": run_id, **e} for e in self._ledger.events(run_id)]
        opened = next((e for e in events if e["kind"] == "run.opened"), {})
        agent = self._agents.get(opened.get("agent", ""))
        record = self._vault.read_run(run_id)
        closed = next((e for e in events if e["kind"] == "run.closed"), {})
        if status == "completed" or closed.get("state") == "completed":
            # A run that completed compensates nothing: whatever its record says is outstanding
            # was not written by its own failure (Temporal's fact and its own close agree).
            if record is not None and self._claim(run_id):
                self._vault.close_run(run_id, opened.get("identity_accessor"))
            if any(e["kind"] == "compensation.outstanding" for e in events):
                self._record(
                    run_id,
                    "reaper.refused",
                    "completed",
                    {"action": "refused", "detail": "a completed run's outstanding compensations are not acted on"},
                )
            return None
        if record is None:
            # A closed run: only the compensations it recorded as outstanding, each when its backoff is due.
            now = self.clock()
            items = [i for i in failed_compensations(events, self._agents) if backoff_due(events, i["step"], now)]
            if not items or agent is None or not self._claim(run_id):
                return None
            return self._retry_outstanding(run_id, status, agent.name, items, opened)
        if not self._claim(run_id):
            return None
        report = ReapReport(run_id=run_id, workflow_status=status)
        self._record(
            run_id, "reaper.found", "found", {"action": "found", "detail": f"run is {status} with its identity open"}
        )
        if agent is not None:
            bundle: PolicyBundle = self._bundle(agent.name)
            for item in outstanding_compensations(events, self._agents):
                report.compensations.append(self._compensate(run_id, agent.name, bundle, item, opened))
        report.identity_revoked = self._vault.close_run(run_id, opened.get("identity_accessor"))
        self._record(
            run_id,
            "reaper.revoked",
            "revoked",
            {
                "action": "identity revoked",
                "identity_accessor": opened.get("identity_accessor"),
                "detail": "run identity and every lease it issued",
            },
        )
        self._ledger.try_append(
            f"run.closed:{run_id}",
            run_id,
            "run.closed",
            {
                "state": status,
                "reason": "closed by the reaper",
                "identity_accessor": opened.get("identity_accessor"),
                "identity_revoked": True,
                "revoked_by_this_call": report.identity_revoked,
            },
        )
        failed = [c for c in report.compensations if not c.get("ok")]
        for c in failed:
            self._ledger.try_append(
                f"compensation.outstanding:{run_id}:{c['step']}",
                run_id,
                "compensation.outstanding",
                {"step": c["step"], "tool": c["tool"], "args": {"idempotency_key": f"{run_id}:{c['step']}"}},
            )
        self._ledger.seal()
        log.warning("reaped run=%s status=%s compensations=%d", run_id, status, len(report.compensations))
        return report

    def _retry_outstanding(
        self, run_id: str, status: str, agent: str, items: list[dict[str, Any]], opened: dict[str, Any]
    ) -> ReapReport:
        """Runs outstanding compensations of a closed run under a fresh, short-lived identity of the run."""
        spec = self._agents.get(agent)
        assert spec is not None
        report = ReapReport(run_id=run_id, workflow_status=status)
        origin = str(opened.get("origin_run_id") or "")
        identity = self._vault.open_run(run_id, agent, spec.vault_policy, 600, origin)
        try:
            bundle: PolicyBundle = self._bundle(agent)
            for item in items:
                report.compensations.append(self._compensate(run_id, agent, bundle, item, opened))
        finally:
            self._vault.close_run(run_id, identity.accessor, origin)
        for c in report.compensations:
            if c.get("ok"):
                self._record(run_id, "compensation.resolved", str(c["step"]), {"step": c["step"], "tool": c["tool"]})
            else:
                log.error(
                    "COMPENSATION STILL OUTSTANDING run=%s step=%s tool=%s: %s",
                    run_id,
                    c["step"],
                    c["tool"],
                    c.get("error"),
                    extra={"run_id": run_id, "step": c["step"], "tool": c["tool"]},
                )
        return report

    def _compensate(
        self, run_id: str, agent: str, bundle: PolicyBundle, item: dict[str, Any], opened: dict[str, Any]
    ) -> dict[str, Any]:
        args = {"idempotency_key": item["idempotency_key"]}
        step = 1000 + int(item["step"])  # reaper steps sit apart from the run's own
        request = GateRequest(
            decision_id=f"{run_id}/reaper/{item['step']}",
            run_id=run_id,
            agent=agent,
            initiator="lockgate-reaper",
            step=step,
            call=ToolCall(tool=item["compensation"], args=args, rationale=f"reaper compensates step {item['step']}"),
            state=GateState(),
            compensation=True,
        )
        decision = evaluate(bundle, self._agents.get(agent), request, now=datetime.now(UTC))
        record_decision(self._ledger, decision, request, "reaper compensation")
        if decision.outcome != "allow":
            result = {
                "step": item["step"],
                "tool": item["compensation"],
                "ok": False,
                "error": f"denied: {'; '.join(decision.reasons)}",
            }
        else:
            try:
                outcome = self._tools.run_direct(
                    item["compensation"],
                    run_id=run_id,
                    step=step,
                    request=request,
                    decision=decision,
                    idempotency_key=f"{run_id}:reaper:{item['step']}",
                    compensates=item["idempotency_key"],
                )
                result = {"step": item["step"], "tool": item["compensation"], "ok": True, "summary": outcome.summary}
            except Exception as err:  # noqa: BLE001 - record it, carry on with the others
                result = {"step": item["step"], "tool": item["compensation"], "ok": False, "error": str(err)}
        self._record(
            run_id,
            "reaper.compensation",
            f"{item['step']}:{time.time_ns()}",
            {"action": "compensation", "detail": json.dumps(result, sort_keys=True), **result},
        )
        return result

    def _claim(self, run_id: str) -> bool:
        bucket = int(self.clock() // CLAIM_SECONDS)
        return self._ledger.try_append(
            f"reaper.claim:{run_id}:{bucket}", run_id, "reaper.claim", {"action": "claim", "detail": f"bucket {bucket}"}
        )

    def _record(self, run_id: str, kind: str, key: str, data: dict[str, Any]) -> None:
        self._ledger.try_append(f"{kind}:{run_id}:{key}", run_id, kind, data)

    def unresolved(self) -> list[str]:
        """Runs with outstanding compensations not all resolved (candidates only: `reap_run` acts
        on the authenticated record alone)."""
        with self._ledger.reader.connect() as conn:
            return sorted(str(r[0]) for r in conn.execute(_UNRESOLVED))

    async def reap_pass(self, client: Client, since: str | None, cursor: str, *, sweep: int = SWEEP) -> ReapPass:
        """One bounded pass (the cluster's background reaper). It lists the open run identities
        (one Vault LIST) and describes in Temporal only: those Temporal's visibility says closed
        since `since`, the next `sweep` open runs after `cursor`, and the runs with unresolved
        compensations. Its cost is the runs closed per interval plus `sweep`, not the open runs."""
        started = datetime.now(UTC)
        open_runs = sorted(await asyncio.to_thread(self._vault.open_runs))
        targets: dict[str, None] = {}
        if since is not None:
            mark = (datetime.fromisoformat(since) - OVERLAP).isoformat()
            opened = set(open_runs)
            async for wf in client.list_workflows(f'ExecutionStatus != "Running" AND CloseTime > "{mark}"'):
                if wf.id in opened:
                    targets[wf.id] = None
        after = [r for r in open_runs if r > cursor]
        page = (after or open_runs)[:sweep]
        next_cursor = page[-1] if page and len(after) > len(page) else ""
        targets.update(dict.fromkeys(page))
        targets.update(dict.fromkeys(await asyncio.to_thread(self.unresolved)))
        reports, backlog = await self._reap_targets(client, list(targets))
        return ReapPass(reports, started.isoformat(), next_cursor, len(targets), backlog, len(open_runs))

    async def _reap_targets(self, client: Client, run_ids: list[str]) -> tuple[list[ReapReport], int]:
        reports: list[ReapReport] = []
        backlog = 0
        for run_id in run_ids:
            try:
                status = await workflow_state(client, run_id)
            except RPCError as err:
                log.warning("reaper: run=%s not described this pass: %s", run_id, err)
                backlog += 1
                continue
            if status == "running":
                continue
            try:
                report = await asyncio.to_thread(self.reap_run, run_id, status)
            except Exception:
                log.exception("reaper failed on run=%s", run_id)
                backlog += 1
                continue
            if report is not None:
                reports.append(report)
                if any(not c.get("ok") for c in report.compensations):
                    backlog += 1
        return reports, backlog

    async def reap_once(self, client: Client) -> list[ReapReport]:
        """One pass over every open run identity whose workflow is no longer running."""
        reports = []
        for run_id in await asyncio.to_thread(self.candidates):
            status = await workflow_state(client, run_id)
            if status == "running":
                continue
            try:
                report = await asyncio.to_thread(self.reap_run, run_id, status)
            except Exception:
                log.exception("reaper failed on run=%s", run_id)
                continue
            if report is not None:
                reports.append(report)
        return reports


async def workflow_state(client: Client, run_id: str) -> str:
    try:
        desc = await client.get_workflow_handle(run_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return "unknown"
        raise
    return _STATES.get(int(desc.status), "running") if desc.status is not None else "running"


_STATES: dict[int, str] = {
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING: "running",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED: "completed",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_FAILED: "failed",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_CANCELED: "halted",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TERMINATED: "terminated",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW: "running",
}
