"""The ledger's vocabulary: one model per entry kind, written and read through them.

Writers append `data` that must validate against its kind's model (`Ledger.append` checks it);
readers that act on the ledger get typed events from authenticated rows only
(`Ledger.typed(run_id, Kind)`). Models accept fields they do not name (older writers added some),
but never a missing or mistyped one they do name.

Workflows may record, through the `audit.record` activity, only facts about their own run and
only of the kinds in `WORKFLOW_KINDS` (`check_workflow_event`): everything else in the ledger is
written by the worker's own activities, the reaper, or an operator's command.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from lockgate.errors import BAD_INPUT

__all__ = [
    "EVENTS",
    "WORKFLOW_KINDS",
    "AnyEvent",
    "ApprovalExpired",
    "ApprovalNotCounted",
    "ApprovalRequested",
    "ApprovalVerdict",
    "ApproverKeyArchived",
    "AuditRefused",
    "CompensationOutstanding",
    "CompensationResolved",
    "DecisionEvent",
    "Freeze",
    "HaltVerdict",
    "HistoryArchived",
    "LeaseIssued",
    "LeaseRevoked",
    "LedgerEvent",
    "LedgerUnauthenticated",
    "McpBlocked",
    "ModelEgress",
    "ReaperAction",
    "ReaperClaim",
    "ReaperCompensation",
    "RunClosed",
    "RunOpened",
    "RunRefused",
    "ToolCompleted",
    "ToolFailed",
    "ToolRefused",
    "Unfreeze",
    "UnfreezeRefused",
    "WorkflowEventRefused",
    "check_workflow_event",
    "model_of",
    "validate",
]


class LedgerEvent(BaseModel):
    """One entry's data. `kinds`: the entry kinds this model describes."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kinds: ClassVar[tuple[str, ...]] = ()


class DecisionEvent(LedgerEvent):
    kinds = ("decision",)
    decision_id: str
    step: int
    tool: str
    outcome: str
    gate: str = ""
    args_digest: str = ""
    policy_ids: list[str] = []
    reasons: list[str] = []
    approver_group: str | None = None
    quorum: int | None = None


class RunOpened(LedgerEvent):
    kinds = ("run.opened",)
    agent: str
    initiator: str | None = None
    owner: str | None = None
    origin_run_id: str | None = None
    parent_run_id: str | None = None
    identity_accessor: str | None = None
    # The tenant the run acts for, verified at its start (or its parent's).
    tenant: str | None = None


class RunClosed(LedgerEvent):
    kinds = ("run.closed",)
    state: str
    reason: str | None = None
    identity_accessor: str | None = None


class RunRefused(LedgerEvent):
    kinds = ("run.refused",)
    reason: str


class ToolCompleted(LedgerEvent):
    kinds = ("tool.completed",)
    tool: str
    step: int
    compensates: str | None = None
    idempotency_key: str | None = None


class ToolRefused(LedgerEvent):
    kinds = ("tool.refused",)
    tool: str
    reason: str


class ToolFailed(LedgerEvent):
    kinds = ("tool.failed",)
    tool: str
    step: int
    error: str = ""
    reached: bool = True  # False: refused before the call reached the system (nothing to undo)


class LeaseIssued(LedgerEvent):
    kinds = ("lease.issued",)
    lease_id: str
    tool: str
    step: int


class LeaseRevoked(LedgerEvent):
    kinds = ("lease.revoked",)
    lease_id: str
    by: str = ""


class CompensationOutstanding(LedgerEvent):
    kinds = ("compensation.outstanding",)
    step: int
    tool: str
    args: dict[str, Any] = {}


class CompensationResolved(LedgerEvent):
    kinds = ("compensation.resolved",)
    step: int
    tool: str


class ReaperAction(LedgerEvent):
    kinds = ("reaper.found", "reaper.revoked")
    action: str
    detail: str = ""


class ReaperCompensation(LedgerEvent):
    kinds = ("reaper.compensation",)
    action: str
    step: int = -1
    ok: bool = False


class ReaperClaim(LedgerEvent):
    kinds = ("reaper.claim",)
    action: str


class ApprovalRequested(LedgerEvent):
    kinds = ("approval.requested",)
    request_id: str


class ApprovalExpired(LedgerEvent):
    kinds = ("approval.expired",)
    request_id: str


class ApprovalVerdict(LedgerEvent):
    kinds = ("approval.accepted", "approval.refused")
    request_id: str | None = None
    accepted: bool = False


class ApprovalNotCounted(LedgerEvent):
    kinds = ("approval.not_counted",)
    reason: str


class HaltVerdict(LedgerEvent):
    kinds = ("halt.accepted", "halt.refused")
    verified: bool = False


class Freeze(LedgerEvent):
    kinds = ("freeze",)
    scope: str
    by: str
    reason: str = ""
    evidence: str = ""


class Unfreeze(Freeze):
    kinds = ("unfreeze",)


class UnfreezeRefused(LedgerEvent):
    kinds = ("unfreeze.refused",)
    scope: str
    reason: str


class ApproverKeyArchived(LedgerEvent):
    kinds = ("approver.key",)
    person: str
    version: int
    public_key: str


class HistoryArchived(LedgerEvent):
    kinds = ("history.archived",)
    histories: list[dict[str, Any]]


class LedgerUnauthenticated(LedgerEvent):
    kinds = ("ledger.unauthenticated",)
    problem: str


class AuditRefused(LedgerEvent):
    kinds = ("audit.refused",)
    kind: str
    run_id: str
    reason: str


class ModelEgress(LedgerEvent):
    """A model request of a run that read regulated data (gates/egress.py)."""

    kinds = ("model.egress",)
    endpoint: str
    allowed: bool
    policy_ids: list[str]


class McpBlocked(LedgerEvent):
    """An MCP tool blocked by a changed definition, with what its server now says (for review)."""

    kinds = ("mcp.blocked",)
    server: str
    tool: str
    pinned_digest: str | None = None
    live_digest: str | None = None


AnyEvent = LedgerEvent

EVENTS: dict[str, type[LedgerEvent]] = {
    kind: model
    for model in (
        DecisionEvent,
        RunOpened,
        RunClosed,
        RunRefused,
        ToolCompleted,
        ToolRefused,
        ToolFailed,
        ModelEgress,
        McpBlocked,
        LeaseIssued,
        LeaseRevoked,
        CompensationOutstanding,
        CompensationResolved,
        ReaperAction,
        ReaperCompensation,
        ReaperClaim,
        ApprovalRequested,
        ApprovalExpired,
        ApprovalVerdict,
        ApprovalNotCounted,
        HaltVerdict,
        Freeze,
        Unfreeze,
        UnfreezeRefused,
        ApproverKeyArchived,
        HistoryArchived,
        LedgerUnauthenticated,
        AuditRefused,
    )
    for kind in model.kinds
}
"""Every entry kind lockgate writes -> its model."""

# What a workflow may record about its own run through `audit.record`: what it witnessed itself.
# `tool.completed` / `tool.failed`: the drop-in governor records a tool that ran in workflow code
# (no activity of its own to record it); the reaper compensates only steps the run's record shows
# it took (activities/reaper.py).
WORKFLOW_KINDS = frozenset(
    {
        "approval.requested",
        "approval.expired",
        "approval.accepted",
        "approval.refused",
        "halt.accepted",
        "halt.refused",
        "tool.completed",
        "tool.failed",
    }
)


def model_of(kind: str) -> type[LedgerEvent] | None:
    return EVENTS.get(kind)


def validate(kind: str, data: dict[str, Any]) -> LedgerEvent | None:
    """The typed event, or None for a kind lockgate does not write (tests, benchmarks).

    Raises:
        ValueError: The data does not fit the kind's model.
    """
    model = EVENTS.get(kind)
    if model is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ValueError(f"ledger entry {kind}: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from None


class WorkflowEventRefused(ValueError):
    """A workflow tried to record what it may not (another run, a kind it does not witness)."""

    type = BAD_INPUT


def check_workflow_event(event: Any, workflow_id: str) -> None:
    """Whether the workflow `workflow_id` may record `event` (an `AuditEvent`) through audit.record.

    Raises:
        WorkflowEventRefused: With the reason.
    """
    if event.run_id != workflow_id:
        raise WorkflowEventRefused(
            f"workflow {workflow_id} may record facts about its own run only, not {event.run_id}"
        )
    if event.kind not in WORKFLOW_KINDS:
        raise WorkflowEventRefused(f"a workflow may not record {event.kind!r} entries")
    if not event.event_key.startswith(f"{event.kind}:{event.run_id}:"):
        raise WorkflowEventRefused(f"event key {event.event_key!r} is not one of run {event.run_id}'s {event.kind}")
    try:
        validate(event.kind, event.data)
    except ValueError as err:
        raise WorkflowEventRefused(str(err)) from None
