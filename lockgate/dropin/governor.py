"""The workflow half of drop-in governance: one `RunGovernor` per execution of a governed workflow.

It runs inside the app's own workflow (installed by the worker interceptor), so everything here is
deterministic: every decision comes from an activity (`dropin.gate`, recorded in history with its
policy bundle hash), and the run's lifecycle (Vault identity, saga, close) is commands in the app's
history. Approvals are lockgate's own (`ApprovalDesk`, shared with workflows/agent.py): signed
statements arriving as `approve`/`reject` updates (or raw signals, judged the same way), verified by
the `approval.verify` activity against the exact run, request, decision and args digest, and handed
to the deciding activity as `GateRequest.approvals`, which verifies them again. It speaks the same
conventions as lockgate's own agent workflow, so `lockgate pending | approve | reject | status |
halt | audit` and the inbox work on these runs too: search attributes `LockgateAgent` /
`LockgateState` / `LockgatePending`, memo `pending`, updates `approve`/`reject`/`halt`, signals
`approve`/`reject`/`unfreeze`, queries `pending_approvals`/`approval_attempt`/`status`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from lockgate import errors
    from lockgate.dropin.models import PATCH_ID, DropinCall, DropinVerdict
    from lockgate.dropin.spec import Denial
    from lockgate.models import (
        ApprovalAttempt,
        ApprovalRequest,
        Chain,
        Decision,
        GateRequest,
        GateState,
        RunClose,
        RunIdentity,
        RunOpen,
        RunState,
        RunStatus,
        SagaEntry,
        StepRecord,
        ToolCall,
        ToolInvocation,
        ToolOutcome,
        args_digest,
    )
    from lockgate.people import SignedStatement
    from lockgate.spec import Agent
    from lockgate.workflows.agent import (
        GATE_CALL,
        RUN_CALL,
        SA_AGENT,
        SA_INITIATOR,
        SA_PENDING,
        SA_STATE,
        TOOL_CALL,
    )
    from lockgate.workflows.approvals import ApprovalDesk, CallDenied

__all__ = ["Denied", "RunGovernor"]

T = TypeVar("T")

# The identity a drop-in run's approvals are checked against when its starter set no
# `LockgateInitiator` search attribute (separation of duties still excludes the owner).
UNKNOWN_INITIATOR = "app"


class Denied(CallDenied):
    """A governed call that will not run: denied, rejected or expired. `on_deny` says what to do."""

    def __init__(self, message: str, kind: str, on_deny: Denial) -> None:
        super().__init__(message, kind)
        self.on_deny = on_deny


class RunGovernor(ApprovalDesk):
    """The governed part of one workflow execution (created lazily by the interceptor)."""

    def __init__(self) -> None:
        self._enabled: bool | None = None
        self._run_id = workflow.info().workflow_id
        self._origin = workflow.info().first_execution_run_id or workflow.info().run_id
        self._identity: RunIdentity | None = None
        self._agent: Agent | None = None
        self._opening: asyncio.Future[RunIdentity] | None = None
        self._deadline_at: datetime | None = None
        self._initiator = UNKNOWN_INITIATOR
        self._state: RunState = "running"
        self._step = 0
        self._evaluations = 0
        self._saga: list[SagaEntry] = []
        self._saga_agents: dict[int, Agent] = {}  # step -> the agent whose call it undoes
        self._outstanding: list[SagaEntry] = []
        self._steps: list[StepRecord] = []
        self._compensated: list[StepRecord] = []
        # Pending requests, verdicts, signed evidence, halted: lockgate's own (workflows/approvals.py).
        self._init_approvals()
        self._chain = Chain()
        # Set by the interceptor: what stops the app's own workflow code when a verified halt lands.
        self.on_halt: Callable[[], object] | None = None
        self._in_flight = 0
        self._spent = 0
        self._tainted = False
        self._call_times: dict[str, list[datetime]] = {}
        self._error: str | None = None

    # -- patching ----------------------------------------------------------------------------------
    def enabled(self) -> bool:
        """Whether this run is governed. A run that reached its first tool call before lockgate was
        added replays that call without the patch marker and stays ungoverned to the end, so adding
        the plugin never breaks a run in flight (README "Adding lockgate to runs in flight")."""
        if self._enabled is None:
            self._enabled = workflow.patched(PATCH_ID)
        return self._enabled

    @property
    def opened(self) -> bool:
        return self._identity is not None

    # -- handlers ----------------------------------------------------------------------------------
    def install_handlers(self) -> None:
        """The handlers the CLI and the inbox use (the same as lockgate's agent workflow), unless the
        app's workflow defines the same names."""
        updates: tuple[tuple[str, Callable[..., Any]], ...] = (
            ("approve", self._approve_update),
            ("reject", self._reject_update),
            ("halt", self._halt_update),
        )
        for name, update_handler in updates:
            if workflow.get_update_handler(name) is None:
                workflow.set_update_handler(name, update_handler)
        for name, signal_handler in (
            ("approve", self._approve_signal),
            ("reject", self._reject_signal),
            ("unfreeze", self._unfreeze),
        ):
            if workflow.get_signal_handler(name) is None:
                workflow.set_signal_handler(name, signal_handler)
        for name, query_handler in (
            ("pending_approvals", self._pending_approvals),
            ("approval_attempt", self._approval_attempt),
            ("status", self._status),
        ):
            if workflow.get_query_handler(name) is None:
                workflow.set_query_handler(name, query_handler)

    # -- the governed call -------------------------------------------------------------------------
    async def call(
        self,
        agent: Agent,
        tool: str,
        args: dict[str, Any],
        run: Callable[[DropinCall], Awaitable[T]],
        *,
        binding: str,
        activity: bool,
    ) -> T:
        """One governed call: gate -> (approval) -> `run` with the header the activity checks.

        Raises:
            Denied: the call will not run (denied, rejected, expired); the caller applies `on_deny`.
        """
        if not self.enabled():
            return await run(DropinCall(mode="legacy"))
        if self._halted:
            raise asyncio.CancelledError()
        await self._open(agent)
        assert self._agent is not None
        self._step += 1
        step = self._step
        key = f"{self._run_id}:{step}"
        spec = agent.tool(tool)
        call = ToolCall(tool=tool, args=args)
        if spec is not None and spec.compensation:
            # Registered before the step runs: a crash mid-step still gets compensated (compensations
            # are idempotent, so undoing a step that never happened is a no-op).
            self._saga.append(SagaEntry(step=step, tool=spec.compensation, args={"idempotency_key": key}))
            self._saga_agents[step] = agent
        approvals: tuple[SignedStatement, ...] = ()
        while True:
            request = self._request(agent, call, step, approvals)
            verdict = await workflow.execute_local_activity(
                "dropin.gate", request, result_type=DropinVerdict, **GATE_CALL
            )
            decision = verdict.decision
            if decision.outcome == "allow":
                break
            if decision.gate == "kill_switch" and decision.outcome == "deny":
                await self._wait_unfrozen()
                continue
            try:
                if decision.outcome == "approval":
                    # Signed approvals as evidence: `dropin.gate` (and every attempt) verifies them.
                    approvals = await self._approval(agent, call, step, decision, approvals)
                    continue
                raise CallDenied(
                    f"step {step} {tool} denied by {decision.gate}: {'; '.join(decision.reasons)}", errors.TOOL_DENIED
                )
            except CallDenied as denied:
                self._drop_saga(step)
                self._record(step, call, request, decision, error=str(denied))
                raise Denied(str(denied), denied.kind, verdict.on_deny) from None
            except (asyncio.CancelledError, CancelledError):
                self._drop_saga(step)  # halted while waiting: the tool never ran
                raise
        header = DropinCall(
            mode="governed",
            request=request,
            idempotency_key=key,
            binding=binding,  # type: ignore[arg-type]
        )
        self._in_flight += 1
        try:
            result = await run(header)
        except (ActivityError, ApplicationError) as err:
            self._record(step, call, request, decision, error=_message(err))
            raise
        finally:
            self._in_flight -= 1
        if spec is not None:
            self._spent += spec.cost_of(args)
            self._tainted = self._tainted or spec.data_class == "regulated"
            self._chain = self._chain.after(spec.name, spec.resource_of(args), spec.data_class, spec.egress)
        self._call_times.setdefault(tool, []).append(workflow.now())
        self._record(step, call, request, decision)
        if not activity:
            # A tool that ran in workflow code: its completion goes to the ledger from here (an
            # activity's own attempt records it), so its compensation can be verified and reaped.
            await self._audit(
                "tool.completed",
                str(step),
                {
                    "tool": tool,
                    "step": step,
                    "summary": str(result)[:200],
                    "idempotency_key": key,
                    "lease_id": None,
                    "decision_id": decision.decision_id,
                    "compensates": None,
                },
                event_key=f"tool.completed:{self._run_id}:{step}",
            )
        return result

    def _drop_saga(self, step: int) -> None:
        if self._saga and self._saga[-1].step == step:
            self._saga.pop()
        else:
            self._saga = [e for e in self._saga if e.step != step]

    def _request(self, agent: Agent, call: ToolCall, step: int, approvals: tuple[SignedStatement, ...]) -> GateRequest:
        self._evaluations += 1
        limit = agent.rate_limits.get(call.tool)
        recent: tuple[datetime, ...] = ()
        if limit is not None:
            now = workflow.now()
            recent = tuple(t for t in self._call_times.get(call.tool, []) if now - t < limit[1])
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
                deadline_at=self._deadline_at,
                recent_calls=recent,
                chain=self._chain,
            ),
            source="planner",
            approvals=approvals,
        )

    def _record(
        self, step: int, call: ToolCall, request: GateRequest, decision: Decision, *, error: str | None = None
    ) -> None:
        self._steps.append(
            StepRecord(
                step=step,
                tool=call.tool,
                args_digest=args_digest(call.args),
                outcome=decision.outcome,
                gate=decision.gate,
                decision_id=decision.decision_id or request.decision_id,
                policy_ids=decision.policy_ids,
                reasons=decision.reasons,
                error=error,
            )
        )

    # -- run lifecycle -----------------------------------------------------------------------------
    async def _open(self, agent: Agent) -> None:
        """The run's own Vault identity, opened at its first governed call (concurrent calls wait)."""
        if self._identity is not None:
            return
        if self._opening is not None:
            await self._opening
            return
        self._opening = asyncio.get_running_loop().create_future()
        try:
            initiator = workflow.info().typed_search_attributes.get(SA_INITIATOR)
            self._initiator = initiator or UNKNOWN_INITIATOR
            self._agent = agent
            self._deadline_at = workflow.now() + agent.deadline
            workflow.upsert_search_attributes(
                [
                    SA_AGENT.value_set(agent.name),
                    SA_STATE.value_set("running"),
                    SA_PENDING.value_set([]),
                ]
            )
            # `dropin.open`, not `run.open`: the app's own client started this run, with no person's
            # signed start (the initiator it names is recorded as such, unverified).
            identity = await workflow.execute_activity(
                "dropin.open",
                RunOpen(
                    run_id=self._run_id,
                    agent=agent.name,
                    initiator=self._initiator,
                    ttl_seconds=max(1, int(agent.deadline.total_seconds())),
                    origin_run_id=self._origin,
                ),
                result_type=RunIdentity,
                **RUN_CALL,
            )
        except BaseException as err:
            self._opening.set_exception(err)
            self._opening = None
            raise
        self._identity = identity
        self._opening.set_result(identity)

    async def close(self, failure: BaseException | None) -> None:
        """End of the run: compensate (on failure or halt), then revoke the run's identity."""
        if self._identity is None or self._agent is None:
            return
        final: RunState = "completed"
        if failure is not None:
            final = (
                "halted" if self._halted or isinstance(failure, (asyncio.CancelledError, CancelledError)) else "failed"
            )
            self._error = self._error or (
                f"halted: {self._halt_reason or 'cancelled'}" if final == "halted" else _message(failure)
            )
            self._set_state("compensating")
            await self._compensate(self._agent)
        await workflow.execute_activity(
            "run.close",
            RunClose(
                run_id=self._run_id,
                accessor=self._identity.accessor,
                state=final,
                origin_run_id=self._origin,
                reason=self._error,
                outstanding=tuple(self._outstanding),
            ),
            result_type=bool,
            **RUN_CALL,
        )
        self._set_state(final)

    async def _compensate(self, agent: Agent) -> None:
        """Registered compensations in reverse, each a governed lockgate tool; one failing does not
        stop the others (it stays outstanding in the ledger and the reaper retries it)."""
        while self._saga:
            entry = self._saga.pop()
            agent = self._saga_agents.get(entry.step, agent)
            self._step += 1
            step = self._step
            call = ToolCall(tool=entry.tool, args=entry.args, rationale=f"compensate step {entry.step}")
            self._evaluations += 1
            request = GateRequest(
                decision_id=f"{self._run_id}/{step}/{self._evaluations}",
                run_id=self._run_id,
                agent=agent.name,
                initiator=self._initiator,
                step=step,
                call=call,
                state=GateState(deadline_at=None),
                compensation=True,
                source="engine",
            )
            invocation = ToolInvocation(
                run_id=self._run_id,
                step=step,
                tool=entry.tool,
                idempotency_key=f"{self._run_id}:{step}",
                gate=request,
                compensates=str(entry.args.get("idempotency_key")),
            )
            try:
                outcome = await workflow.execute_activity(
                    f"tool.{entry.tool}", invocation, result_type=ToolOutcome, **TOOL_CALL
                )
            except ActivityError as err:
                self._outstanding.append(entry)
                self._error = f"{self._error}; compensation of step {entry.step} failed: {_message(err)}"
                continue
            if not outcome.ran:
                self._outstanding.append(entry)
                self._error = f"{self._error}; compensation of step {entry.step} was not allowed"
                continue
            self._compensated.append(
                StepRecord(
                    step=step,
                    tool=entry.tool,
                    args_digest=outcome.decision.args_digest,
                    outcome="allow",
                    gate=outcome.decision.gate,
                    decision_id=outcome.decision.decision_id,
                    policy_ids=outcome.decision.policy_ids,
                    lease_id=outcome.lease.lease_id if outcome.lease else None,
                    summary=outcome.summary,
                )
            )

    # -- approvals (asking and judging: ApprovalDesk, as in workflows/agent.py) ---------------------
    async def _approve_update(self, signed: SignedStatement) -> ApprovalAttempt:
        return await self._on_statement(signed.model_dump(mode="json"), "approve")

    async def _reject_update(self, signed: SignedStatement) -> ApprovalAttempt:
        return await self._on_statement(signed.model_dump(mode="json"), "reject")

    # Raw signals (what `temporal workflow signal` sends): judged exactly like the updates, so a
    # forged or unsigned one is refused and shows in the audit.
    async def _approve_signal(self, payload: Any) -> None:
        await self._on_statement(payload, "approve")

    async def _reject_signal(self, payload: Any) -> None:
        await self._on_statement(payload, "reject")

    async def _halt_update(self, signed: SignedStatement) -> str:
        """An operator's signed halt (`halt.verify`): every wait ends, the app's code is cancelled,
        and the run compensates and closes as `halted`."""
        answer = await self._on_halt(signed)
        if self._halted and self.on_halt is not None:
            self.on_halt()
        return answer

    # -- queries -----------------------------------------------------------------------------------
    def _pending_approvals(self) -> list[ApprovalRequest]:
        return list(self._pending.values())

    def _approval_attempt(self, attempt_id: str) -> ApprovalAttempt | None:
        return self._attempts.get(attempt_id)

    def _status(self) -> RunStatus:
        agent = self._agent
        return self._run_status(agent.name if agent else "", self._initiator, agent.owner if agent else "")


def _message(err: BaseException) -> str:
    cause: BaseException = err
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause) or type(cause).__name__
