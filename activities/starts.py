"""Who may start what, where a start cannot bypass it: in the activity that opens a run.

`authorize_start` is called by `run.open` once the person's signed start is verified (their groups
as Vault identity says now). It records the decision in the ledger (kind `start.decision`: person,
groups, agent, outcome, deciding policies, bundle hash) and returns the refusal reason, if any; the
caller fails the run with it (`run.refused`). The rule itself is pure: `lockgate.gates.starts`.
"""

from __future__ import annotations

import logging
from typing import Any

from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.starts import decide_start
from lockgate.people import VerifiedAct
from lockgate.spec import Agent

__all__ = ["authorize_start"]

log = logging.getLogger("lockgate.gate")


def authorize_start(
    ledger: Any, bundle: PolicyBundle, agent: Agent | None, act: VerifiedAct, run_id: str
) -> str | None:
    """Decides the verified start `act` of `agent` by the bundle's start policies and records it.

    Args:
        ledger: the worker's ledger (`try_append`).
        bundle: the policy bundle in force.
        agent: the agent to start.
        act: the verified start (person and their groups now).
        run_id: the run being opened.

    Returns:
        None when allowed; else the reason, for people ("mallory (groups: none) may not start ...").
    """
    if agent is None:
        return "unknown agent"
    verdict = decide_start(bundle, act.person, act.groups, agent.name, agent.owner)
    ledger.try_append(
        f"start.decision:{run_id}:{act.digest[:16]}",
        run_id,
        "start.decision",
        {
            "person": act.person,
            "groups": list(act.groups),
            "agent": agent.name,
            "outcome": "allow" if verdict.allowed else "deny",
            "policy_ids": list(verdict.policy_ids),
            "bundle_hash": bundle.hash,
            "reason": verdict.reason,
            "start_digest": act.digest,
        },
    )
    if verdict.allowed:
        return None
    log.warning("start refused run=%s: %s", run_id, verdict.reason, extra={"run_id": run_id})
    return verdict.reason
