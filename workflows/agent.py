"""The agent workflow: a planner proposes tool calls; each one is gated, leased, run and audited.

Deterministic orchestration only: every decision and side effect happens in an activity. `run` is
lifecycle (identity, saga, close); `call` is the governed tool call; approvals arrive as signals.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, ChildWorkflowError
from temporalio.workflow import ActivityCancellationType, ParentClosePolicy

# Pure declarations and models, no I/O: passed through so the sandbox does not re-import them on
# every run (and so that `registry` is the one the worker filled).
with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from lockgate import errors
    from lockgate.ids import is_run_id
    from lockgate.models import (
        DELEGATE_TOOL,
        ApprovalAttempt,
        ApprovalRequest,
        Chain,
        Decision,
        DelegateArgs,
        GateRequest,
        GateState,
        ParentLink,
        PlanProposal,
        PlanRequest,
        RunCarry,
        RunClose,
        RunIdentity,
        RunInput,
        RunOpen,
        RunResult,
        RunSeal,
        RunState,
        RunStatus,
        SagaEntry,
        StepRecord,
        ToolCall,
        ToolInvocation,
        ToolOutcome,
        args_digest,
        canonical_json,
    )
    from lockgate.people import SignedStatement
    from lockgate.spec import AgentSpec, LLMPlanner, Step, Tool, ToolSpec, agents_for, describe_validation

from lockgate.workflows.approvals import SA_PENDING, SA_STATE, ApprovalDesk
from lockgate.workflows.approvals import CallDenied as _Denied

__all__ = ["SA_AGENT", "SA_INITIATOR", "SA_PENDING", "SA_STATE", "AgentWorkflow"]

_T = TypeVar("_T")

SA_AGENT = SearchAttributeKey.for_keyword("LockgateAgent")
SA_INITIATOR = SearchAttributeKey.for_keyword("LockgateInitiator")

# Steps of a long run that `status` still lists after a continue-as-new.
CARRY_STEPS = 100

# GATE_CALL: a local activity (no extra server round trip); pure compute plus one ledger write.
GATE_CALL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=20),
    "retry_policy": RetryPolicy(
        maximum_attempts=5, maximum_interval=timedelta(seconds=5), non_retryable_error_types=[errors.BAD_INPUT]
    ),
}
# TOOL_CALL: the heartbeat timeout is how fast a crashed worker's attempt is noticed and retried
# (the next attempt revokes the lease the dead one held). Denials never retry; a tool's own failure
# retries only when the tool says it may (`ToolError(retryable=True)`: the activity marks the others
# non-retryable itself), and an unexpected exception is taken as transient.
TOOL_CALL: dict[str, Any] = {
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
# RUN_CALL: opening and closing the run identity must eventually happen; keep retrying.
RUN_CALL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10), non_retryable_error_types=[errors.BAD_INPUT]),
}
# RUN_LOCAL: the same, as a local activity. Opening and closing the run identity are the engine's
# own short calls (Vault, the ledger): run in the worker that runs the workflow task, they cost no
# extra server round trip (nor a workflow task of their own) per run.
RUN_LOCAL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RUN_CALL["retry_policy"],
}
# Runs started before the identity calls became local keep replaying with activities.
LOCAL_IDENTITY_PATCH = "lockgate-run-identity-local"
# PLANNER_CALL: a model can be slow or flaky; a malformed answer is not an error (the gate denies it).
PLANNER_CALL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=120),
    "retry_policy": RetryPolicy(
        maximum_attempts=4, maximum_interval=timedelta(seconds=20), non_retryable_error_types=[errors.BAD_INPUT]
    ),
}


def _frozen(decision: Decision) -> bool:
    return decision.gate == "kill_switch" and decision.outcome == "deny"


def _step_record(step: int, call: ToolCall, request: GateRequest, decision: Decision | None = None) -> StepRecord:
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


def _message(err: BaseException) -> str:
    """The innermost message of an activity failure (what the tool or gate actually said)."""
    cause = err.cause if isinstance(err, ActivityError) and err.cause is not None else err
    return cause.message if isinstance(cause, ApplicationError) else str(cause)


class _ScriptRun:
    """The `run` a scripted agent gets: each `call` is a governed tool call of this workflow."""

    def __init__(self, wf: AgentWorkflow, agent: AgentSpec) -> None:
        self._wf, self._agent = wf, agent

    async def call(
        self,
        tool: str | Tool,
        args: BaseModel | dict[str, Any],
        *,
        confidence: float = 1.0,
        rationale: str | None = None,
    ) -> dict[str, Any]:
        if self._wf._halted:
            raise asyncio.CancelledError()
        name = tool.name if isinstance(tool, Tool) else tool
        args = args.model_dump(mode="json") if isinstance(args, BaseModel) else dict(args)
        outcome = await self._wf.call(
            self._agent, ToolCall(tool=name, args=args, confidence=confidence, rationale=rationale), source="script"
        )
        self._wf._done.append({"tool": outcome.tool, "step": outcome.step, "args": args, "result": outcome.result})
        return outcome.result


@workflow.defn(name="lockgate.agent")
class AgentWorkflow(ApprovalDesk):
    @workflow.init
    def __init__(self, inp: RunInput) -> None:
        self._inp = inp
        self._run_id = workflow.info().workflow_id
        self._agent: AgentSpec | None = agents_for(workflow.info().task_queue).get(inp.agent)
        self._state: RunState = "running"
        self._steps: list[StepRecord] = []
        self._compensated: list[StepRecord] = []
        self._done: list[dict[str, Any]] = []
        self._step_views: list[Step] = []  # self._done as planners see it (see _propose)
        self._saga: list[SagaEntry] = []
        self._outstanding: list[SagaEntry] = []
        # Temporal's id of this run's first execution (the same across continue-as-new).
        self._origin = workflow.info().first_execution_run_id or workflow.info().run_id
        self._spent = 0
        self._identity: RunIdentity | None = None
        self._in_flight = 0
        self._maybe_ran: int | None = None
        self._error: str | None = None
        self._step = 0
        self._evaluations = 0
        # Pending requests, verdicts, attempts, evidence; halted (workflows/approvals.py).
        self._init_approvals()
        self._call_times: dict[str, list[datetime]] = {}
        # What the run has done, for chain-aware policies (bounded; see `Chain`).
        self._chain = Chain()
        self._deadline_at: datetime | None = None
        parent = inp.parent
        self._boundary: tuple[str, ...] | None = parent.boundary if parent else None
        self._budget: int | None = parent.budget if parent else None
        self._tainted = bool(parent and parent.tainted)  # taint passes to sub-agents
        self._generation = 0
        if inp.carry is not None:
            self._restore(inp.carry)

    # -- lifecycle -----------------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: RunInput) -> RunResult:
        info = workflow.info()
        if not is_run_id(self._run_id):
            # An id that can never be recorded safely fails the run at once (never retried).
            raise ApplicationError(f"invalid run id {self._run_id[:60]!r}", type=errors.BAD_INPUT, non_retryable=True)
        # Engine-only input: a parent link only from a real parent workflow (Temporal's own fact; the
        # link itself is checked against the parent's recorded delegation in `run.open`), a carry
        # only from a continue-as-new under the worker's seal (`run.resume`).
        if inp.parent is not None and (info.parent is None or info.parent.workflow_id != inp.parent.run_id):
            raise ApplicationError(
                "a parent link is accepted only from the parent run itself", type=errors.BAD_INPUT, non_retryable=True
            )
        if inp.carry is not None and inp.parent is not None:
            raise ApplicationError("a sub-agent never continues as new", type=errors.BAD_INPUT, non_retryable=True)
        agent = self._agent
        if agent is None:
            raise ApplicationError(f"unknown agent {inp.agent!r}", type=errors.BAD_INPUT, non_retryable=True)
        try:
            agent.input_model.model_validate(inp.input)
        except ValidationError as err:
            raise ApplicationError(
                f"invalid input for {agent.name}: {describe_validation(err)}", type=errors.BAD_INPUT, non_retryable=True
            ) from None
        workflow.upsert_search_attributes(
            [
                SA_AGENT.value_set(agent.name),
                SA_INITIATOR.value_set(inp.initiator),
                SA_STATE.value_set("running"),
                SA_PENDING.value_set([]),
            ]
        )
        if inp.carry is None:
            await self._open(agent, inp)
        else:
            resumed = await workflow.execute_activity(
                "run.resume", self._seal_request(inp.carry, inp.carry_seal), result_type=bool, **RUN_CALL
            )
            if resumed is not True:  # `run.resume` refuses by raising; anything but a yes is a no
                raise ApplicationError("the carry was not accepted", type=errors.BAD_INPUT, non_retryable=True)
        failure: BaseException | None = None
        try:
            await self._plan(agent)
        except (asyncio.CancelledError, CancelledError) as err:
            failure = err
            self._error = f"halted: {self._halt_reason or 'cancelled'}"
        except _Denied as err:
            failure = ApplicationError(str(err), type=err.kind, non_retryable=True)
            self._error = str(err)
        except ActivityError as err:
            cause = err.cause
            kind = cause.type if isinstance(cause, ApplicationError) and cause.type else errors.TOOL_FAILED
            message = _message(err)
            failure = ApplicationError(message, type=kind, non_retryable=True)
            self._error = message
        if failure is not None:
            self._set_state("compensating")
            await self._compensate(agent)
        final: RunState = "completed"
        if failure is not None:
            final = "halted" if isinstance(failure, (asyncio.CancelledError, CancelledError)) else "failed"
        await self._identity_call(
            "run.close",
            RunClose(
                run_id=self._run_id,
                accessor=self._identity.accessor if self._identity else None,
                state=final,
                origin_run_id=self._origin,
                reason=self._error,
                outstanding=tuple(self._outstanding),
            ),
            bool,
        )
        self._set_state(final)
        # An approval, rejection or halt being judged as the run ends gets its answer first (the
        # identity is closed in the same workflow task now, so the run can end before a handler).
        await workflow.wait_condition(workflow.all_handlers_finished)
        if failure is not None:
            raise failure
        return RunResult(
            run_id=self._run_id,
            state=final,
            steps=tuple(self._steps),
            output={"results": [d["result"] for d in self._done]},
            spent=self._spent,
            tainted=self._tainted,
            chain=self._chain,
        )

    async def _open(self, agent: AgentSpec, inp: RunInput) -> None:
        """The run's own Vault identity, whose TTL ends with the run's deadline."""
        self._deadline_at = workflow.now() + agent.deadline
        if inp.parent is not None:
            self._deadline_at = min(self._deadline_at, inp.parent.deadline_at)
        ttl = max(1, int((self._deadline_at - workflow.now()).total_seconds()))
        self._identity = await self._identity_call(
            "run.open",
            RunOpen(
                run_id=self._run_id,
                agent=agent.name,
                initiator=inp.initiator,
                ttl_seconds=ttl,
                origin_run_id=self._origin,
                # From Temporal's own facts, never from the input.
                parent_run_id=workflow.info().parent.workflow_id if workflow.info().parent else None,  # type: ignore[union-attr]
                parent=inp.parent,
                start=inp.start,
                input_digest=args_digest(inp.input),
            ),
            RunIdentity,
        )

    async def _identity_call(self, name: str, arg: Any, result_type: type[_T]) -> _T:
        """`run.open` / `run.close`: a local activity (no server round trip of its own), unless
        this run began before they were (its history replays with the activity it recorded)."""
        if workflow.patched(LOCAL_IDENTITY_PATCH):
            return await workflow.execute_local_activity(name, arg, result_type=result_type, **RUN_LOCAL)
        return await workflow.execute_activity(name, arg, result_type=result_type, **RUN_CALL)

    async def _plan(self, agent: AgentSpec) -> None:
        if agent.script is not None:
            await agent.script(_ScriptRun(self, agent), agent.input_model.model_validate(self._inp.input))
            return
        while True:
            if self._halted:
                raise asyncio.CancelledError()
            proposal = await self._propose(agent)
            if proposal is None:
                return
            outcome = await self.call(agent, proposal, source="planner")
            self._done.append(
                {"tool": outcome.tool, "step": outcome.step, "args": proposal.args, "result": outcome.result}
            )
            if self._history_full(agent):
                # Between steps nothing is pending: hand the whole state to a fresh history, sealed
                # by the worker so that no client can hand a run a carry the engine did not make.
                carry = self._carry()
                seal = await workflow.execute_activity(
                    "run.seal", self._seal_request(carry), result_type=str, **RUN_CALL
                )
                workflow.continue_as_new(self._inp.model_copy(update={"carry": carry, "carry_seal": seal}))

    def _seal_request(self, carry: RunCarry, seal: str = "") -> RunSeal:
        return RunSeal(
            run_id=self._run_id,
            agent=self._inp.agent,
            origin_run_id=self._origin,
            generation=carry.generation,
            carry_digest=hashlib.sha256(canonical_json(carry.model_dump(mode="json")).encode()).hexdigest(),
            seal=seal,
            continued_run_id=workflow.info().continued_run_id,
        )

    async def _propose(self, agent: AgentSpec) -> ToolCall | None:
        if isinstance(agent.planner, LLMPlanner):
            # Model calls are I/O: an activity. Its proposal is only a proposal: the gate decides.
            plan = await workflow.execute_activity(
                "planner.llm",
                PlanRequest(run_id=self._run_id, agent=agent.name, input=self._inp.input, done=tuple(self._done)),
                result_type=PlanProposal,
                **PLANNER_CALL,
            )
            return plan.call
        assert agent.planner is not None
        # Steps are built once each (a long run would otherwise rebuild every earlier step at
        # every step); the planner gets its own list.
        views = self._step_views
        views.extend(
            Step(step=d["step"], tool=d["tool"], args=d.get("args", {}), result=d["result"])
            for d in self._done[len(views) :]
        )
        return agent.planner(agent.input_model.model_validate(self._inp.input), list(views))

    def _history_full(self, agent: AgentSpec) -> bool:
        info = workflow.info()
        return (
            (info.is_continue_as_new_suggested() or info.get_current_history_length() >= agent.history_limit)
            and not self._pending
            and workflow.all_handlers_finished()
        )

    def _carry(self) -> RunCarry:
        assert self._identity is not None and self._deadline_at is not None
        # The carry is the next history's first event: keep it small. The status shows the last
        # CARRY_STEPS steps (the ledger has them all); planners get every result, without args.
        return RunCarry(
            identity=self._identity,
            deadline_at=self._deadline_at,
            step=self._step,
            evaluations=self._evaluations,
            spent=self._spent,
            tainted=self._tainted,
            chain=self._chain,
            steps=tuple(self._steps[-CARRY_STEPS:]),
            compensated=tuple(self._compensated[-CARRY_STEPS:]),
            done=tuple({k: v for k, v in d.items() if k != "args"} for d in self._done),
            saga=tuple(self._saga),
            call_times={k: tuple(v) for k, v in self._call_times.items()},
            generation=self._generation + 1,
        )

    def _restore(self, carry: RunCarry) -> None:
        self._identity, self._deadline_at = carry.identity, carry.deadline_at
        self._step, self._evaluations = carry.step, carry.evaluations
        self._spent, self._tainted = carry.spent, carry.tainted
        self._steps, self._compensated = list(carry.steps), list(carry.compensated)
        self._done, self._saga = list(carry.done), list(carry.saga)
        self._call_times = {k: list(v) for k, v in carry.call_times.items()}
        self._chain = carry.chain
        self._generation = carry.generation

    # -- the governed call ---------------------------------------------------------------------
    async def call(
        self, agent: AgentSpec, call: ToolCall, *, compensation: bool = False, source: str = "planner"
    ) -> ToolOutcome:
        """One governed call: gate -> (approval) -> lease + run + revoke. Raises _Denied or ActivityError.

        For a declared tool the gate runs inside the tool's own activity (one activity per call, and
        no way to reach a tool without its gate); built-ins (delegation) and unknown tools are
        decided by the `gate.evaluate` local activity.
        """
        self._step += 1
        step = self._step
        tool = agent.tool(call.tool)
        if tool is None:
            return await self._call_builtin(agent, call, step, compensation, source)
        key = f"{self._run_id}:{step}"
        if tool.compensation and not compensation:
            # Registered before the step runs: a crash mid-step still gets compensated (it is
            # idempotent, so compensating a step that never happened is a no-op).
            self._saga.append(SagaEntry(step=step, tool=tool.compensation, args={"idempotency_key": key}))
        try:
            outcome, request = await self._invoke(agent, tool, call, step, key, compensation, source)
        except (_Denied, asyncio.CancelledError, CancelledError):
            if self._maybe_ran != step and self._saga and self._saga[-1].step == step:
                self._saga.pop()  # denied, or halted while waiting: the tool never ran
            raise
        decision = outcome.decision
        if not compensation:
            self._spent += tool.cost_of(call.args)
            self._tainted = self._tainted or tool.data_class == "regulated"
            self._call_times.setdefault(call.tool, []).append(workflow.now())
            self._chain = self._chain.after(tool.name, tool.resource_of(call.args), tool.data_class, tool.egress)
        self._record(
            _step_record(step, call, request, decision),
            compensation,
            lease_id=outcome.lease.lease_id if outcome.lease else None,
            summary=outcome.summary,
        )
        return outcome

    async def _invoke(
        self, agent: AgentSpec, tool: ToolSpec, call: ToolCall, step: int, key: str, compensation: bool, source: str
    ) -> tuple[ToolOutcome, GateRequest]:
        """Invokes the tool activity until it runs: through freezes and approvals, or raises _Denied."""
        approvals: tuple[SignedStatement, ...] = ()
        while True:
            request = self._request(agent, call, step, approvals, compensation, source)
            invocation = ToolInvocation(
                run_id=self._run_id,
                step=step,
                tool=call.tool,
                idempotency_key=key,
                gate=request,
                compensates=call.args.get("idempotency_key") if compensation else None,
            )
            self._in_flight += 1
            self._maybe_ran = step  # until the activity says it did not run, assume it may have
            try:
                outcome = await workflow.execute_activity(
                    tool.activity_name, invocation, result_type=ToolOutcome, **TOOL_CALL
                )
            except ActivityError as err:
                self._record(_step_record(step, call, request), compensation, error=_message(err))
                raise
            finally:
                self._in_flight -= 1
            if not compensation and (workflow.cancellation_reason() is not None or self._halted):
                # Halted while the tool ran: the fence let it finish; now stop and compensate it too.
                self._record(
                    _step_record(step, call, request, outcome.decision),
                    compensation,
                    summary=outcome.summary,
                    error="halted while the tool ran",
                )
                raise asyncio.CancelledError()
            decision = outcome.decision
            if outcome.ran:
                return outcome, request
            self._maybe_ran = None
            if _frozen(decision):
                await self._wait_unfrozen()
            elif decision.outcome == "approval":
                approvals = await self._approval(agent, call, step, decision, approvals)
            else:
                self._record(
                    _step_record(step, call, request, decision), compensation, error="; ".join(decision.reasons)
                )
                raise _Denied(
                    f"step {step} {call.tool} denied by {decision.gate}: {'; '.join(decision.reasons)}",
                    errors.TOOL_DENIED,
                )

    async def _call_builtin(
        self, agent: AgentSpec, call: ToolCall, step: int, compensation: bool, source: str = "planner"
    ) -> ToolOutcome:
        approvals: tuple[SignedStatement, ...] = ()
        while True:
            request = self._request(agent, call, step, approvals, compensation, source)
            decision = await workflow.execute_local_activity(
                "gate.evaluate", request, result_type=Decision, **GATE_CALL
            )
            if _frozen(decision):
                await self._wait_unfrozen()
            elif decision.outcome == "approval":
                approvals = await self._approval(agent, call, step, decision, approvals)
            else:
                break
        record = _step_record(step, call, request, decision)
        if decision.outcome == "allow" and call.tool == DELEGATE_TOOL:
            return await self._delegate(agent, call, step, record, decision)
        self._record(record, compensation, error="; ".join(decision.reasons))
        raise _Denied(
            f"step {step} {call.tool} denied by {decision.gate}: {'; '.join(decision.reasons)}", errors.TOOL_DENIED
        )

    def _record(self, record: StepRecord, compensation: bool, **update: Any) -> None:
        done = record.model_copy(update=update)
        (self._compensated if compensation else self._steps).append(done)

    def _request(
        self,
        agent: AgentSpec,
        call: ToolCall,
        step: int,
        approvals: tuple[SignedStatement, ...],
        compensation: bool,
        source: str = "planner",
    ) -> GateRequest:
        self._evaluations += 1
        return GateRequest(
            decision_id=f"{self._run_id}/{step}/{self._evaluations}",
            run_id=self._run_id,
            agent=agent.name,
            initiator=self._inp.initiator,
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

    def _recent_calls(self, agent: AgentSpec, tool: str) -> tuple[datetime, ...]:
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

    # -- kill switch (the wait: ApprovalDesk._wait_unfrozen) -----------------------------------
    @workflow.signal(name="unfreeze")
    def unfreeze(self) -> None:
        self._unfreeze()

    # -- delegation ----------------------------------------------------------------------------
    async def _delegate(
        self, agent: AgentSpec, call: ToolCall, step: int, record: StepRecord, decision: Decision
    ) -> ToolOutcome:
        """Starts a sub-agent as a child workflow; its spend and taint come back to this run."""
        args = DelegateArgs.model_validate(call.args)
        assert self._deadline_at is not None and self._identity is not None
        link = ParentLink(
            run_id=self._run_id,
            agent=agent.name,
            vault_policy=self._identity.policies[0],
            boundary=args.tools,
            budget=args.budget,
            deadline_at=self._deadline_at,
            tainted=self._tainted,
        )
        child_id = f"{self._run_id}.{step}"
        try:
            result = await workflow.execute_child_workflow(
                "lockgate.agent",
                RunInput(agent=args.agent, input=args.input, initiator=self._inp.initiator, parent=link),
                id=child_id,
                result_type=RunResult,
                # A parent that ends (halt, terminate) asks its children to halt and compensate.
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            )
        except ChildWorkflowError as err:
            cause = err.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
            self._record(record, False, error=f"sub-agent {child_id}: {message}")
            kind = cause.type if isinstance(cause, ApplicationError) and cause.type else errors.TOOL_FAILED
            raise _Denied(f"sub-agent {child_id} failed: {message}", kind) from None
        self._spent += result.spent
        self._tainted = self._tainted or result.tainted
        self._chain = self._chain.merged(result.chain)
        summary = f"sub-agent {child_id} {result.state}: spent {result.spent}"
        self._record(record, False, summary=summary)
        return ToolOutcome(
            tool=call.tool,
            step=step,
            decision=decision,
            ran=True,
            summary=summary,
            result={"run_id": child_id, "spent": result.spent, "state": result.state},
        )

    # -- approvals (asking and judging: ApprovalDesk) ----------------------------------------
    @workflow.update(name="approve")
    async def approve_update(self, signed: SignedStatement) -> ApprovalAttempt:
        return await self._on_statement(signed.model_dump(mode="json"), "approve")

    @workflow.update(name="reject")
    async def reject_update(self, signed: SignedStatement) -> ApprovalAttempt:
        return await self._on_statement(signed.model_dump(mode="json"), "reject")

    # Raw signals (what `temporal workflow signal` sends): judged exactly like the updates, so a
    # forged or unsigned one is refused and shows in the audit.
    @workflow.signal(name="approve")
    async def approve(self, payload: Any) -> None:
        await self._on_statement(payload, "approve")

    @workflow.signal(name="reject")
    async def reject(self, payload: Any) -> None:
        await self._on_statement(payload, "reject")

    @workflow.update(name="halt")
    async def halt_update(self, signed: SignedStatement) -> str:
        """An operator's halt: verified (group `operators`), then the run stops and compensates."""
        return await self._on_halt(signed)

    # -- compensation --------------------------------------------------------------------------
    async def _compensate(self, agent: AgentSpec) -> None:
        """Runs registered compensations in reverse; one failing does not stop the others."""
        while self._saga:
            entry = self._saga.pop()
            try:
                await self.call(
                    agent,
                    ToolCall(tool=entry.tool, args=entry.args, rationale=f"compensate step {entry.step}"),
                    compensation=True,
                )
            except (_Denied, ActivityError) as err:
                # Never dropped: it stays outstanding (ledger) and the reaper retries it with backoff.
                self._outstanding.append(entry)
                self._error = f"{self._error}; compensation of step {entry.step} failed: {_message(err)}"

    # -- queries -------------------------------------------------------------------------------
    @workflow.query(name="status")
    def status(self) -> RunStatus:
        agent = self._agent
        return self._run_status(self._inp.agent, self._inp.initiator, agent.owner if agent else "")

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[ApprovalRequest]:
        return list(self._pending.values())

    @workflow.query(name="approval_attempt")
    def approval_attempt(self, attempt_id: str) -> ApprovalAttempt | None:
        return self._attempts.get(attempt_id)
