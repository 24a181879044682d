"""The nouns that cross boundaries: workflow history, activities, the ledger and the CLI.

Every model here may be written to Temporal history. None of them may ever hold a secret value: a
credential stays inside the activity that uses it, and only a `LeaseRef` (ids, ttl) leaves it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CHAIN_RESOURCES",
    "DELEGATE_TOOL",
    "MAX_ARGS_BYTES",
    "ApprovalAttempt",
    "ApprovalCheck",
    "ApprovalRequest",
    "ApprovalVerdict",
    "AuditEvent",
    "Chain",
    "Decision",
    "DelegateArgs",
    "GateRequest",
    "GateState",
    "HaltCheck",
    "LeaseRef",
    "Outcome",
    "ParentLink",
    "PlanProposal",
    "PlanRequest",
    "RunCarry",
    "RunClose",
    "RunIdentity",
    "RunInput",
    "RunOpen",
    "RunResult",
    "RunSeal",
    "RunState",
    "RunStatus",
    "SagaEntry",
    "StepRecord",
    "ToolCall",
    "ToolInvocation",
    "ToolOutcome",
    "approval_refusal",
    "args_digest",
    "canonical_json",
    "redact_args",
]

# Args above this size are refused before any gate runs (SCENARIOS 15).
MAX_ARGS_BYTES = 256 * 1024

Outcome = Literal["allow", "deny", "approval"]
RunState = Literal[
    "running",
    "awaiting_approval",
    "frozen",
    "compensating",
    "completed",
    "failed",
    "halted",
    "terminated",
]

_WIRE = ConfigDict(frozen=True, extra="forbid")


def canonical_json(value: Any) -> str:
    """The one JSON form that digests are taken of: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def args_digest(args: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a tool call's args (DESIGN.md "Decision record")."""
    return hashlib.sha256(canonical_json(args).encode()).hexdigest()


class ToolCall(BaseModel):
    """A planner's proposal: which tool, with what args, how sure."""

    model_config = _WIRE

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    confidence: float = 1.0
    rationale: str | None = None


class PlanRequest(BaseModel):
    """Input of the `planner.llm` activity."""

    model_config = _WIRE

    run_id: str
    agent: str
    input: dict[str, Any]
    done: tuple[dict[str, Any], ...]
    # The run read regulated data (itself, its parent or a sub-agent): the request is gated egress.
    tainted: bool = False


class PlanProposal(BaseModel):
    model_config = _WIRE

    call: ToolCall | None = None
    final_answer: str | None = None


# Distinct resources a run's chain remembers per resource type (and per tool): the chain travels in
# every gate request, history event and ledger row, so it must not grow with the length of the run.
CHAIN_RESOURCES = 50


class Chain(BaseModel):
    """What the run has done so far, as chain-aware policies see it (`context.chain`), bounded.

    Kept by the workflow from the calls that ran (never a live lookup), sent in every `GateState`
    and carried across continue-as-new, so a recorded request re-checks exactly.

    Attributes:
        calls: Per tool, how many calls of it ran in this run (sub-agents' calls included).
        resources: Distinct resources touched, as (type, id), at most `CHAIN_RESOURCES` per type.
        touched: Per tool, the distinct resources its calls acted on (same cap per tool).
        data_classes: The data classes of the tools that ran (`internal`, `regulated`, ...).
        egress: A tool that sends data out (egress) has run.
        truncated: Some resource was not remembered because a cap was reached.
    """

    model_config = _WIRE

    calls: dict[str, int] = Field(default_factory=dict)
    resources: tuple[tuple[str, str], ...] = ()
    touched: dict[str, tuple[tuple[str, str], ...]] = Field(default_factory=dict)
    data_classes: tuple[str, ...] = ()
    egress: bool = False
    truncated: bool = False

    def after(self, tool: str, resource: tuple[str, str] | None, data_class: str, egress: bool) -> Chain:
        """This chain once a call of `tool` on `resource` has run (a new chain: the model is frozen)."""
        calls = dict(self.calls)
        calls[tool] = calls.get(tool, 0) + 1
        resources, touched, truncated = self.resources, dict(self.touched), self.truncated
        if resource is not None:
            if resource not in resources:
                if sum(1 for r in resources if r[0] == resource[0]) < CHAIN_RESOURCES:
                    resources = (*resources, resource)
                else:
                    truncated = True
            mine = touched.get(tool, ())
            if resource not in mine:
                if len(mine) < CHAIN_RESOURCES:
                    touched[tool] = (*mine, resource)
                else:
                    truncated = True
        classes = self.data_classes if data_class in self.data_classes else (*self.data_classes, data_class)
        return Chain(
            calls=calls,
            resources=resources,
            touched=touched,
            data_classes=tuple(sorted(classes)),
            egress=self.egress or egress,
            truncated=truncated,
        )

    def merged(self, other: Chain) -> Chain:
        """This chain plus a sub-agent's (its calls, resources and flags count for the parent)."""
        calls = dict(self.calls)
        for tool, n in other.calls.items():
            calls[tool] = calls.get(tool, 0) + n
        resources, touched, truncated = self.resources, dict(self.touched), self.truncated or other.truncated
        for r in other.resources:
            if r not in resources:
                if sum(1 for x in resources if x[0] == r[0]) < CHAIN_RESOURCES:
                    resources = (*resources, r)
                else:
                    truncated = True
        for tool, rs in other.touched.items():
            mine = touched.get(tool, ())
            for r in rs:
                if r not in mine:
                    if len(mine) < CHAIN_RESOURCES:
                        mine = (*mine, r)
                    else:
                        truncated = True
            touched[tool] = mine
        return Chain(
            calls=calls,
            resources=resources,
            touched=touched,
            data_classes=tuple(sorted(set(self.data_classes) | set(other.data_classes))),
            egress=self.egress or other.egress,
            truncated=truncated,
        )

    def summary(self) -> dict[str, Any]:
        """A short, JSON-friendly view for people (pending approvals, audit)."""
        return {
            "calls": dict(sorted(self.calls.items())),
            "resources": [f'{t}::"{i}"' for t, i in self.resources],
            "data_classes": list(self.data_classes),
            "egress": self.egress,
            "truncated": self.truncated,
        }


class GateState(BaseModel):
    """What the stateful gates need to know of the run so far."""

    model_config = _WIRE

    steps_taken: int = 0
    spent: int = 0
    tainted: bool = False
    frozen: bool = False
    approved_groups: tuple[str, ...] = ()
    # A sub-agent's narrower limits (None: the agent's own).
    boundary: tuple[str, ...] | None = None
    budget: int | None = None
    deadline_at: datetime | None = None
    # When this tool was called before in this run (for rate limits).
    recent_calls: tuple[datetime, ...] = ()
    # What the run (and its sub-agents) did before this call: `context.chain`.
    chain: Chain = Chain()
    # Set by the deciding activity when the workflow's claim contradicts the run's ledger (a step
    # number that already ran another call: a reset or forged state). The gate then denies.
    conflict: str | None = None
    # The tenant the run acts for ("" for none): set by the deciding activity from the run's
    # verified start in the ledger (`context.run.tenant`), never taken from the workflow's claim.
    tenant: str = ""


class GateRequest(BaseModel):
    model_config = _WIRE

    decision_id: str
    run_id: str
    agent: str
    initiator: str
    step: int
    call: ToolCall
    state: GateState = GateState()
    # A compensation undoes a side effect: the kill switch does not hold it back, and it is allowed
    # wherever its forward tool was. The tool activity accepts the claim only for a step of this run
    # that the ledger shows completed.
    compensation: bool = False
    # Who chose the call: "planner" (self-reported confidence), "script", or "engine" (compensation).
    source: Literal["planner", "script", "engine"] = "planner"
    # Signed approvals for this step, as the workflow collected them. Only evidence: the activity
    # that decides verifies each (signature, group now, separation of duties, the decision it
    # answers, quorum of distinct people) and sets `state.approved_groups` itself.
    approvals: tuple[SignedStatement, ...] = ()


class Decision(BaseModel):
    """A gate decision, as recorded in workflow history and the ledger."""

    model_config = _WIRE

    decision_id: str
    run_id: str
    step: int
    tool: str
    args_digest: str
    bundle_hash: str
    policy_ids: tuple[str, ...] = ()
    gate: str
    outcome: Outcome
    reasons: tuple[str, ...] = ()
    approver_group: str | None = None
    quorum: int = 0
    # Members of approver_group at decision time: the workflow checks approvers against these.
    approvers: tuple[str, ...] = ()
    at: datetime


class LeaseRef(BaseModel):
    """The only trace a dynamic secret leaves outside its activity."""

    model_config = _WIRE

    lease_id: str
    secret_path: str
    ttl_seconds: int


class RunIdentity(BaseModel):
    """A run's own Vault identity, by accessor (which can look up or revoke, never authenticate)."""

    model_config = _WIRE

    accessor: str
    policies: tuple[str, ...]
    expires_at: datetime


class ParentLink(BaseModel):
    """What a sub-agent inherits: never more than its parent has."""

    model_config = _WIRE

    run_id: str
    agent: str
    vault_policy: str
    boundary: tuple[str, ...]
    budget: int
    deadline_at: datetime
    tainted: bool = False


class RunOpen(BaseModel):
    model_config = _WIRE

    run_id: str
    agent: str
    initiator: str
    ttl_seconds: int
    # Temporal's id of the run's first execution: binds every per-run record to this run, so a reused
    # or aliased run id can never reach another run's identity.
    origin_run_id: str
    # A sub-agent: its parent (from Temporal's own parent facts) and the link it was started with,
    # which `run.open` checks against the parent's recorded delegation decision.
    parent_run_id: str | None = None
    parent: ParentLink | None = None
    # The initiator's signed start and the digest of the input it binds.
    start: SignedStatement | None = None
    input_digest: str = ""


class RunSeal(BaseModel):
    """A continue-as-new carry to seal (or a sealed one to check) with the worker's Vault key."""

    model_config = _WIRE

    run_id: str
    agent: str
    origin_run_id: str
    generation: int
    carry_digest: str
    seal: str = ""
    # Temporal's own fact that the run continued from another (None: started by a client).
    continued_run_id: str | None = None


class SagaEntry(BaseModel):
    model_config = _WIRE

    step: int
    tool: str
    args: dict[str, Any]


class RunClose(BaseModel):
    model_config = _WIRE

    run_id: str
    accessor: str | None
    state: RunState
    origin_run_id: str = ""
    reason: str | None = None
    # Compensations that failed: they stay outstanding in the ledger and the reaper retries them.
    outstanding: tuple[SagaEntry, ...] = ()


class ToolInvocation(BaseModel):
    """Input of `tool.<name>`: the call as a gate request, which the activity evaluates itself."""

    model_config = _WIRE

    run_id: str
    step: int
    tool: str
    idempotency_key: str
    gate: GateRequest
    # For a compensation: the idempotency key of the step it undoes.
    compensates: str | None = None

    @property
    def args(self) -> dict[str, Any]:
        return self.gate.call.args


class ToolOutcome(BaseModel):
    """What a tool activity did: its gate's decision, and (when allowed) the result and lease."""

    model_config = _WIRE

    tool: str
    step: int
    decision: Decision
    ran: bool = False
    result: dict[str, Any] = Field(default_factory=dict)
    lease: LeaseRef | None = None
    summary: str = ""


class StepRecord(BaseModel):
    """One step as `lockgate status` shows it."""

    model_config = _WIRE

    step: int
    tool: str
    args_digest: str
    outcome: Outcome
    gate: str
    decision_id: str
    policy_ids: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    lease_id: str | None = None
    summary: str | None = None
    error: str | None = None


DELEGATE_TOOL = "agent.delegate"


class DelegateArgs(BaseModel):
    """Args of the built-in `agent.delegate` call: start a sub-agent with a narrower boundary."""

    model_config = _WIRE

    agent: str
    input: dict[str, Any] = Field(default_factory=dict)
    tools: tuple[str, ...]
    budget: int = Field(ge=0)


class RunCarry(BaseModel):
    """A run's state across continue-as-new: nothing of budgets, taint or compensations is lost."""

    model_config = _WIRE

    identity: RunIdentity
    deadline_at: datetime
    step: int
    evaluations: int
    spent: int
    tainted: bool
    steps: tuple[StepRecord, ...]
    compensated: tuple[StepRecord, ...]
    done: tuple[dict[str, Any], ...]
    saga: tuple[SagaEntry, ...]
    call_times: dict[str, tuple[datetime, ...]]
    generation: int
    chain: Chain = Chain()


class RunInput(BaseModel):
    """A run's input. `parent` and `carry` are engine-only: a run accepts them only when Temporal's
    own facts (a parent workflow, a continue-as-new) and the worker's seal prove the engine made them."""

    model_config = _WIRE

    agent: str
    input: dict[str, Any] = Field(default_factory=dict)
    initiator: str
    parent: ParentLink | None = None
    carry: RunCarry | None = None
    carry_seal: str = ""
    # The initiator's signed start statement (binds run id, agent and input digest): `run.open`
    # accepts the run only if it verifies and names `initiator`. Sub-agents inherit their parent's.
    start: SignedStatement | None = None


class RunStatus(BaseModel):
    model_config = _WIRE

    run_id: str
    agent: str
    initiator: str
    owner: str
    state: RunState
    step: int
    spent: int = 0
    tainted: bool = False
    pending_approvals: tuple[ApprovalRequest, ...] = ()
    open_leases: int = 0
    identity_accessor: str | None = None
    steps: tuple[StepRecord, ...] = ()
    compensations: tuple[StepRecord, ...] = ()
    error: str | None = None


class RunResult(BaseModel):
    model_config = _WIRE

    run_id: str
    state: RunState
    steps: tuple[StepRecord, ...]
    output: dict[str, Any] = Field(default_factory=dict)
    spent: int = 0
    tainted: bool = False
    chain: Chain = Chain()


class ApprovalRequest(BaseModel):
    """A gated step waiting for people (DESIGN.md "Approval request")."""

    model_config = _WIRE

    request_id: str
    run_id: str
    agent: str
    step: int
    tool: str
    args_digest: str
    args_preview: dict[str, Any]
    group: str
    quorum: int
    requested_at: datetime
    expires_at: datetime
    decision_id: str
    policy_ids: tuple[str, ...] = ()
    approvals: tuple[str, ...] = ()
    # The run's chain that led to this request (`Chain.summary`), for approvers.
    chain: dict[str, Any] = Field(default_factory=dict)
    # Every argument the digest covers, in full (the card shows these, never a cut), except those the
    # tool declares secret: `withheld` maps each of those to the group that may see it. Not in the
    # memo (`memo_dump`): a listing keeps only the preview.
    args: dict[str, Any] = Field(default_factory=dict)
    withheld: dict[str, str] = Field(default_factory=dict)
    # The planner's stated reason for the call (an LLM's message, a script's note), if it gave one.
    rationale: str | None = None
    # What the run was asked to do (its validated input), for approvers; not in the memo either.
    run_request: dict[str, Any] = Field(default_factory=dict)

    def memo_dump(self) -> dict[str, Any]:
        """The request as the run's memo lists it: without the full args (memos are small)."""
        return self.model_dump(mode="json", exclude={"args", "run_request"})


def approval_refusal(
    person: str,
    groups: Iterable[str],
    request: ApprovalRequest,
    *,
    initiator: str | None,
    owner: str | None,
    now: datetime,
    verdict: str = "approve",
) -> str | None:
    """Why the run refuses `person`'s verdict on `request`, or None: the one rule `approval.verify`
    and the workflow apply and the inbox asks before it offers a button (so no page offers an act
    the run would refuse)."""
    if request.group not in set(groups):
        return f"{person} is not in group {request.group}"
    if person in (initiator, owner):
        return f"{person} initiated or owns this run (separation of duties)"
    if now >= request.expires_at:
        return "approval request has expired"
    if verdict == "approve" and person in request.approvals:
        return f"{person} already counted (quorum counts distinct people)"
    return None


class ApprovalCheck(BaseModel):
    """Input of `approval.verify`: a signed verdict and the pending request it claims to answer."""

    model_config = _WIRE

    signed: SignedStatement
    verdict: Literal["approve", "reject"]
    run_id: str
    temporal_run_id: str
    agent: str
    request: ApprovalRequest


class HaltCheck(BaseModel):
    """Input of `halt.verify`: an operator's signed halt of a run."""

    model_config = _WIRE

    signed: SignedStatement
    run_id: str


class ApprovalVerdict(BaseModel):
    """What `approval.verify` made of a signed verdict: the verified person, or why it is refused."""

    model_config = _WIRE

    accepted: bool
    person: str
    reason: str
    # The signature verified (the person is who they say), whatever else refused the act.
    verified: bool = False
    groups: tuple[str, ...] = ()
    evidence: str = ""


class ApprovalAttempt(BaseModel):
    """What the run made of one approval signal (queried by the CLI)."""

    model_config = _WIRE

    attempt_id: str
    request_id: str
    approver: str
    verdict: Literal["approve", "reject"]
    accepted: bool
    reason: str
    at: datetime


class AuditEvent(BaseModel):
    """An event the workflow itself witnessed (approvals, compensation), for the ledger."""

    model_config = _WIRE

    event_key: str
    run_id: str
    kind: str
    data: dict[str, Any] = Field(default_factory=dict)
    at: datetime


_SECRET_KEYS = ("password", "secret", "token", "key", "credential", "ssn", "card")


def redact_args(args: dict[str, Any], limit: int = 120, secret: Iterable[str] = ()) -> dict[str, Any]:
    """A short preview of args for listings: declared (`secret`) and secret-looking keys masked, long
    values cut. Approval cards show `ApprovalRequest.args` instead, in full."""
    out: dict[str, Any] = {}
    declared = set(secret)
    for key, value in args.items():
        if key in declared or any(s in key.lower() for s in _SECRET_KEYS):
            out[key] = "***"
        elif isinstance(value, (int, float, bool)) or value is None:
            out[key] = value
        else:
            text = value if isinstance(value, str) else canonical_json(value)
            out[key] = text if len(text) <= limit else text[:limit] + "…"
    return out


from lockgate.people import SignedStatement  # noqa: E402 - people builds on canonical_json above

GateRequest.model_rebuild()
RunOpen.model_rebuild()
RunInput.model_rebuild()
ApprovalCheck.model_rebuild()
HaltCheck.model_rebuild()
RunStatus.model_rebuild()
