"""The governed call: one implementation for every governed run.

proposal -> gate -> (kill switch wait | approval wait) -> tool -> record -> compensation. Both hosts
use it: lockgate's own agent workflow (workflows/agent.py) and the apps governed drop-in
(lockgate.dropin.governor). A host supplies only what differs: how one attempt is made (`Invoke`: the
tool's own activity, the `gate.evaluate` local activity for built-ins, or `dropin.gate` followed by
the app's activity) and what it does with the result. Everything else (step numbering, the saga,
the run state the gate reads, the step records `status` shows, denials, halts while a tool ran, and
compensation in reverse) lives here once.

Workflow code only: deterministic, no I/O (every decision is an activity).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType, ActivityConfig, LocalActivityConfig

with workflow.unsafe.imports_passed_through():
    from lockgate import errors, names
    from lockgate.models import (
        Chain,
        Decision,
        GateRequest,
        GateState,
        RunIdentity,
        RunState,
        SagaEntry,
        StepRecord,
        ToolCall,
        ToolInvocation,
        ToolOutcome,
        args_digest,
    )
    from lockgate.people import SignedStatement
    from lockgate.spec import Agent

from lockgate.workflows.approvals import ApprovalDesk, CallDenied

__all__ = ["GATE_CALL", "TOOL_CALL", "Attempt", "GovernedRun", "Invoke", "Source", "message_of"]

# GATE_CALL: a local activity (no extra server round trip); pure compute plus one ledger write.
GATE_CALL: LocalActivityConfig = {
    "start_to_close_timeout": timedelta(seconds=20),
    # Retries wait on a server timer and run in a new workflow task (backoffs start at 1 s): a worker that
    # lost Vault or the ledger (it stands by: lockgate/standby.py) does not keep the run to itself.
    "local_retry_threshold": timedelta(milliseconds=500),
    "retry_policy": RetryPolicy(
        maximum_attempts=5, maximum_interval=timedelta(seconds=5), non_retryable_error_types=[errors.BAD_INPUT]
    ),
}
# TOOL_CALL: the heartbeat timeout is how fast a crashed worker's attempt is noticed and retried
# (the next attempt revokes the lease the dead one held). Denials never retry; a tool's own failure
# retries only when the tool says it may (`ToolError(retryable=True)`: the activity marks the others
# non-retryable itself), and an unexpected exception is taken as transient.
TOOL_CALL: ActivityConfig = {
    "start_to_close_timeout": timedelta(seconds=60),
    # Halt (cancel) waits until the in-flight attempt has ended: compensation never runs while the
    # forward tool may still act (a crashed attempt is fenced by its heartbeat timeout).
    "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    "heartbeat_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=6,
        non_retryable_error_types=[errors.BAD_INPUT, errors.LEASE_FORBIDDEN, errors.TOOL_DENIED],
    ),
}

Source = str  # "planner" | "script" | "engine" (GateRequest.source)


@dataclass(frozen=True)
class Attempt:
    """What one attempt at a governed call came to: the decision, and whether the tool ran."""

    decision: Decision
    ran: bool
    result: Any = None
    summary: str = ""
    lease_id: str | None = None
    tool: str = ""
    step: int = 0


# One attempt at the call: gets the gate request of this evaluation and the step's idempotency key.
Invoke = Callable[[GateRequest, str], Awaitable[Attempt]]


def message_of(err: BaseException) -> str:
    """The innermost message of a failure (what the tool or gate actually said)."""
    cause: BaseException = err
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause) or type(cause).__name__


def _frozen(decision: Decision) -> bool:
    return decision.gate == "kill_switch" and decision.outcome == "deny"


def step_record(step: int, call: ToolCall, request: GateRequest, decision: Decision | None = None) -> StepRecord:
    """How a step shows in `lockgate status` (before a decision came back: as the request)."""
    if decision is None:
        return StepRecord(
            step=step,
            tool=call.tool,
            args_digest=args_digest(call.args),
            outcome="allow",
            gate="policy",
            decision_id=request.decision_id,
        )
    return StepRecord(
        step=step,
        tool=call.tool,
        args_digest=decision.args_digest,
        outcome=decision.outcome,
        gate=decision.gate,
        decision_id=decision.decision_id,
        policy_ids=decision.policy_ids,
        reasons=decision.reasons,
    )


class GovernedRun(ApprovalDesk):
    """The governed part of one run: its state, its governed calls, its approvals and its saga.

    A host calls `_init_governed` once, then `governed_call` per tool call and `_compensate` when
    the run fails or halts.
    """

    def _init_governed(
        self,
        *,
        initiator: str,
        boundary: tuple[str, ...] | None = None,
        budget: int | None = None,
        tainted: bool = False,
    ) -> None:
        info = workflow.info()
        self._run_id = info.workflow_id
        # Temporal's id of this run's first execution (the same across continue-as-new).
        self._origin = info.first_execution_run_id or info.run_id
        self._initiator = initiator
        self._state: RunState = "running"
        self._identity: RunIdentity | None = None
        self._deadline_at: datetime | None = None
        self._step = 0
        self._evaluations = 0
        self._saga: list[SagaEntry] = []
        self._saga_agents: dict[int, Agent] = {}  # step -> the agent whose call it undoes
        self._outstanding: list[SagaEntry] = []
        self._steps: list[StepRecord] = []
        self._compensated: list[StepRecord] = []
        # What the run has done, for chain-aware policies (bounded; see `Chain`).
        self._chain = Chain()
        self._spent = 0
        self._tainted = tainted  # taint passes to sub-agents
        self._boundary = boundary
        self._budget = budget
        self._call_times: dict[str, list[datetime]] = {}
        self._in_flight = 0
        self._maybe_ran: int | None = None
        self._error: str | None = None
        # Pending requests, verdicts, attempts, evidence; halted (workflows/approvals.py).
        self._init_approvals()

    # -- the governed call -------------------------------------------------------------------------
    async def governed_call(
        self,
        agent: Agent,
        call: ToolCall,
        invoke: Invoke | None = None,
        *,
        compensation: bool = False,
        source: Source = "planner",
    ) -> Attempt:
        """One governed call: gate -> (approval) -> tool, until it ran. Without `invoke`, the call
        is the tool's own activity (the gate runs inside it: no way to the tool without its gate).

        Raises:
            CallDenied: denied by a gate, rejected or expired (recorded).
            ActivityError: the tool failed (recorded).
            asyncio.CancelledError: halted.
        """
        self._step += 1
        step = self._step
        spec = agent.tool(call.tool)
        key = f"{self._run_id}:{step}"
        if spec is not None and spec.compensation and not compensation:
            # Registered before the step runs: a crash mid-step still gets compensated (it is
            # idempotent, so compensating a step that never happened is a no-op).
            self._saga.append(SagaEntry(step=step, tool=spec.compensation, args={"idempotency_key": key}))
            self._saga_agents[step] = agent
        try:
            attempt, request = await self._until_ran(
                agent, call, step, key, invoke or self._tool_invoke(call, step, compensation), compensation, source
            )
        except (CallDenied, asyncio.CancelledError, CancelledError):
            if self._maybe_ran != step:
                self._drop_saga(step)  # denied, or halted while waiting: the tool never ran
            raise
        if spec is not None and not compensation:
            self._spent += spec.cost_of(call.args)
            self._tainted = self._tainted or spec.data_class == "regulated"
            self._call_times.setdefault(call.tool, []).append(workflow.now())
            self._chain = self._chain.after(spec.name, spec.resource_of(call.args), spec.data_class, spec.egress)
        self._record(
            step_record(step, call, request, attempt.decision),
            compensation,
            lease_id=attempt.lease_id,
            summary=attempt.summary or None,
        )
        return Attempt(
            decision=attempt.decision,
            ran=True,
            result=attempt.result,
            summary=attempt.summary,
            lease_id=attempt.lease_id,
            tool=call.tool,
            step=step,
        )

    async def _until_ran(
        self,
        agent: Agent,
        call: ToolCall,
        step: int,
        key: str,
        invoke: Invoke,
        compensation: bool,
        source: Source,
    ) -> tuple[Attempt, GateRequest]:
        """Attempts the call through freezes and approvals until it ran, or raises CallDenied."""
        approvals: tuple[SignedStatement, ...] = ()
        while True:
            request = self._request(agent, call, step, approvals, compensation, source)
            self._in_flight += 1
            self._maybe_ran = step  # until the attempt says it did not run, assume it may have
            try:
                attempt = await invoke(request, key)
            except CallDenied:
                raise
            except Exception as err:
                # The tool failed (an activity's failure, or a tool that ran in workflow code raised).
                self._record(step_record(step, call, request), compensation, error=message_of(err))
                raise
            finally:
                self._in_flight -= 1
            decision = attempt.decision
            if attempt.ran:
                if not compensation and (workflow.cancellation_reason() is not None or self._halted):
                    # Halted while the tool ran: the fence let it finish; now stop and compensate it too.
                    self._record(
                        step_record(step, call, request, decision),
                        compensation,
                        summary=attempt.summary or None,
                        error="halted while the tool ran",
                    )
                    raise asyncio.CancelledError()
                return attempt, request
            self._maybe_ran = None
            if _frozen(decision):
                await self._wait_unfrozen()
                continue
            try:
                if decision.outcome == "approval":
                    approvals = await self._approval(agent, call, step, decision, approvals)
                    continue
                raise CallDenied(
                    f"step {step} {call.tool} denied by {decision.gate}: {'; '.join(decision.reasons)}",
                    errors.TOOL_DENIED,
                )
            except CallDenied as denied:
                self._record(step_record(step, call, request, decision), compensation, error=str(denied))
                raise

    def _tool_invoke(self, call: ToolCall, step: int, compensation: bool) -> Invoke:
        """The tool's own activity: it gates, leases, runs and revokes (activities/tools.py)."""

        async def invoke(request: GateRequest, key: str) -> Attempt:
            invocation = ToolInvocation(
                run_id=self._run_id,
                step=step,
                tool=call.tool,
                idempotency_key=key,
                gate=request,
                compensates=str(call.args.get("idempotency_key")) if compensation else None,
            )
            outcome = await workflow.execute_activity(
                names.tool_activity(call.tool), invocation, result_type=ToolOutcome, **TOOL_CALL
            )
            return Attempt(
                decision=outcome.decision,
                ran=outcome.ran,
                result=outcome.result,
                summary=outcome.summary,
                lease_id=outcome.lease.lease_id if outcome.lease else None,
            )

        return invoke

    def _drop_saga(self, step: int) -> None:
        self._saga_agents.pop(step, None)
        if self._saga and self._saga[-1].step == step:
            self._saga.pop()
        else:
            self._saga = [e for e in self._saga if e.step != step]

    def _record(self, record: StepRecord, compensation: bool, **update: Any) -> None:
        done = record.model_copy(update=update)
        (self._compensated if compensation else self._steps).append(done)

    def _request(
        self,
        agent: Agent,
        call: ToolCall,
        step: int,
        approvals: tuple[SignedStatement, ...],
        compensation: bool,
        source: Source,
    ) -> GateRequest:
        """The gate request of one evaluation. The run state in it is the workflow's claim: the
        deciding activity checks it against the run's ledger and decides on the stricter of both
        (activities/runstate.py), so a forged, stale or reset state can only narrow."""
        self._evaluations += 1
        return GateRequest(
            decision_id=f"{self._run_id}/{step}/{self._evaluations}",
            run_id=self._run_id,
            agent=agent.name,
            initiator=self._initiator,
            step=step,
            call=call,
            state=GateState(
                steps_taken=len(self._steps),
                spent=self._spent,
                tainted=self._tainted,
                boundary=self._boundary,
                budget=self._budget,
                deadline_at=self._deadline_at,
                recent_calls=self._recent_calls(agent, call.tool),
                chain=self._chain,
            ),
            compensation=compensation,
            source="engine" if compensation else source,  # type: ignore[arg-type]  # one of the three
            approvals=approvals,
        )

    def _recent_calls(self, agent: Agent, tool: str) -> tuple[datetime, ...]:
        """This tool's calls inside its rate-limit window (only those: requests, history and ledger
        rows must not grow with the length of the run)."""
        limit = agent.rate_limits.get(tool)
        if limit is None:
            self._call_times.pop(tool, None)
            return ()
        now = workflow.now()
        recent = [t for t in self._call_times.get(tool, []) if now - t < limit[1]]
        self._call_times[tool] = recent
        return tuple(recent)

    # -- compensation ------------------------------------------------------------------------------
    async def _compensate(self, agent: Agent) -> None:
        """Registered compensations in reverse, each a governed call of its own; one failing does
        not stop the others (it stays outstanding in the ledger and the reaper retries it)."""
        while self._saga:
            entry = self._saga.pop()
            owner = self._saga_agents.pop(entry.step, agent)
            try:
                await self.governed_call(
                    owner,
                    ToolCall(tool=entry.tool, args=entry.args, rationale=f"compensate step {entry.step}"),
                    compensation=True,
                )
            except (CallDenied, ActivityError, ApplicationError) as err:
                self._outstanding.append(entry)
                self._error = f"{self._error}; compensation of step {entry.step} failed: {message_of(err)}"
