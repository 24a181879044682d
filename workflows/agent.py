"""The agent workflow: a planner proposes tool calls; each one is gated, leased, run and audited.

Deterministic orchestration only: every decision and side effect happens in an activity. `run` is
lifecycle (identity, saga, close); `call` is the governed tool call; approvals arrive as signals.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, ChildWorkflowError
from temporalio.workflow import ActivityConfig, LocalActivityConfig, ParentClosePolicy

# Pure declarations and models, no I/O: passed through so the sandbox does not re-import them on
# every run (and so that `registry` is the one the worker filled).
with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from lockgate import errors, names
    from lockgate.ids import is_run_id
    from lockgate.models import (
        DELEGATE_TOOL,
        ApprovalAttempt,
        ApprovalRequest,
        Decision,
        DelegateArgs,
        GateRequest,
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
        ToolCall,
        args_digest,
        canonical_json,
    )
    from lockgate.names import SA_AGENT, SA_INITIATOR, SA_PENDING, SA_STATE
    from lockgate.people import SignedStatement
    from lockgate.spec import AgentSpec, LLMPlanner, Step, Tool, agents_for, describe_validation

from lockgate.workflows.approvals import CallDenied
from lockgate.workflows.governed import GATE_CALL, TOOL_CALL, Attempt, GovernedRun, message_of, step_record

__all__ = ["GATE_CALL", "SA_AGENT", "SA_INITIATOR", "SA_PENDING", "SA_STATE", "TOOL_CALL", "AgentWorkflow"]

_T = TypeVar("_T")

# Steps of a long run that `status` still lists after a continue-as-new.
CARRY_STEPS = 100

# RUN_CALL: opening and closing the run identity must eventually happen; keep retrying.
RUN_CALL: ActivityConfig = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=10), non_retryable_error_types=[errors.BAD_INPUT]),
}
# RUN_LOCAL: the same, as a local activity. Opening and closing the run identity are the engine's
# own short calls (Vault, the ledger): run in the worker that runs the workflow task, they cost no
# extra server round trip (nor a workflow task of their own) per run.
RUN_LOCAL: LocalActivityConfig = {
    "start_to_close_timeout": timedelta(seconds=30),
    "local_retry_threshold": timedelta(milliseconds=500),  # as GATE_CALL: retries may move to another worker
    "retry_policy": RUN_CALL.get("retry_policy"),
}
# Runs started before the identity calls became local keep replaying with activities.
LOCAL_IDENTITY_PATCH = "lockgate-run-identity-local"
# PLANNER_CALL: a model can be slow or flaky; a malformed answer is not an error (the gate denies it).
PLANNER_CALL: ActivityConfig = {
    "start_to_close_timeout": timedelta(seconds=120),
    "retry_policy": RetryPolicy(
        maximum_attempts=4, maximum_interval=timedelta(seconds=20), non_retryable_error_types=[errors.BAD_INPUT]
    ),
}


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
            self._agent, ToolCall(tool=name, args=args, confidence=confidence, rationale=rationale), "script"
        )
        self._wf._done.append({"tool": outcome.tool, "step": outcome.step, "args": args, "result": outcome.result})
        return outcome.result


@workflow.defn(name=names.WORKFLOW_AGENT)
class AgentWorkflow(GovernedRun):
    @workflow.init
    def __init__(self, inp: RunInput) -> None:
        self._inp = inp
        self._agent: AgentSpec | None = agents_for(workflow.info().task_queue).get(inp.agent)
        parent = inp.parent
        self._init_governed(
            initiator=inp.initiator,
            boundary=parent.boundary if parent else None,
            budget=parent.budget if parent else None,
            tainted=bool(parent and parent.tainted),
        )
        self._done: list[dict[str, Any]] = []
        self._step_views: list[Step] = []  # self._done as planners see it (see _propose)
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
                names.RUN_RESUME, self._seal_request(inp.carry, inp.carry_seal), result_type=bool, **RUN_CALL
            )
            if resumed is not True:  # `run.resume` refuses by raising; anything but a yes is a no
                raise ApplicationError("the carry was not accepted", type=errors.BAD_INPUT, non_retryable=True)
        failure: BaseException | None = None
        try:
            await self._plan(agent)
        except (asyncio.CancelledError, CancelledError) as err:
            failure = err
            self._error = f"halted: {self._halt_reason or 'cancelled'}"
        except CallDenied as err:
            failure = ApplicationError(str(err), type=err.kind, non_retryable=True)
            self._error = str(err)
        except ActivityError as err:
            cause = err.cause
            kind = cause.type if isinstance(cause, ApplicationError) and cause.type else errors.TOOL_FAILED
            message = message_of(err)
            failure = ApplicationError(message, type=kind, non_retryable=True)
            self._error = message
        if failure is not None:
            self._set_state("compensating")
            await self._compensate(agent)
        final: RunState = "completed"
        if failure is not None:
            final = "halted" if isinstance(failure, (asyncio.CancelledError, CancelledError)) else "failed"
        await self._identity_call(
            names.RUN_CLOSE,
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
            names.RUN_OPEN,
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
            outcome = await self.call(agent, proposal, "planner")
            self._done.append(
                {"tool": outcome.tool, "step": outcome.step, "args": proposal.args, "result": outcome.result}
            )
            if self._history_full(agent):
                # Between steps nothing is pending: hand the whole state to a fresh history, sealed
                # by the worker so that no client can hand a run a carry the engine did not make.
                carry = self._carry()
                seal = await workflow.execute_activity(
                    names.RUN_SEAL, self._seal_request(carry), result_type=str, **RUN_CALL
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
                names.PLANNER_LLM,
                PlanRequest(
                    run_id=self._run_id,
                    agent=agent.name,
                    input=self._inp.input,
                    done=tuple(self._done),
                    tainted=self._tainted,
                ),
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

    # -- the governed call (workflows/governed.py) -----------------------------------------------
    async def call(self, agent: AgentSpec, call: ToolCall, source: str) -> Attempt:
        """One governed call. A declared tool gates inside its own activity (one activity per call,
        and no way to reach a tool without its gate); built-ins (delegation) and unknown tools are
        decided by the `gate.evaluate` local activity."""
        if agent.tool(call.tool) is not None:
            return await self.governed_call(agent, call, source=source)

        async def builtin(request: GateRequest, key: str) -> Attempt:
            decision = await workflow.execute_local_activity(
                names.GATE_EVALUATE, request, result_type=Decision, **GATE_CALL
            )
            if decision.outcome == "allow" and call.tool == DELEGATE_TOOL:
                return await self._delegate(agent, call, request, decision)
            return Attempt(decision=decision, ran=False)

        return await self.governed_call(agent, call, builtin, source=source)

    # -- kill switch (the wait: ApprovalDesk._wait_unfrozen) -----------------------------------
    @workflow.signal(name="unfreeze")
    def unfreeze(self) -> None:
        self._unfreeze()

    # -- delegation ----------------------------------------------------------------------------
    async def _delegate(self, agent: AgentSpec, call: ToolCall, request: GateRequest, decision: Decision) -> Attempt:
        """Starts a sub-agent as a child workflow; its spend and taint come back to this run."""
        args = DelegateArgs.model_validate(call.args)
        assert self._deadline_at is not None and self._identity is not None
        step = request.step
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
                names.WORKFLOW_AGENT,
                RunInput(agent=args.agent, input=args.input, initiator=self._inp.initiator, parent=link),
                id=child_id,
                result_type=RunResult,
                # A parent that ends (halt, terminate) asks its children to halt and compensate.
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            )
        except ChildWorkflowError as err:
            cause = err.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
            self._record(step_record(step, call, request, decision), False, error=f"sub-agent {child_id}: {message}")
            kind = cause.type if isinstance(cause, ApplicationError) and cause.type else errors.TOOL_FAILED
            self._maybe_ran = None  # the child compensated its own steps
            raise CallDenied(f"sub-agent {child_id} failed: {message}", kind) from None
        self._spent += result.spent
        self._tainted = self._tainted or result.tainted
        self._chain = self._chain.merged(result.chain)
        return Attempt(
            decision=decision,
            ran=True,
            summary=f"sub-agent {child_id} {result.state}: spent {result.spent}",
            result={"run_id": child_id, "spent": result.spent, "state": result.state},
        )

    # -- approvals (asking and judging: ApprovalDesk) ----------------------------------------
    def _run_request(self) -> dict[str, Any]:
        return dict(self._inp.input)

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
