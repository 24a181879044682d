"""Approvals in workflow code: asking a group, and taking the signed statements that answer it.

One implementation for every governed run: lockgate's own agent workflow (workflows/agent.py) and
the existing apps governed drop-in (lockgate.dropin.governor), so `lockgate approve | reject | halt`,
`lockgate pending` and the inbox act on both the same way. Workflow code only collects: each signed
statement is verified by the `approval.verify` activity (signature, the person's groups now,
separation of duties, the exact run, Temporal run, request, decision and args digest), and what the
workflow then hands the deciding activity (`GateRequest.approvals`) is verified there again before
anything is leased: workflow state alone never grants.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityConfig, LocalActivityConfig

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from lockgate import errors, names
    from lockgate.errors import LockgateError
    from lockgate.metrics import approval_waited
    from lockgate.models import (
        ApprovalAttempt,
        ApprovalCheck,
        ApprovalRequest,
        ApprovalVerdict,
        AuditEvent,
        Chain,
        Decision,
        HaltCheck,
        RunIdentity,
        RunState,
        RunStatus,
        StepRecord,
        ToolCall,
        canonical_json,
        redact_args,
    )
    from lockgate.names import SA_PENDING, SA_STATE
    from lockgate.people import SignedStatement
    from lockgate.spec import AgentSpec, secret_fields

__all__ = ["AUDIT_CALL", "FREEZE_RECHECK", "SA_PENDING", "SA_STATE", "VERIFY_CALL", "ApprovalDesk", "CallDenied"]


# While frozen, a run re-evaluates its gate this often even if no `unfreeze` signal reaches it.
FREEZE_RECHECK = timedelta(seconds=30)

AUDIT_CALL: ActivityConfig = {
    "start_to_close_timeout": timedelta(seconds=20),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10)),
}

# `approval.verify` and `halt.verify`: local activities, answered within the update that asked.
VERIFY_CALL: LocalActivityConfig = {
    "start_to_close_timeout": timedelta(seconds=20),
    "retry_policy": RetryPolicy(
        maximum_attempts=5, maximum_interval=timedelta(seconds=5), non_retryable_error_types=[errors.BAD_INPUT]
    ),
}


class CallDenied(LockgateError):
    """A governed call that will not run: denied by a gate, rejected or expired (`kind`: errors.*)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ApprovalDesk:
    """The approvals of one run, its state and its wait on the kill switch. A host class (a
    workflow, or a drop-in run's governor) provides the attributes below and calls
    `_init_approvals` once."""

    _run_id: str
    _state: RunState
    _chain: Chain
    _halted: bool
    _halt_reason: str | None
    _wake: bool
    _pending: dict[str, ApprovalRequest]
    _verdicts: dict[str, str]  # request id -> "approved" | "rejected by ..." | "expired"
    _attempts: dict[str, ApprovalAttempt]
    _evidence: dict[str, list[SignedStatement]]  # accepted signed approvals per pending request
    _rounds: dict[int, int]  # approval rounds per step
    # What the run's status shows besides its approvals (the host keeps them).
    _step: int
    _spent: int
    _tainted: bool
    _in_flight: int
    _identity: RunIdentity | None
    _steps: list[StepRecord]
    _compensated: list[StepRecord]
    _error: str | None

    def _run_status(self, agent: str, initiator: str, owner: str) -> RunStatus:
        """The run's status, as the `status` query answers it (the same for both hosts)."""
        return RunStatus(
            run_id=self._run_id,
            agent=agent,
            initiator=initiator,
            owner=owner,
            state=self._state,
            step=self._step,
            spent=self._spent,
            tainted=self._tainted,
            pending_approvals=tuple(self._pending.values()),
            open_leases=self._in_flight,
            identity_accessor=self._identity.accessor if self._identity else None,
            steps=tuple(self._steps),
            compensations=tuple(self._compensated),
            error=self._error,
        )

    def _init_approvals(self) -> None:
        self._pending = {}
        self._verdicts = {}
        self._attempts = {}
        self._evidence = {}
        self._rounds = {}
        # Set by a verified `halt` update: every wait of the run ends and it compensates.
        self._halted = False
        self._halt_reason = None
        # Set by `unfreeze`: a frozen run looks at its gate again at once.
        self._wake = False

    def _set_state(self, state: RunState) -> None:
        if state != self._state:
            self._state = state
            workflow.upsert_search_attributes([SA_STATE.value_set(state)])

    async def _audit(self, kind: str, key: str, data: dict[str, Any], *, event_key: str | None = None) -> None:
        event = AuditEvent(
            event_key=event_key or f"{kind}:{self._run_id}:{key}",
            run_id=self._run_id,
            kind=kind,
            data=data,
            at=workflow.now(),
        )
        await workflow.execute_activity(names.AUDIT_RECORD, event, **AUDIT_CALL)

    # -- the kill switch -----------------------------------------------------------------------
    async def _wait_unfrozen(self) -> None:
        """Waits while the kill switch holds: until `unfreeze` wakes the run, or for a periodic
        re-check; `halt` cancels the wait and the run compensates. The caller evaluates again."""
        self._set_state("frozen")
        self._wake = False
        try:
            await workflow.wait_condition(lambda: self._wake or self._halted, timeout=FREEZE_RECHECK)
        except TimeoutError:
            pass
        if self._halted:
            raise asyncio.CancelledError()
        self._set_state("awaiting_approval" if self._pending else "running")

    def _unfreeze(self) -> None:
        self._wake = True

    # -- asking --------------------------------------------------------------------------------
    def _run_request(self) -> dict[str, Any]:
        """What the run was asked to do, shown to approvers (a governed run without one: nothing)."""
        return {}

    async def _approval(
        self,
        agent: AgentSpec,
        call: ToolCall,
        step: int,
        decision: Decision,
        approvals: tuple[SignedStatement, ...],
    ) -> tuple[SignedStatement, ...]:
        """Asks the decision's group and waits. Returns the signed approvals to evaluate the call
        again with (policy, not the approval, has the last word: the deciding activity verifies
        each one itself); raises CallDenied on rejection or expiry, CancelledError on halt."""
        assert decision.approver_group is not None
        now = workflow.now()
        self._rounds[step] = self._rounds.get(step, 0) + 1
        spec = agent.tool(call.tool)
        # Only what the tool declares secret is withheld from the card; everything else the digest
        # covers is shown in full (a planner cannot hide text past a preview's cut).
        withheld = secret_fields(spec.args if spec else None)
        request = ApprovalRequest(
            request_id=f"{step}.{self._rounds[step]}",
            run_id=self._run_id,
            agent=agent.name,
            step=step,
            tool=call.tool,
            args_digest=decision.args_digest,
            args_preview=redact_args(call.args, secret=withheld),
            args={k: v for k, v in call.args.items() if k not in withheld},
            withheld={k: g for k, g in withheld.items() if k in call.args},
            rationale=call.rationale,
            run_request=self._run_request(),
            group=decision.approver_group,
            quorum=max(1, decision.quorum),
            requested_at=now,
            expires_at=now + agent.approval_ttl,
            decision_id=decision.decision_id,
            policy_ids=decision.policy_ids,
            chain=self._chain.summary(),
        )
        self._pending[request.request_id] = request
        self._evidence[request.request_id] = []
        self._publish_pending()
        await self._audit("approval.requested", request.request_id, request.memo_dump())
        try:
            await workflow.wait_condition(
                lambda: request.request_id in self._verdicts or self._halted, timeout=agent.approval_ttl
            )
        except TimeoutError:
            self._verdicts[request.request_id] = "expired"
        except GeneratorExit:
            # The run is being evicted from the worker's cache (its coroutines are closed): no
            # workflow API can be called now, and the run's visibility stays as it was.
            raise
        except BaseException:
            self._pending.pop(request.request_id, None)
            self._publish_pending()
            raise
        self._pending.pop(request.request_id, None)
        self._publish_pending()
        if self._halted and request.request_id not in self._verdicts:
            raise asyncio.CancelledError()
        verdict = self._verdicts[request.request_id]
        outcome = "expired" if verdict == "expired" else "rejected" if verdict.startswith("rejected") else "approved"
        approval_waited(outcome, workflow.now() - request.requested_at)
        if verdict == "expired":
            await self._audit("approval.expired", request.request_id, {"request_id": request.request_id})
            raise CallDenied(
                f"step {step} {call.tool}: approval request {request.request_id} expired", errors.APPROVAL_EXPIRED
            )
        if verdict.startswith("rejected"):
            raise CallDenied(f"step {step} {call.tool}: {verdict}", errors.APPROVAL_REJECTED)
        return (*approvals, *self._evidence.pop(request.request_id, []))

    def _publish_pending(self) -> None:
        """Pending requests go to visibility: their ids as a search attribute (to find the runs) and
        the requests themselves in the memo, so `lockgate pending` lists thousands in one call."""
        self._set_state("awaiting_approval" if self._pending else "running")
        workflow.upsert_search_attributes([SA_PENDING.value_set(sorted(self._pending))])
        workflow.upsert_memo({"pending": [r.memo_dump() for r in self._pending.values()]})

    # -- answers -------------------------------------------------------------------------------
    async def _on_statement(self, payload: Any, verdict: str) -> ApprovalAttempt:
        """One approval or rejection, from an update (answered at once) or a raw signal: verified by
        the `approval.verify` activity (signature, person, group now, separation of duties, the exact
        run, request, decision and args), counted once per person, and recorded either way."""
        try:
            signed = SignedStatement.model_validate(payload)
        except ValidationError:
            signed = None
        digest = signed.statement.digest() if signed else hashlib.sha256(canonical_json(payload).encode()).hexdigest()
        if digest in self._attempts:
            return self._attempts[digest]  # a re-delivery of the same statement
        raw = payload if isinstance(payload, dict) else {}
        claimed = str(signed.statement.person) if signed else str(raw.get("approver", "?"))[:64]
        fields = signed.statement.fields if signed else {}
        request = self._pending.get(str(fields.get("request_id", raw.get("request_id", ""))))
        result: ApprovalVerdict
        if signed is None:
            result = ApprovalVerdict(accepted=False, person=claimed, reason="forged: not a signed statement")
        elif request is None:
            result = ApprovalVerdict(
                accepted=False, person=claimed, reason=f"no pending approval request {fields.get('request_id')!r}"
            )
        else:
            result = await workflow.execute_local_activity(
                names.APPROVAL_VERIFY,
                ApprovalCheck(
                    signed=signed,
                    verdict="approve" if verdict == "approve" else "reject",
                    run_id=self._run_id,
                    temporal_run_id=workflow.info().run_id,
                    # The agent whose call asks (its owner may not approve it).
                    agent=request.agent,
                    request=request,
                ),
                result_type=ApprovalVerdict,
                **VERIFY_CALL,
            )
            if result.accepted and verdict == "approve" and result.person in request.approvals:
                result = result.model_copy(
                    update={
                        "accepted": False,
                        "reason": f"{result.person} already counted (quorum counts distinct people)",
                    }
                )
            if result.accepted and request.request_id not in self._pending:
                result = result.model_copy(update={"accepted": False, "reason": "request closed meanwhile"})
        reason = str(fields.get("reason") or "") if result.accepted else result.reason
        attempt = ApprovalAttempt(
            attempt_id=digest,
            request_id=request.request_id if request else str(fields.get("request_id", "")),
            approver=result.person if result.verified else f"{claimed} (unverified)",
            verdict="approve" if verdict == "approve" else "reject",
            accepted=result.accepted,
            reason=reason or "accepted",
            at=workflow.now(),
        )
        self._attempts[digest] = attempt
        if result.accepted and request is not None and signed is not None:
            if verdict == "approve":
                self._evidence.setdefault(request.request_id, []).append(signed)
                request = request.model_copy(update={"approvals": (*request.approvals, result.person)})
                self._pending[request.request_id] = request
                self._publish_pending()
                if len(request.approvals) >= request.quorum:
                    self._verdicts[request.request_id] = "approved"
            else:
                self._verdicts[request.request_id] = f"rejected by {result.person}" + (f": {reason}" if reason else "")
        kind = f"approval.{'accepted' if result.accepted else 'refused'}"
        await self._audit(
            kind,
            digest[:32],
            {
                **attempt.model_dump(mode="json"),
                "evidence": digest,
                "verified": result.verified,
                "args_digest": fields.get("args_digest"),
            },
        )
        return attempt

    async def _on_halt(self, signed: SignedStatement) -> str:
        """An operator's halt: verified (group `operators`), then the run stops and compensates."""
        result = await workflow.execute_local_activity(
            names.HALT_VERIFY, HaltCheck(signed=signed, run_id=self._run_id), result_type=ApprovalVerdict, **VERIFY_CALL
        )
        await self._audit(
            "halt.accepted" if result.accepted else "halt.refused",
            signed.statement.digest()[:32],
            {"person": result.person, "reason": result.reason, "verified": result.accepted},
        )
        if not result.accepted:
            return f"refused: {result.reason}"
        self._halt_reason = f"{signed.statement.fields.get('reason') or 'halted'} (by {result.person})"
        self._halted = True
        return "halting"
