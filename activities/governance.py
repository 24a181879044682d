"""Activities of the governance lifecycle: `gate.evaluate`, `run.open`, `run.close`.

All are synchronous (hvac, the ledger) and run in the worker's thread pool.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from lockgate import metrics, names
from lockgate.activities.approvals import ApprovalActivities
from lockgate.activities.callers import verified_caller
from lockgate.activities.freeze import FreezeStore
from lockgate.activities.identity import PeopleDirectory, Refused
from lockgate.activities.ledger import Ledger
from lockgate.activities.runstate import recorded_state, stricter
from lockgate.activities.starts import authorize_start
from lockgate.activities.vault import RunMismatch, VaultBroker
from lockgate.errors import BAD_INPUT
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.engine import evaluate
from lockgate.ids import is_run_id
from lockgate.models import (
    DELEGATE_TOOL,
    AuditEvent,
    Decision,
    GateRequest,
    RunClose,
    RunIdentity,
    RunOpen,
    RunSeal,
    canonical_json,
)
from lockgate.observability import span
from lockgate.people import FieldValue
from lockgate.spec import AgentRegistry

__all__ = ["TENANT_GROUP_PREFIX", "GovernanceActivities", "bundle_content", "record_decision"]

# A person starts a run for tenant T only as a member of Vault group `tenant-T`.
TENANT_GROUP_PREFIX = "tenant-"

# Vault reads started ahead of the checks that precede their use (see open_identity).
_VAULT_READS = ThreadPoolExecutor(8, thread_name_prefix="lockgate-vault-read")

log = logging.getLogger("lockgate.gate")

# A signed start is accepted this long after it was signed (a captured one cannot start runs later).
START_MAX_AGE = timedelta(minutes=15)


def bundle_content(bundle: PolicyBundle) -> dict[str, object]:
    """The bundle's source files, verbatim: rebuilt, they hash to `bundle.hash` (replay checks)."""
    return {"policies": bundle.sources, "schema": bundle.schema_text, "entities": bundle.entities_json}


def decision_phase(request: GateRequest, attempt: int = 1) -> str:
    """What an evaluation was, for the timeline: the gate before a call, its re-check once approvals
    came, a retried attempt's own re-check, or the run-time re-check of a drop-in activity."""
    if request.decision_id.endswith("/attempt") or "/attempt@" in request.decision_id:
        return "run-time re-check"
    if attempt > 1:
        return f"re-check (attempt {attempt})"
    if request.approvals:
        return "re-check after approval"
    if request.compensation:
        return "compensation"
    return "gate"


def record_decision(ledger: Ledger, decision: Decision, request: GateRequest, phase: str = "gate") -> None:
    """A gate decision in the ledger, with the exact request evaluated (args, run state, freeze) so
    that `lockgate replay` can re-check it against the bundle recorded by its hash."""
    ledger.try_append(
        f"decision:{decision.decision_id}",
        decision.run_id,
        "decision",
        {
            "decision_id": decision.decision_id,
            "phase": phase,
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
        bundle: Callable[..., PolicyBundle],
        agents: AgentRegistry,
        ledger: Ledger,
        vault: VaultBroker,
        freezes: FreezeStore,
        people: PeopleDirectory,
        approvals: ApprovalActivities,
        shadow: Callable[[GateRequest, Decision], None] | None = None,
    ) -> None:
        # No optional control: a worker without the kill switch, the people directory or the approval
        # judge would run unfrozen, with unchecked starts, or with approvals silently ignored.
        self._freezes = freezes
        self._people = people
        self._approvals = approvals
        self._bundle = bundle  # agent name -> the bundle that decides it (its team's, or the local one)
        self._shadow = shadow
        self._tenants: dict[str, str] = {}  # run id -> its verified tenant
        self._agents = agents
        self._ledger = ledger
        self._vault = vault

    def decide(self, request: GateRequest, *, attempt: int = 1) -> Decision:
        """Evaluates one gate request (kill switch read from the shared store), records the decision
        in the ledger and the log. Used by `gate.evaluate` and inside every tool activity."""
        started = datetime.now(UTC)
        if attempt > 1:
            # A retried tool activity decides again (a freeze may have landed meanwhile): its own record.
            request = request.model_copy(update={"decision_id": f"{request.decision_id}@{attempt}"})
        # Approvals count only as verified here (signature, group now, separation of duties, the
        # decision they answer, quorum of distinct people): whatever groups the workflow claims,
        # the gate sees only these.
        groups: tuple[str, ...] = ()
        if request.approvals:
            groups, refused = self._approvals.approved_groups(request)
            for n, line in enumerate(refused):
                self._ledger.try_append(
                    f"approval.not_counted:{request.decision_id}:{n}",
                    request.run_id,
                    "approval.not_counted",
                    {"step": request.step, "tool": request.call.tool, "reason": line},
                )
        request = request.model_copy(update={"state": request.state.model_copy(update={"approved_groups": groups})})
        request = self._against_ledger(request)
        request = self._with_tenant(request)
        if self._freezes.is_frozen(request.agent):
            request = request.model_copy(update={"state": request.state.model_copy(update={"frozen": True})})
        with span("lockgate.gate", run_id=request.run_id, step=request.step, tool=request.call.tool):
            decision = evaluate(
                self._bundle(request.agent),
                self._agents.get(request.agent),
                request,
                now=datetime.now(UTC),
                lookup=self._agents.get,
            )
        phase = decision_phase(request, attempt)
        record_decision(self._ledger, decision, request, phase)
        if self._shadow is not None:
            self._shadow(request, decision)  # a candidate bundle's would-be decision: recorded, no effect
        metrics.decided(decision.outcome, decision.gate, phase, datetime.now(UTC) - started)
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

    def _against_ledger(self, request: GateRequest) -> GateRequest:
        """The request with the run state the gate may believe: the stricter of the workflow's claim
        and the run's ledger (activities/runstate.py)."""
        agent = self._agents.get(request.agent)
        limit = agent.rate_limits.get(request.call.tool) if agent is not None else None
        # The run's rows read incrementally (only what is new since this worker's last gate of it).
        recorded = recorded_state(self._ledger.run_events, self._agents, request.run_id)
        state = stricter(request, recorded, limit[1].total_seconds() if limit is not None else None, datetime.now(UTC))
        return request.model_copy(update={"state": state})

    def _with_tenant(self, request: GateRequest) -> GateRequest:
        """The request with the tenant of the run's verified start (its authentic `run.opened`),
        whatever the workflow claimed: a policy can trust `context.run.tenant`."""
        tenant = self._tenants.get(request.run_id)
        if tenant is None:
            opened = next((e for e in self._ledger.events(request.run_id) if e["kind"] == "run.opened"), None)
            tenant = str((opened or {}).get("tenant") or "")
            if opened is not None:  # fixed once the run is open: remembered
                if len(self._tenants) > 10_000:
                    self._tenants.clear()
                self._tenants[request.run_id] = tenant
        if tenant == request.state.tenant:
            return request
        return request.model_copy(update={"state": request.state.model_copy(update={"tenant": tenant})})

    @activity.defn(name=names.GATE_EVALUATE)
    def evaluate(self, request: GateRequest) -> Decision:
        if request.run_id != activity.info().workflow_id:
            # A workflow may only ask about its own calls.
            raise ApplicationError("gate request names another run", type=BAD_INPUT, non_retryable=True)
        if request.compensation:
            # Built-ins never compensate: only a tool activity can verify a compensation claim.
            raise ApplicationError("a built-in call cannot be a compensation", type=BAD_INPUT, non_retryable=True)
        return self.decide(request)

    # -- run identity ----------------------------------------------------------------------------
    def refuse_run(self, run_id: str, origin: str, reason: str) -> ApplicationError:
        """Records a refused run (with why) and returns the non-retryable error that fails it at once."""
        self._ledger.try_append(
            f"run.refused:{run_id}:{origin}:{hashlib.sha256(reason.encode()).hexdigest()[:12]}",
            run_id,
            "run.refused",
            {"reason": reason, "origin_run_id": origin, "workflow_run_id": activity.info().workflow_run_id},
        )
        log.error("run refused run=%s: %s", run_id, reason, extra={"run_id": run_id})
        return ApplicationError(f"run {run_id} refused: {reason}", type=BAD_INPUT, non_retryable=True)

    def _check_run(self, run_id: str, origin: str) -> None:
        info = activity.info()
        if not is_run_id(run_id) or run_id != info.workflow_id:
            raise ApplicationError("invalid run id, or one naming another run", type=BAD_INPUT, non_retryable=True)
        if not origin:
            raise self.refuse_run(run_id, origin, "no origin execution given")
        caller = verified_caller()
        if caller is not None and caller.first_run_id and caller.first_run_id != origin:
            # The first execution is Temporal's fact about the caller, never the caller's claim.
            raise self.refuse_run(run_id, origin, "origin execution is not the caller's first execution")

    @activity.defn(name=names.RUN_OPEN)
    def open_run(self, request: RunOpen) -> RunIdentity:
        expect = {"run_id": request.run_id, "agent": request.agent, "input_digest": request.input_digest}
        return self.open_identity(request, start=expect)

    def open_identity(self, request: RunOpen, *, start: Mapping[str, FieldValue] | None) -> RunIdentity:
        """Opens the run's Vault identity and records `run.opened`.

        Args:
            request: The run to open.
            start: What the person's signed start must bind (their statement names the initiator).
                None only for a governed app that declared `unsigned_starts`: no person signed, so
                the initiator it names is recorded as unverified (and no approval can count).
        """
        self._check_run(request.run_id, request.origin_run_id)
        agent = self._agents.get(request.agent)
        if agent is None:
            raise self.refuse_run(request.run_id, request.origin_run_id, f"unknown agent {request.agent!r}")
        # The run's Vault record is read while the ledger is read and the start is verified (one
        # round trip fewer on the run's critical path); open_run decides on it as if it read it.
        record = _VAULT_READS.submit(self._vault.read_run, request.run_id)
        # A run id names one run forever: the id of a finished run is never reused, never merged.
        events = self._ledger.events(request.run_id)
        earlier = next((e for e in events if e["kind"] == "run.opened"), None)
        if earlier is not None and earlier.get("origin_run_id") != request.origin_run_id:
            raise self.refuse_run(
                request.run_id,
                request.origin_run_id,
                "this run id already belongs to an earlier run (ids are never reused)",
            )
        if any(e["kind"] == "run.closed" for e in events):
            # A closed run stays closed: its identity (and a sub-agent's parent-derived policy) is
            # never opened again, whoever asks with its first execution.
            raise self.refuse_run(request.run_id, request.origin_run_id, "this run is closed; it never reopens")
        policy, ttl = agent.vault_policy, request.ttl_seconds
        tenant = ""
        if request.parent is not None or request.parent_run_id is not None:
            policy, ttl = self._check_parent(request)
            parent_opened = next(
                (e for e in self._ledger.events(request.parent_run_id or "") if e["kind"] == "run.opened"), {}
            )
            if parent_opened.get("initiator") != request.initiator:
                raise self.refuse_run(request.run_id, request.origin_run_id, "a sub-agent's initiator is its parent's")
            tenant = str(parent_opened.get("tenant") or "")  # a sub-agent acts for its parent's tenant
        elif start is not None:
            tenant = self._check_start(request, start)
        try:
            identity = self._vault.open_run(
                request.run_id, agent.name, policy, ttl, request.origin_run_id, existing=record
            )
        except RunMismatch as err:
            raise self.refuse_run(request.run_id, request.origin_run_id, str(err)) from None
        self._ledger.try_append(
            f"run.opened:{request.run_id}",
            request.run_id,
            "run.opened",
            {
                "agent": agent.name,
                "owner": agent.owner,
                "initiator": request.initiator,
                # A drop-in run's initiator is what its starter named (no signed start to verify).
                **({} if start is not None or request.parent is not None else {"initiator_verified": False}),
                "origin_run_id": request.origin_run_id,
                "parent_run_id": request.parent_run_id,
                # A sub-agent's limits, as its parent's gate allowed them (the gate reads them here).
                **(
                    {"boundary": list(request.parent.boundary), "budget": request.parent.budget}
                    if request.parent is not None
                    else {}
                ),
                "identity_accessor": identity.accessor,
                **({"tenant": tenant} if tenant else {}),
                "policies": list(identity.policies),
                "expires_at": identity.expires_at.isoformat(),
            },
        )
        return identity

    def _check_start(self, request: RunOpen, expect: Mapping[str, FieldValue]) -> str:
        """The initiator is whoever signed the run's start statement (bound to run id, agent and
        input): an unsigned, forged or mismatched start is refused. Returns the tenant the start
        names (its `tenant` field), which counts only for a member of Vault group `tenant-<name>`."""
        if request.start is None:
            raise self.refuse_run(request.run_id, request.origin_run_id, "the run's start is not signed by a person")
        try:
            act = self._people.verify(
                request.start,
                act="start",
                expect=expect,
                max_age=START_MAX_AGE,
            )
        except Refused as err:
            raise self.refuse_run(request.run_id, request.origin_run_id, f"start: {err}") from None
        if act.person != request.initiator:
            raise self.refuse_run(
                request.run_id, request.origin_run_id, f"start signed by {act.person}, not the initiator named"
            )
        if (
            why := authorize_start(
                self._ledger, self._bundle(request.agent), self._agents.get(request.agent), act, request.run_id
            )
        ) is not None:
            raise self.refuse_run(request.run_id, request.origin_run_id, f"start: {why}")
        tenant = act.fields.get("tenant")
        if tenant in (None, ""):
            return ""
        if not isinstance(tenant, str) or TENANT_GROUP_PREFIX + tenant not in act.groups:
            raise self.refuse_run(
                request.run_id,
                request.origin_run_id,
                f"start: {act.person} may not act for tenant {tenant!r} (not in group {TENANT_GROUP_PREFIX}{tenant})",
            )
        return tenant

    def _check_parent(self, request: RunOpen) -> tuple[str, int]:
        """A sub-agent's link must be what its parent's gate allowed: proven by Temporal's parent
        facts (the parent the run names must be the one the server describes for the caller), the
        parent's recorded delegation decision, and the parent's live identity. Returns the Vault
        policy (the parent's) and TTL (never past the parent's) the sub-agent runs with."""
        link, run_id, origin = request.parent, request.run_id, request.origin_run_id
        if link is None or request.parent_run_id is None or link.run_id != request.parent_run_id:
            raise self.refuse_run(run_id, origin, "parent link does not match the run's Temporal parent")
        caller = verified_caller()
        if caller is not None and (not caller.first_run_id or caller.parent_id != request.parent_run_id):
            # The parent the run names is a claim; the server's is the fact (asked by the caller check).
            raise self.refuse_run(
                run_id,
                origin,
                f"the server says the run's Temporal parent is {caller.parent_id!r}, not the one it names",
            )
        parent, _, suffix = run_id.rpartition(".")
        if parent != link.run_id or not suffix.isdigit():
            raise self.refuse_run(run_id, origin, "a sub-agent's id must be <parent id>.<step>")
        record = self._vault.read_run(link.run_id)
        if record is None:
            raise self.refuse_run(run_id, origin, f"parent run {link.run_id} has no open identity")
        step = int(suffix)
        allowed = [
            e
            for e in self._ledger.events(link.run_id)
            if e["kind"] == "decision"
            and e.get("tool") == DELEGATE_TOOL
            and e.get("outcome") == "allow"
            and int(e.get("step", -1)) == step
        ]
        args = allowed[-1]["request"]["call"]["args"] if allowed else None
        if (
            args is None
            or args.get("agent") != request.agent
            or tuple(args.get("tools", ())) != tuple(link.boundary)
            or int(args.get("budget", -1)) != link.budget
        ):
            raise self.refuse_run(run_id, origin, "parent link is not what the parent's gate allowed")
        if record.get("agent") != link.agent or record.get("policies") != link.vault_policy:
            raise self.refuse_run(run_id, origin, "parent link names another agent or Vault policy than the parent's")
        parent_expires = datetime.fromisoformat(str(record["expires_at"]))
        left = int((parent_expires - datetime.now(UTC)).total_seconds())
        if left <= 0 or link.deadline_at > parent_expires + timedelta(seconds=5):
            raise self.refuse_run(run_id, origin, "sub-agent deadline is past its parent's")
        return str(record["policies"]), max(1, min(request.ttl_seconds, left))

    @activity.defn(name=names.RUN_CLOSE)
    def close_run(self, request: RunClose) -> bool:
        self._check_run(request.run_id, request.origin_run_id)
        try:
            revoked = self._vault.close_run(request.run_id, request.accessor, request.origin_run_id)
        except RunMismatch as err:
            raise self.refuse_run(request.run_id, request.origin_run_id, str(err)) from None
        for entry in request.outstanding:
            # Never dropped: durable in the ledger until the reaper has run it (lockgate compensations).
            self._ledger.try_append(
                f"compensation.outstanding:{request.run_id}:{entry.step}",
                request.run_id,
                "compensation.outstanding",
                {"step": entry.step, "tool": entry.tool, "args": entry.args},
            )
            log.error(
                "COMPENSATION OUTSTANDING run=%s step=%s tool=%s: the reaper retries it",
                request.run_id,
                entry.step,
                entry.tool,
                extra={"run_id": request.run_id, "step": entry.step, "tool": entry.tool},
            )
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
                "outstanding_compensations": [e.step for e in request.outstanding],
            },
        )
        # Seal the run's chain (final): nothing can be appended to it unnoticed afterwards. Signed
        # by the checkpointer within moments, shared with the runs that close meanwhile.
        self._ledger.seal_soon()
        return revoked

    # -- seals -----------------------------------------------------------------------------------
    @staticmethod
    def _sealed_bytes(request: RunSeal) -> bytes:
        return canonical_json(
            {
                "run_id": request.run_id,
                "agent": request.agent,
                "origin_run_id": request.origin_run_id,
                "generation": request.generation,
                "carry_digest": request.carry_digest,
            }
        ).encode()

    @activity.defn(name=names.RUN_SEAL)
    def seal(self, request: RunSeal) -> str:
        """Seals a continue-as-new carry (bound to run, first execution, agent and generation)."""
        self._check_run(request.run_id, request.origin_run_id)
        return self._vault.seal(self._sealed_bytes(request))

    @activity.defn(name=names.RUN_RESUME)
    def resume(self, request: RunSeal) -> bool:
        """Accepts a carry only from a continue-as-new, under a seal the worker made for this run."""
        self._check_run(request.run_id, request.origin_run_id)
        if not request.continued_run_id:
            raise self.refuse_run(
                request.run_id, request.origin_run_id, "a carry is accepted only from a continue-as-new"
            )
        if not self._vault.check_seal(self._sealed_bytes(request), request.seal):
            raise self.refuse_run(request.run_id, request.origin_run_id, "the carry's seal does not verify")
        return True

    @activity.defn(name=names.AUDIT_RECORD)
    def record(self, event: AuditEvent) -> bool:
        self._ledger.check_workflow_event(event, activity.info())
        # Stamped when it reaches the ledger (a workflow's clock stands still within its task, which
        # would put a fact before the decisions that came first).
        return self._ledger.try_append(
            event.event_key, event.run_id, event.kind, event.data, at=max(event.at, datetime.now(UTC))
        )
