"""Verifying people's acts where they cannot be faked: in the worker, with Vault's public keys.

`approval.verify` and `halt.verify` answer a run's updates at once (signature, the person's groups
now, separation of duties, the exact run, request, decision and args). Whatever the workflow then
hands a deciding activity is verified again by `approved_groups` before anything is leased: workflow
state alone never grants.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity

from lockgate import names
from lockgate.activities.identity import PeopleDirectory, Refused
from lockgate.activities.ledger import Ledger
from lockgate.models import ApprovalCheck, ApprovalVerdict, GateRequest, HaltCheck, approval_refusal, args_digest
from lockgate.spec import AgentRegistry

__all__ = ["OPERATORS", "ApprovalActivities"]

log = logging.getLogger("lockgate.approvals")

# The group whose members may halt runs and freeze or unfreeze agents.
OPERATORS = "operators"
# A signed halt is fresh for this long (a captured one cannot be replayed later).
HALT_MAX_AGE = timedelta(minutes=10)


class ApprovalActivities:
    def __init__(self, *, people: PeopleDirectory, agents: AgentRegistry, ledger: Ledger) -> None:
        self._people = people
        self._agents = agents
        self._ledger = ledger

    def initiator(self, run_id: str) -> str | None:
        """The run's verified initiator, as `run.open` recorded it.

        Raises:
            Refused: the run's start was not signed (a drop-in app's `unsigned_starts`): anyone may
                have started it, so no approver can be told apart from its initiator.
        """
        opened = next((e for e in self._ledger.events(run_id) if e["kind"] == "run.opened"), None)
        if opened is not None and opened.get("initiator_verified") is False:
            raise Refused(
                "the run's start is not signed, so its initiator is unknown: no approval can be shown "
                "to come from someone else (separation of duties)"
            )
        return str(opened["initiator"]) if opened else None

    @activity.defn(name=names.APPROVAL_VERIFY)
    def verify(self, check: ApprovalCheck) -> ApprovalVerdict:
        request, statement = check.request, check.signed.statement
        agent = self._agents.get(check.agent)
        verified = False
        try:
            if check.run_id != activity.info().workflow_id:
                raise Refused("an approval check for another run")
            act = self._people.verify(
                check.signed,
                act=check.verdict,
                expect={
                    "run_id": check.run_id,
                    "temporal_run_id": check.temporal_run_id,
                    "request_id": request.request_id,
                    "decision_id": request.decision_id,
                    "tool": request.tool,
                    "args_digest": request.args_digest,
                },
                max_age=request.expires_at - request.requested_at + timedelta(minutes=5),
            )
            verified = True
            refusal = approval_refusal(
                act.person,
                act.groups,
                request,
                initiator=self.initiator(check.run_id),
                owner=agent.owner if agent else None,
                now=max(statement.at, datetime.now(UTC)),
                verdict=check.verdict,
            )
            if refusal is not None:
                raise Refused(refusal)
        except Refused as err:
            return ApprovalVerdict(accepted=False, person=statement.person, reason=str(err), verified=verified)
        return ApprovalVerdict(
            accepted=True, person=act.person, reason="accepted", verified=True, groups=act.groups, evidence=act.digest
        )

    @activity.defn(name=names.HALT_VERIFY)
    def verify_halt(self, check: HaltCheck) -> ApprovalVerdict:
        statement = check.signed.statement
        try:
            if check.run_id != activity.info().workflow_id:
                raise Refused("a halt check for another run")
            act = self._people.verify(check.signed, act="halt", expect={"run_id": check.run_id}, max_age=HALT_MAX_AGE)
            if OPERATORS not in act.groups:
                raise Refused(f"{act.person} is not in group {OPERATORS}")
        except Refused as err:
            return ApprovalVerdict(accepted=False, person=statement.person, reason=str(err))
        return ApprovalVerdict(accepted=True, person=act.person, reason="accepted", verified=True, groups=act.groups)

    def approved_groups(self, request: GateRequest) -> tuple[tuple[str, ...], list[str]]:
        """The groups whose quorum of distinct, verified people approved exactly this call, and why
        any approval handed in did not count. Each approval must answer a decision the ledger shows
        asked that group, for this run, step and args digest, before it expired."""
        agent = self._agents.get(request.agent)
        try:
            initiator = self.initiator(request.run_id)
        except Refused as err:
            return (), [f"approval by {s.statement.person}: {err}" for s in request.approvals]
        digest = args_digest(request.call.args)
        asked = _decisions(self._ledger.events(request.run_id))
        people: dict[str, set[str]] = {}
        refused: list[str] = []
        for signed in request.approvals:
            fields = signed.statement.fields
            try:
                decision = asked.get(str(fields.get("decision_id")))
                if decision is None or int(decision["step"]) != request.step:
                    raise Refused("it answers no approval request of this step")
                if decision["args_digest"] != digest:
                    raise Refused("it was given for other args")
                group = str(decision["approver_group"])
                ttl = agent.approval_ttl if agent else timedelta(hours=24)
                act = self._people.verify(
                    signed,
                    act="approve",
                    expect={"run_id": request.run_id, "decision_id": decision["decision_id"], "args_digest": digest},
                    max_age=ttl + timedelta(days=1),
                )
                if group not in act.groups:
                    raise Refused(f"{act.person} is not in group {group} now")
                if act.person in (initiator, agent.owner if agent else None):
                    raise Refused(f"{act.person} initiated or owns this run")
                if act.at > datetime.fromisoformat(str(decision["at"])) + ttl:
                    raise Refused("given after the request expired")
                people.setdefault(f"{group}\0{decision['quorum']}", set()).add(act.person)
            except Refused as err:
                refused.append(f"approval by {signed.statement.person}: {err}")
        groups = tuple(
            sorted({key.split("\0")[0] for key, who in people.items() if len(who) >= max(1, int(key.split("\0")[1]))})
        )
        for line in refused:
            log.warning("approval not counted run=%s step=%s: %s", request.run_id, request.step, line)
        return groups, refused


def _decisions(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The run's decisions that asked for approval, by decision id (retried attempts included)."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["kind"] == "decision" and e.get("outcome") == "approval" and e.get("approver_group"):
            out[str(e["decision_id"])] = {**e, "at": e.get("at")}
    return out
