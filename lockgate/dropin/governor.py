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
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import CancelledError

with workflow.unsafe.imports_passed_through():
    from lockgate import names
    from lockgate.dropin.models import PATCH_ID, DropinCall, DropinVerdict
    from lockgate.dropin.spec import DENIAL_DEFAULT, Denial
    from lockgate.models import (
        ApprovalAttempt,
        ApprovalRequest,
        GateRequest,
        RunClose,
        RunIdentity,
        RunOpen,
        RunState,
        RunStatus,
        ToolCall,
    )
    from lockgate.names import SA_AGENT, SA_INITIATOR, SA_PENDING, SA_STATE
    from lockgate.people import SignedStatement
    from lockgate.spec import Agent
    from lockgate.workflows.agent import RUN_CALL
    from lockgate.workflows.approvals import CallDenied
    from lockgate.workflows.governed import GATE_CALL, Attempt, GovernedRun, message_of

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


class RunGovernor(GovernedRun):
    """The governed part of one workflow execution (created lazily by the interceptor)."""

    def __init__(self, start: SignedStatement | None = None, input_digest: str = "") -> None:
        self._start = start
        self._input_digest = input_digest
        self._enabled: bool | None = None
        self._agent: Agent | None = None
        self._opening: asyncio.Future[RunIdentity] | None = None
        self._init_governed(initiator=UNKNOWN_INITIATOR)
        # Set by the interceptor: what stops the app's own workflow code when a verified halt lands.
        self.on_halt: Callable[[], object] | None = None
        # Set by the interceptor: the declarations of the worker (or replayer) running this execution
        # (a `DropinIndex`); a process may host several, each with its own.
        self.index: Any = None

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

    # -- the governed call (workflows/governed.py) ---------------------------------------------------
    async def call(
        self,
        agent: Agent,
        tool: str,
        args: dict[str, Any],
        run: Callable[[DropinCall], Awaitable[T]],
        *,
        binding: str,
        activity: bool,
        summarize: Callable[[Any], str] = lambda result: f"returned {type(result).__name__}",
    ) -> T:
        """One governed call: `dropin.gate` -> (approval) -> `run` with the header the activity checks.

        Raises:
            Denied: the call will not run (denied, rejected, expired); the caller applies `on_deny`.
        """
        if not self.enabled():
            return await run(DropinCall(mode="legacy"))
        if self._halted:
            raise asyncio.CancelledError()
        await self._open(agent)
        on_deny: list[Denial] = [DENIAL_DEFAULT]
        asked = [0]  # the step of this call (others may run concurrently)

        async def invoke(request: GateRequest, key: str) -> Attempt:
            asked[0] = request.step
            verdict = await workflow.execute_local_activity(
                names.DROPIN_GATE, request, result_type=DropinVerdict, **GATE_CALL
            )
            on_deny[0] = verdict.on_deny
            if verdict.decision.outcome != "allow":
                return Attempt(decision=verdict.decision, ran=False)
            header = DropinCall(mode="governed", request=request, idempotency_key=key, binding=binding)  # type: ignore[arg-type]
            return Attempt(decision=verdict.decision, ran=True, result=await run(header))

        try:
            attempt = await self.governed_call(agent, ToolCall(tool=tool, args=args), invoke)
        except CallDenied as denied:
            raise Denied(str(denied), denied.kind, on_deny[0]) from None
        except Exception as err:
            if not activity:
                # A tool that raised in workflow code: failed, in the ledger as in `status`.
                step = asked[0]
                await self._audit(
                    "tool.failed",
                    str(step),
                    {"tool": tool, "step": step, "error": message_of(err)[:500], "attempt": 1},
                    event_key=f"tool.failed:{self._run_id}:{step}:1",
                )
            raise
        if not activity:
            # A tool that ran in workflow code: its completion goes to the ledger from here (an
            # activity's own attempt records it), so its compensation can be verified and reaped.
            await self._audit(
                "tool.completed",
                str(attempt.step),
                {
                    "tool": tool,
                    "step": attempt.step,
                    "summary": summarize(attempt.result),
                    "idempotency_key": f"{self._run_id}:{attempt.step}",
                    "lease_id": None,
                    "decision_id": attempt.decision.decision_id,
                    "compensates": None,
                },
                event_key=f"tool.completed:{self._run_id}:{attempt.step}",
            )
        return attempt.result

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
            # The person who signed the start (verified by `dropin.open`); without one, what the
            # starter named (recorded as unverified, and then no approval counts).
            named = workflow.info().typed_search_attributes.get(SA_INITIATOR)
            self._initiator = self._start.statement.person if self._start else (named or UNKNOWN_INITIATOR)
            self._agent = agent
            self._deadline_at = workflow.now() + agent.deadline
            workflow.upsert_search_attributes(
                [
                    SA_AGENT.value_set(agent.name),
                    SA_STATE.value_set("running"),
                    SA_PENDING.value_set([]),
                ]
            )
            # `dropin.open`, not `run.open`: the app's own client started this run (its signed start
            # binds the workflow type, not a lockgate agent).
            identity = await workflow.execute_activity(
                names.DROPIN_OPEN,
                RunOpen(
                    run_id=self._run_id,
                    agent=agent.name,
                    initiator=self._initiator,
                    ttl_seconds=max(1, int(agent.deadline.total_seconds())),
                    origin_run_id=self._origin,
                    start=self._start,
                    input_digest=self._input_digest,
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
        # A halted run closes halted and compensates, also when the app's code caught the
        # cancellation and returned as if nothing happened.
        if failure is not None or self._halted:
            cancelled = isinstance(failure, (asyncio.CancelledError, CancelledError))
            final = "halted" if self._halted or cancelled else "failed"
            self._error = self._error or (
                f"halted: {self._halt_reason or 'cancelled'}"
                if failure is None or final == "halted"
                else message_of(failure)
            )
            self._set_state("compensating")
            await self._compensate(self._agent)
        await workflow.execute_activity(
            names.RUN_CLOSE,
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
