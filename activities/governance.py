"""Activities of the governance lifecycle: `gate.evaluate`, `run.open`, `run.close`.

All are synchronous (hvac, the ledger) and run in the worker's thread pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from lockgate.activities.freeze import FreezeStore
from lockgate.activities.ledger import Ledger
from lockgate.activities.vault import VaultBroker
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.engine import evaluate
from temporalio import activity
from temporalio.exceptions import ApplicationError

from lockgate.errors import BAD_INPUT
from lockgate.models import AuditEvent, Decision, GateRequest, RunClose, RunIdentity, RunOpen
from lockgate.observability import span
from lockgate.spec import AgentRegistry

__all__ = ["GovernanceActivities", "bundle_content", "record_decision"]

log = logging.getLogger("lockgate.gate")


def bundle_content(bundle: PolicyBundle) -> dict[str, object]:
    """The bundle's source files, verbatim: rebuilt, they hash to `bundle.hash` (replay checks)."""
    return {"policies": bundle.sources, "schema": bundle.schema_text, "entities": bundle.entities_json}


def record_decision(ledger: Ledger, decision: Decision, request: GateRequest) -> None:
    """A gate decision in the ledger, with the exact request evaluated (args, run state, freeze) so
    that `lockgate replay` can re-check it against the bundle recorded by its hash."""
    ledger.try_append(
        f"decision:{decision.decision_id}",
        decision.run_id,
        "decision",
        {
            "decision_id": decision.decision_id,
            "step": decision.step,
            "tool": decision.tool,
            "args_digest": decision.args_digest,
            "outcome": decision.outcome,
            "gate": decision.gate,
            "policy_ids": list(decision.policy_ids),
            "reasons": list(decision.reasons),
            "bundle_hash": decision.bundle_hash,
            "approver_group": decision.approver_group,
            "quorum": decision.quorum,
            "confidence": request.call.confidence,
            "rationale": request.call.rationale,
            "state": request.state.model_dump(mode="json"),
            "initiator": request.initiator,
            "agent": request.agent,
            "request": request.model_dump(mode="json"),
        },
        at=decision.at,
    )


class GovernanceActivities:
    def __init__(
        self,
        *,
        bundle: Callable[[], PolicyBundle],
        agents: AgentRegistry,
        ledger: Ledger,
        vault: VaultBroker,
        freezes: FreezeStore | None = None,
    ) -> None:
        self._freezes = freezes
        self._bundle = bundle
        self._agents = agents
        self._ledger = ledger
        self._vault = vault

    def decide(self, request: GateRequest, *, attempt: int = 1) -> Decision:
        """Evaluates one gate request (kill switch read from the shared store), records the decision
        in the ledger and the log. Used by `gate.evaluate` and inside every tool activity."""
        if attempt > 1:
            # A retried tool activity decides again (a freeze may have landed meanwhile): its own record.
            request = request.model_copy(update={"decision_id": f"{request.decision_id}@{attempt}"})
        if self._freezes is not None and self._freezes.is_frozen(request.agent):
            request = request.model_copy(update={"state": request.state.model_copy(update={"frozen": True})})
        with span("lockgate.gate", run_id=request.run_id, step=request.step, tool=request.call.tool):
            decision = evaluate(
                self._bundle(),
                self._agents.get(request.agent),
                request,
                now=datetime.now(UTC),
                lookup=self._agents.get,
            )
        record_decision(self._ledger, decision, request)
        log.info(
            "decision run=%s step=%s tool=%s outcome=%s gate=%s policies=%s",
            decision.run_id,
            decision.step,
            decision.tool,
            decision.outcome,
            decision.gate,
            ",".join(decision.policy_ids),
            extra={
                "run_id": decision.run_id,
                "step": decision.step,
                "tool": decision.tool,
                "outcome": decision.outcome,
                "gate": decision.gate,
                "decision_id": decision.decision_id,
                "policies": list(decision.policy_ids),
            },
        )
        return decision

    @activity.defn(name="gate.evaluate")
    def evaluate(self, request: GateRequest) -> Decision:
        if request.run_id != activity.info().workflow_id:
            # A workflow may only ask about its own calls.
            raise ApplicationError("gate request names another run", type=BAD_INPUT, non_retryable=True)
        return self.decide(request)

    @activity.defn(name="run.open")
    def open_run(self, request: RunOpen) -> RunIdentity:
        agent = self._agents.get(request.agent)
        if agent is None:
            raise ApplicationError(f"unknown agent {request.agent!r}", type=BAD_INPUT, non_retryable=True)
        policy = request.vault_policy or agent.vault_policy
        identity = self._vault.open_run(request.run_id, agent.name, policy, request.ttl_seconds)
        self._ledger.try_append(
            f"run.opened:{request.run_id}",
            request.run_id,
            "run.opened",
            {
                "agent": agent.name,
                "owner": agent.owner,
                "initiator": request.initiator,
                "parent_run_id": request.parent_run_id,
                "identity_accessor": identity.accessor,
                "policies": list(identity.policies),
                "expires_at": identity.expires_at.isoformat(),
            },
        )
        return identity

    @activity.defn(name="run.close")
    def close_run(self, request: RunClose) -> bool:
        revoked = self._vault.close_run(request.run_id, request.accessor)
        self._ledger.try_append(
            f"run.closed:{request.run_id}",
            request.run_id,
            "run.closed",
            {
                "state": request.state,
                "reason": request.reason,
                "identity_accessor": request.accessor,
                "identity_revoked": True,
                "revoked_by_this_call": revoked,
            },
        )
        # Seal the run's chain now (final): nothing can be appended to it unnoticed afterwards.
        self._ledger.seal()
        return revoked

    @activity.defn(name="audit.record")
    def record(self, event: AuditEvent) -> bool:
        return self._ledger.try_append(event.event_key, event.run_id, event.kind, event.data, at=event.at)
