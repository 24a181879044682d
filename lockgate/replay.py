"""`lockgate replay`: prove the recorded runs are what the current code and the recorded policies say.

Two checks per run:
1. Temporal's Replayer re-runs the workflow code against the recorded history; any nondeterminism
   (code that would now take another path) is a failure.
2. Every gate decision in the ledger is evaluated again, from the exact request it recorded, against
   the policy bundle it recorded by hash (rebuilt from the ledger's copy, which must hash the same);
   a different outcome, gate or set of determining policies is a failure.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from lockgate.activities.ledger import Ledger
from lockgate.errors import PolicyError
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.engine import evaluate, tool_entities
from lockgate.models import GateRequest
from lockgate.plugin import workflow_runner
from lockgate.spec import AgentRegistry

__all__ = ["ReplayReport", "recheck_decisions", "replay"]


@dataclass
class ReplayReport:
    run_id: str
    histories: int = 0
    events: int = 0
    decisions: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Bundles:
    def __init__(self, ledger: Ledger, agents: AgentRegistry) -> None:
        self._ledger, self._agents = ledger, agents
        self._cache: dict[str, PolicyBundle | str] = {}

    def get(self, bundle_hash: str) -> PolicyBundle | str:
        """The bundle recorded under this hash, or a string saying why it cannot be had."""
        if bundle_hash not in self._cache:
            content = self._ledger.bundle(bundle_hash)
            if content is None:
                self._cache[bundle_hash] = f"bundle {bundle_hash[:12]} is not in the ledger"
            else:
                try:
                    bundle = PolicyBundle.build(
                        content["policies"], schema_text=content["schema"], entities_json=content["entities"]
                    )
                except PolicyError as err:
                    self._cache[bundle_hash] = f"bundle {bundle_hash[:12]} no longer parses: {err}"
                else:
                    if bundle.hash != bundle_hash:
                        self._cache[bundle_hash] = (
                            f"bundle {bundle_hash[:12]}'s recorded content hashes to {bundle.hash[:12]}"
                        )
                    else:
                        self._cache[bundle_hash] = bundle.with_entities(tool_entities(self._agents.agents()))
        return self._cache[bundle_hash]


def recheck_decisions(
    ledger: Ledger, agents: AgentRegistry, run_id: str, bundles: _Bundles | None = None
) -> tuple[int, list[str]]:
    bundles = bundles or _Bundles(ledger, agents)
    problems: list[str] = []
    checked = 0
    for entry in ledger.entries(run_id):
        if entry.kind != "decision":
            continue
        data = json.loads(entry.data)
        checked += 1
        where = f"decision {data['decision_id']}"
        if "request" not in data:
            problems.append(f"{where}: no recorded request to re-check")
            continue
        bundle = bundles.get(data["bundle_hash"])
        if isinstance(bundle, str):
            problems.append(f"{where}: {bundle}")
            continue
        request = GateRequest.model_validate(data["request"])
        again = evaluate(
            bundle, agents.get(request.agent), request, now=datetime.fromisoformat(entry.at), lookup=agents.get
        )
        recorded = (data["outcome"], data["gate"], tuple(data["policy_ids"]))
        now = (again.outcome, again.gate, again.policy_ids)
        if recorded != now:
            problems.append(
                f"{where}: recorded {recorded[0]} by {recorded[1]} {list(recorded[2])}, "
                f"re-evaluated {now[0]} by {now[1]} {list(now[2])}"
            )
    return checked, problems


async def replay(
    client: Client, ledger: Ledger, agents: AgentRegistry, run_ids: list[str] | None, data_converter: Any
) -> list[ReplayReport]:
    """Replays the given runs (every run of each id, continue-as-new chains included), or all."""
    from lockgate.workflows.agent import AgentWorkflow

    replayer = Replayer(workflows=[AgentWorkflow], data_converter=data_converter, workflow_runner=workflow_runner())
    bundles = _Bundles(ledger, agents)
    if run_ids is None:
        query = 'WorkflowType = "lockgate.agent"'
    else:
        query = " OR ".join(f'WorkflowId = "{r}"' for r in run_ids)
    reports: dict[str, ReplayReport] = {r: ReplayReport(r) for r in run_ids or []}
    histories = []
    async for wf in client.list_workflows(query):
        report = reports.setdefault(wf.id, ReplayReport(wf.id))
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        report.histories += 1
        report.events += len(history.events)
        histories.append(history)

    # One replay worker for all of them (a worker per history costs more than most replays).
    async def each() -> AsyncIterator[WorkflowHistory]:
        for history in histories:
            yield history

    results = await replayer.replay_workflows(each(), raise_on_replay_failure=False)
    for run_id, failure in results.replay_failures.items():
        wf_id = next((h.workflow_id for h in histories if h.run_id == run_id), run_id)
        reports.setdefault(wf_id, ReplayReport(wf_id)).problems.append(f"history {run_id}: replay failed: {failure}")
    for run_id, report in reports.items():
        if report.histories == 0:
            report.problems.append("no workflow history found for this run id")
        report.decisions, problems = recheck_decisions(ledger, agents, run_id, bundles)
        report.problems += problems
    return sorted(reports.values(), key=lambda r: r.run_id)
