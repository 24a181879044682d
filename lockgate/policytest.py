"""Policy tests and what-if (`lockgate policy test`, `lockgate policy diff`).

`policy test DIR` runs the cases kept beside the policies, `DIR/*.tests.yaml` (or `.yml`, `.json`;
also in `DIR/tests/`). A file holds a list of cases (or `{"cases": [...]}`); a case is one gate request and what must come of it:

    - name: a second refund on the same order is denied
      agent: refund-agent
      tool: refunds.issue
      args: {order_id: A-1001, amount_cents: 500}
      history:                      # calls that ran earlier in the run: they make `context.chain`
        - {tool: refunds.issue, args: {order_id: A-1001, amount_cents: 500}}
      state: {tainted: false}       # optional run state (GateState fields: spent, approved_groups, ...)
      expect: {outcome: deny, policy_ids: [refunds.once-per-order]}   # also: gate, group, quorum

`policy diff CANDIDATE` evaluates every gate request the ledger recorded (each decision holds its
exact request, chain included) against the candidate bundle and lists the decisions that would change.
Both call the gate itself (`lockgate.gates.engine.evaluate`): what a test says is what a worker does.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lockgate.errors import UserError
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.engine import evaluate
from lockgate.models import Chain, Decision, GateRequest, GateState, Outcome, ToolCall
from lockgate.spec import AgentRegistry, describe_validation

__all__ = ["CaseResult", "Change", "DiffReport", "PolicyCase", "diff_decisions", "load_cases", "run_cases"]

# Case files beside the policies (or in DIR/tests/): refund-agent.tests.yaml next to refund-agent.cedar.
CASE_FILES = ("*.tests.json", "*.tests.yaml", "*.tests.yml")
# Cases are judged at a fixed instant, so a case gives the same answer on any day.
CASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


class Expectation(BaseModel):
    """What must come of a case: the outcome, and optionally its gate, deciding policies, group."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    outcome: Outcome
    policy_ids: tuple[str, ...] | None = None
    gate: str | None = None
    group: str | None = None
    quorum: int | None = None


class HistoryCall(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)


class PolicyCase(BaseModel):
    """One policy test: a gate request (agent, tool, args, the run's earlier calls and state)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    agent: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    history: tuple[HistoryCall, ...] = ()
    state: dict[str, Any] = Field(default_factory=dict)
    confidence: float = 1.0
    initiator: str = "tester"
    expect: Expectation
    where: str = ""


@dataclass(frozen=True)
class CaseResult:
    case: PolicyCase
    decision: Decision | None
    problems: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.problems


def load_cases(directory: Path) -> list[PolicyCase]:
    """Every case of the case files in `directory`; UserError (exit 2) naming the file for a malformed one."""
    files = sorted(
        {p for pattern in CASE_FILES for p in (*directory.glob(pattern), *(directory / "tests").glob(pattern))}
    )
    cases: list[PolicyCase] = []
    for path in files:
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise UserError(f"{path}: cannot read policy tests: {str(err).splitlines()[0]}") from None
        items = data.get("cases") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise UserError(f"{path}: expected a list of cases (or {{'cases': [...]}})")
        for i, item in enumerate(items):
            try:
                case = PolicyCase.model_validate({**item, "where": f"{path.name}#{i + 1}"})
            except (ValidationError, TypeError) as err:
                detail = describe_validation(err) if isinstance(err, ValidationError) else str(err)
                raise UserError(f"{path}: case {i + 1}: {detail}") from None
            cases.append(case)
    return cases


def _request(case: PolicyCase, agents: AgentRegistry) -> GateRequest:
    agent = agents.get(case.agent)
    chain = Chain()
    for call in case.history:
        tool = agent.tool(call.tool) if agent is not None else None
        if tool is None:
            raise ValueError(f"history names {call.tool!r}, not a tool of agent {case.agent!r}")
        chain = chain.after(tool.name, tool.resource_of(call.args), tool.data_class, tool.egress)
    state = GateState.model_validate({"steps_taken": len(case.history), **case.state, "chain": chain})
    return GateRequest(
        decision_id=f"test/{case.where}",
        run_id="policy-test",
        agent=case.agent,
        initiator=case.initiator,
        step=len(case.history) + 1,
        call=ToolCall(tool=case.tool, args=case.args, confidence=case.confidence),
        state=state,
        source="script",
    )


def run_cases(bundle: PolicyBundle, agents: AgentRegistry, cases: list[PolicyCase]) -> list[CaseResult]:
    """Each case through the gate; a result lists every way its decision differs from `expect`."""
    out: list[CaseResult] = []
    for case in cases:
        try:
            request = _request(case, agents)
        except (ValueError, ValidationError) as err:
            out.append(CaseResult(case, None, (f"bad case: {err}",)))
            continue
        d = evaluate(bundle, agents.get(case.agent), request, now=CASE_TIME, lookup=agents.get)
        want = case.expect
        problems = []
        if d.outcome != want.outcome:
            problems.append(f"outcome {d.outcome}, expected {want.outcome}")
        if want.policy_ids is not None and tuple(sorted(want.policy_ids)) != tuple(sorted(d.policy_ids)):
            problems.append(f"policies {list(d.policy_ids)}, expected {list(want.policy_ids)}")
        if want.gate is not None and d.gate != want.gate:
            problems.append(f"gate {d.gate}, expected {want.gate}")
        if want.group is not None and d.approver_group != want.group:
            problems.append(f"group {d.approver_group}, expected {want.group}")
        if want.quorum is not None and d.quorum != want.quorum:
            problems.append(f"quorum {d.quorum}, expected {want.quorum}")
        if problems:
            problems.append(f"reasons: {'; '.join(d.reasons)}")
        out.append(CaseResult(case, d, tuple(problems)))
    return out


@dataclass(frozen=True)
class Change:
    """A recorded decision that the candidate bundle would decide otherwise."""

    run_id: str
    decision_id: str
    step: int
    agent: str
    tool: str
    before: str
    after: str
    before_policies: tuple[str, ...]
    after_policies: tuple[str, ...]
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "decision_id": self.decision_id,
            "step": self.step,
            "agent": self.agent,
            "tool": self.tool,
            "before": self.before,
            "after": self.after,
            "before_policies": list(self.before_policies),
            "after_policies": list(self.after_policies),
            "reasons": list(self.reasons),
        }


@dataclass
class DiffReport:
    checked: int = 0
    skipped: int = 0
    changes: list[Change] = field(default_factory=list)

    def by_policy(self) -> dict[str, int]:
        """Changed decisions per policy behind the change: the policies that denied or escalated
        on either side (the permits of an allow only when nothing else differs)."""
        counts: Counter[str] = Counter()
        for c in self.changes:
            ids = set(c.before_policies if c.before != "allow" else ()) | set(
                c.after_policies if c.after != "allow" else ()
            )
            for pid in sorted(ids or set(c.before_policies) ^ set(c.after_policies)) or ["(no policy)"]:
                counts[pid] += 1
        return dict(sorted(counts.items()))

    def by_transition(self) -> dict[str, int]:
        return dict(sorted(Counter(f"{c.before} -> {c.after}" for c in self.changes).items()))


def _label(outcome: str, group: str | None) -> str:
    """An outcome as an operator reads it: `allow`, `deny`, `approval(finance)`."""
    return f"approval({group})" if outcome == "approval" else outcome


def diff_decisions(
    entries: list[tuple[str, datetime, dict[str, Any]]], candidate: PolicyBundle, agents: AgentRegistry
) -> DiffReport:
    """Re-evaluates recorded gate requests (run id, time, decision event) against `candidate`.

    Only what the policies decide is compared: outcome (with approver group) and deciding policy
    ids. A decision at the same instant it was made, from the same request, differs only because
    the bundle does."""
    report = DiffReport()
    for run_id, at, data in entries:
        raw = data.get("request")
        if raw is None:
            report.skipped += 1
            continue
        try:
            request = GateRequest.model_validate(raw)
        except ValidationError:
            report.skipped += 1
            continue
        # The recorded request is the one the gate evaluated: verified approvals are already in
        # `state.approved_groups` and a freeze in `state.frozen`.
        report.checked += 1
        again = evaluate(candidate, agents.get(request.agent), request, now=at, lookup=agents.get)
        before = _label(str(data.get("outcome")), data.get("approver_group"))
        after = _label(again.outcome, again.approver_group)
        old_ids = tuple(sorted(data.get("policy_ids") or ()))
        if before != after or (before != "allow" and old_ids != tuple(sorted(again.policy_ids))):
            report.changes.append(
                Change(
                    run_id=run_id,
                    decision_id=str(data.get("decision_id")),
                    step=int(data.get("step", request.step)),
                    agent=request.agent,
                    tool=request.call.tool,
                    before=before,
                    after=after,
                    before_policies=old_ids,
                    after_policies=tuple(sorted(again.policy_ids)),
                    reasons=again.reasons,
                )
            )
    return report
