"""Tool activities (`tool.<name>`): gate, lease, run, revoke — in that order, always.

The gate runs inside the tool's own activity, so there is no path to a tool that skips it: a raw
`execute_activity` by a workflow author is gated exactly like a planner's proposal.

A tool's implementation is a plain function `(ToolContext, args) -> dict` bound to its declaration
by object (`@lockgate.tool` or `Tool(fn=...)`). The credential it gets lives only in the `ToolContext` of one call: it is
not returned, logged or recorded. Only the `LeaseRef` leaves the activity.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from lockgate import metrics
from lockgate.activities.ledger import Ledger
from lockgate.activities.vault import LeaseForbidden, VaultBroker
from lockgate.context import ForwardCall, Resources, ToolContext, ToolError
from lockgate.errors import BAD_INPUT, LEASE_FORBIDDEN, TOOL_DENIED, TOOL_FAILED
from lockgate.models import Decision, GateRequest, LeaseRef, ToolInvocation, ToolOutcome
from lockgate.observability import span
from lockgate.spec import AgentRegistry, ToolSpec, describe_validation

__all__ = ["Resources", "ToolContext", "ToolError", "ToolRunner"]

log = logging.getLogger("lockgate.tools")


ToolImpl = Callable[[ToolContext, Any], dict[str, Any]]


def summarize(result: dict[str, Any]) -> str:
    summary = result.get("summary")
    return str(summary) if summary else ", ".join(sorted(result))[:200]


class ToolRunner:
    def __init__(
        self,
        *,
        agents: AgentRegistry,
        vault: VaultBroker,
        ledger: Ledger,
        gate: Callable[..., Decision],
        resources: Resources,
    ) -> None:
        self._agents = agents
        self._vault = vault
        self._ledger = ledger
        self._gate = gate
        self._resources = resources

    def activities(self) -> list[Callable[..., Any]]:
        """One activity per declared tool that has an implementation."""
        out = []
        for spec in self._agents.tools():
            if spec.fn is not None:
                out.append(self._activity(spec, spec.fn))
        return out

    def _activity(self, spec: ToolSpec, impl: ToolImpl) -> Callable[..., Any]:
        def run_tool(invocation: ToolInvocation) -> ToolOutcome:
            return self.run(spec, impl, invocation)

        run_tool.__name__ = f"tool_{spec.name.replace('.', '_')}"
        return activity.defn(name=spec.activity_name)(run_tool)

    def run(self, spec: ToolSpec, impl: ToolImpl, inv: ToolInvocation) -> ToolOutcome:
        """The body of `tool.<name>`: evaluates its gate; only on allow leases, runs, revokes."""
        info = activity.info()
        if (
            inv.tool != spec.name
            or inv.gate.call.tool != spec.name
            or inv.gate.step != inv.step
            or inv.run_id != info.workflow_id
            or inv.gate.run_id != info.workflow_id
        ):
            # A call for another tool, step or run than the one this activity is: refuse.
            self._ledger.try_append(
                f"tool.refused:{info.workflow_id}:{info.activity_id}:{info.attempt}",
                info.workflow_id,
                "tool.refused",
                {"tool": spec.name, "step": inv.step, "reason": "invocation names another tool or run"},
            )
            raise ApplicationError(
                f"{spec.name}: invocation names another tool, step or run", type=BAD_INPUT, non_retryable=True
            )
        if inv.gate.compensation:
            refused = self._check_compensation(spec, inv)
            if refused:
                self._ledger.try_append(
                    f"tool.refused:{info.workflow_id}:{info.activity_id}:{info.attempt}",
                    info.workflow_id,
                    "tool.refused",
                    {"tool": spec.name, "step": inv.step, "reason": refused},
                )
                raise ApplicationError(f"{spec.name}: {refused}", type=BAD_INPUT, non_retryable=True)
        decision = self._gate(inv.gate, attempt=info.attempt)
        if decision.outcome != "allow":
            return ToolOutcome(tool=spec.name, step=inv.step, decision=decision, ran=False)
        # An earlier attempt that died after leasing left its lease id in heartbeat details:
        # revoke it now rather than leave it to its TTL.
        for stale in _stale_leases(info.heartbeat_details):
            self._vault.revoke(stale)
            self._ledger.try_append(
                f"lease.revoked:{stale}",
                inv.run_id,
                "lease.revoked",
                {"lease_id": stale, "tool": spec.name, "step": inv.step, "by": "next-attempt"},
            )
        return self._execute(spec, impl, inv, decision, attempt=info.attempt, heartbeat=activity.heartbeat)

    def _check_compensation(self, spec: ToolSpec, inv: ToolInvocation) -> str | None:
        """A compensation claim holds only for a step of this run that the ledger shows completed by
        a tool this one compensates, with exactly the args the engine derives from it. Returns why
        not, or None. (Compensations escape the kill switch and a sub-agent's narrower boundary, so
        the claim itself must be unforgeable.)"""
        agent = self._agents.get(inv.gate.agent)
        forward = {t.name for t in (agent.tools if agent else ()) if t.compensation == spec.name}
        if not forward:
            return f"{spec.name} compensates no tool of agent {inv.gate.agent!r}"
        key = inv.compensates
        if not key or inv.args != {"idempotency_key": key}:
            return "compensation args are not the ones the engine derives from the step"
        run_id, _, step = key.rpartition(":")
        if run_id != inv.run_id or not step.isdigit():
            return "compensation names a step of another run"
        done = [
            e
            for e in self._ledger.events(inv.run_id)
            if e["kind"] == "tool.completed"
            and e.get("idempotency_key") == key
            and e.get("tool") in forward
            and not e.get("compensates")
        ]
        if not done and _failed_step(self._ledger.events(inv.run_id), int(step), forward) is None:
            return (
                f"no completed step {step} of a tool {spec.name} compensates in this run "
                "(nor one that raised after its gate allowed it)"
            )
        return None

    def _forward_of(self, run_id: str, key: str) -> ForwardCall | None:
        """The completed call `key` names, with the args its gate allowed, from the run's ledger."""
        events = self._ledger.events(run_id)
        done = next(
            (
                e
                for e in events
                if e["kind"] == "tool.completed" and e.get("idempotency_key") == key and not e.get("compensates")
            ),
            None,
        )
        if done is None:
            # A forward call that raised may have acted before it did: its compensation still runs,
            # with the args its gate allowed (nothing of a result: there was none).
            step = key.rpartition(":")[2]
            failed = _failed_step(events, int(step), None) if step.isdigit() else None
            if failed is None:
                return None
            done = {**failed, "summary": ""}
        decided = next(
            (e for e in events if e["kind"] == "decision" and e.get("decision_id") == done.get("decision_id")), None
        )
        args = ((decided or {}).get("request") or {}).get("call", {}).get("args") or {}
        return ForwardCall(
            tool=str(done.get("tool")),
            step=int(done.get("step", 0)),
            args=dict(args),
            summary=str(done.get("summary") or ""),
        )

    def run_direct(
        self,
        tool: str,
        *,
        run_id: str,
        step: int,
        request: GateRequest,
        decision: Decision,
        idempotency_key: str,
        compensates: str | None = None,
    ) -> ToolOutcome:
        """Runs an allowed call outside any activity, for the reaper (which evaluated the gate itself)."""
        spec = self._agents.tool(tool)
        impl = spec.fn if spec is not None else None
        if spec is None or impl is None:
            raise ApplicationError(f"unknown tool {tool!r}", type=BAD_INPUT, non_retryable=True)
        if decision.outcome != "allow":
            raise ApplicationError(f"{tool}: not allowed", type=TOOL_DENIED, non_retryable=True)
        inv = ToolInvocation(
            run_id=run_id, step=step, tool=tool, idempotency_key=idempotency_key, gate=request, compensates=compensates
        )
        return self._execute(spec, impl, inv, decision, attempt=1, heartbeat=lambda *_: None)

    def _execute(
        self,
        spec: ToolSpec,
        impl: ToolImpl,
        inv: ToolInvocation,
        decision: Decision,
        *,
        attempt: int,
        heartbeat: Callable[..., None],
    ) -> ToolOutcome:
        try:
            args: BaseModel = spec.args.model_validate(inv.args)
        except ValidationError as err:
            raise ApplicationError(
                f"{spec.name}: {describe_validation(err)}", type=BAD_INPUT, non_retryable=True
            ) from None
        ctx = ToolContext(inv.run_id, inv.step, inv.idempotency_key, self._resources)
        if inv.compensates:
            ctx.forward = self._forward_of(inv.run_id, inv.compensates)
        lease: LeaseRef | None = None
        if spec.secret:
            try:
                with span("lockgate.lease", run_id=inv.run_id, step=inv.step, tool=spec.name, secret_path=spec.secret):
                    lease, ctx.secret = self._vault.issue(inv.run_id, spec.secret)
            except LeaseForbidden as err:
                raise ApplicationError(str(err), type=LEASE_FORBIDDEN, non_retryable=True) from None
            heartbeat({"lease_id": lease.lease_id})
            metrics.count("lockgate_leases_issued", "just-in-time credentials leased", tool=spec.name)
            self._ledger.try_append(
                f"lease.issued:{lease.lease_id}",
                inv.run_id,
                "lease.issued",
                {
                    "lease_id": lease.lease_id,
                    "secret_path": lease.secret_path,
                    "ttl_seconds": lease.ttl_seconds,
                    "tool": spec.name,
                    "step": inv.step,
                    "attempt": attempt,
                },
            )
        try:
            _test_pause("LOCKGATE_TEST_PAUSE_AFTER_LEASE", spec.name)
            with span(
                "lockgate.tool",
                run_id=inv.run_id,
                step=inv.step,
                tool=spec.name,
                lease_id=lease.lease_id if lease else None,
            ):
                result = impl(ctx, args)
            _test_pause("LOCKGATE_TEST_PAUSE_AFTER_EFFECT", spec.name)
        except ToolError as err:
            self._record_failure(spec, inv, str(err), attempt, reached=err.reached)
            self._record_blocked(inv, err, attempt)
            raise ApplicationError(f"{spec.name}: {err}", type=TOOL_FAILED, non_retryable=not err.retryable) from None
        finally:
            ctx.secret = {}
            if lease is not None:
                with span("lockgate.revoke", run_id=inv.run_id, step=inv.step, tool=spec.name):
                    self._vault.revoke(lease.lease_id)
                metrics.count("lockgate_leases_revoked", "just-in-time credentials revoked", tool=spec.name)
                self._ledger.try_append(
                    f"lease.revoked:{lease.lease_id}",
                    inv.run_id,
                    "lease.revoked",
                    {"lease_id": lease.lease_id, "tool": spec.name, "step": inv.step, "by": "tool"},
                )
                heartbeat({"lease_id": None})
        summary = summarize(result)
        log.info(
            "tool run=%s step=%s tool=%s done: %s",
            inv.run_id,
            inv.step,
            spec.name,
            summary,
            extra={
                "run_id": inv.run_id,
                "step": inv.step,
                "tool": spec.name,
                "lease_id": lease.lease_id if lease else None,
            },
        )
        self._ledger.try_append(
            f"tool.completed:{inv.run_id}:{inv.step}",
            inv.run_id,
            "tool.completed",
            {
                "tool": spec.name,
                "step": inv.step,
                "summary": summary,
                "idempotency_key": inv.idempotency_key,
                "lease_id": lease.lease_id if lease else None,
                "decision_id": decision.decision_id,
                "compensates": inv.compensates,
            },
        )
        return ToolOutcome(
            tool=spec.name, step=inv.step, decision=decision, ran=True, result=result, lease=lease, summary=summary
        )

    def _record_blocked(self, inv: ToolInvocation, err: ToolError, attempt: int) -> None:
        """An MCP tool blocked by a changed definition: what the server now says, for review."""
        record = getattr(err, "record", None)
        if callable(record):
            self._ledger.try_append(
                f"mcp.blocked:{inv.run_id}:{inv.step}:{attempt}", inv.run_id, "mcp.blocked", record()
            )

    def _record_failure(
        self, spec: ToolSpec, inv: ToolInvocation, error: str, attempt: int, *, reached: bool = True
    ) -> None:
        data: dict[str, Any] = {"tool": spec.name, "step": inv.step, "error": error, "attempt": attempt}
        if not reached:
            data["reached"] = False  # refused before the call reached the system: nothing to undo
        self._ledger.try_append(f"tool.failed:{inv.run_id}:{inv.step}:{attempt}", inv.run_id, "tool.failed", data)


def _failed_step(events: list[dict[str, Any]], step: int, tools: set[str] | None) -> dict[str, Any] | None:
    """The ledger's record of step `step` having raised after its gate allowed it (one of `tools`,
    if given), with that allowing decision's id; None when no such record backs it."""
    failed = next(
        (
            e
            for e in events
            if e["kind"] == "tool.failed"
            and e.get("step") == step
            and e.get("reached", True) is not False
            and (tools is None or e.get("tool") in tools)
        ),
        None,
    )
    if failed is None:
        return None
    allowed = [
        e
        for e in events
        if e["kind"] == "decision"
        and e.get("step") == step
        and e.get("tool") == failed.get("tool")
        and e.get("outcome") == "allow"
    ]
    if not allowed:
        return None
    return {"tool": failed.get("tool"), "step": step, "decision_id": allowed[-1].get("decision_id")}


def _stale_leases(details: Any) -> list[str]:
    out = []
    for item in details or ():
        if isinstance(item, dict) and item.get("lease_id"):
            out.append(str(item["lease_id"]))
    return out


def _test_pause(variable: str, tool: str) -> None:
    """Fault-injection hook for the test suite: with `VARIABLE=tool:marker-path` set, the named
    tool stops here (holding its lease, or after its side effect) until the marker file exists, so
    a test can SIGKILL the worker at exactly that point. Unset in production: costs one lookup."""
    spec = os.environ.get(variable)
    if not spec:
        return
    name, _, marker = spec.partition(":")
    if name != tool:
        return
    Path(marker + ".reached").touch()
    deadline = time.monotonic() + 120
    while not Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
