"""Every name lockgate speaks on the wire, in one table: activity and workflow types, search
attributes, groups. Both ends (the `@activity.defn` and the workflow that schedules it, the CLI that
queries visibility and the workflow that writes it) import them from here, so a rename is one edit.

Pure constants: safe to import from workflow code (no I/O, nothing the sandbox re-imports badly).
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

__all__ = [
    "APPROVAL_VERIFY",
    "AUDIT_RECORD",
    "DROPIN_GATE",
    "DROPIN_OPEN",
    "ENGINE_ACTIVITIES",
    "GATE_EVALUATE",
    "GROUP_OPERATORS",
    "HALT_VERIFY",
    "PLANNER_LLM",
    "RUN_CLOSE",
    "RUN_OPEN",
    "RUN_RESUME",
    "RUN_SEAL",
    "SA_AGENT",
    "SA_INITIATOR",
    "SA_PENDING",
    "SA_STATE",
    "SEARCH_ATTRIBUTES",
    "TOOL_PREFIX",
    "WORKFLOW_AGENT",
    "is_engine_activity",
    "tool_activity",
]

# -- workflow types --------------------------------------------------------------------------------
WORKFLOW_AGENT = "lockgate.agent"

# -- activity types --------------------------------------------------------------------------------
GATE_EVALUATE = "gate.evaluate"
RUN_OPEN = "run.open"
RUN_CLOSE = "run.close"
RUN_SEAL = "run.seal"
RUN_RESUME = "run.resume"
AUDIT_RECORD = "audit.record"
APPROVAL_VERIFY = "approval.verify"
HALT_VERIFY = "halt.verify"
PLANNER_LLM = "planner.llm"
DROPIN_OPEN = "dropin.open"
DROPIN_GATE = "dropin.gate"
TOOL_PREFIX = "tool."

# The engine's own activities: served only to executions lockgate governs (activities/callers.py).
ENGINE_ACTIVITIES = frozenset(
    {
        GATE_EVALUATE,
        RUN_OPEN,
        RUN_CLOSE,
        RUN_SEAL,
        RUN_RESUME,
        AUDIT_RECORD,
        APPROVAL_VERIFY,
        HALT_VERIFY,
        PLANNER_LLM,
        DROPIN_OPEN,
        DROPIN_GATE,
    }
)


def tool_activity(tool: str) -> str:
    """The activity type of a lockgate tool (`refunds.issue` -> `tool.refunds.issue`)."""
    return f"{TOOL_PREFIX}{tool}"


def is_engine_activity(activity_type: str) -> bool:
    """Whether an activity type is lockgate's own (engine or tool), as opposed to an app's."""
    return activity_type in ENGINE_ACTIVITIES or activity_type.startswith(TOOL_PREFIX)


# -- search attributes (registered by the dev stack and `lockgate setup`) ---------------------------
SA_AGENT = SearchAttributeKey.for_keyword("LockgateAgent")
SA_INITIATOR = SearchAttributeKey.for_keyword("LockgateInitiator")
# The ids of a run's pending approval requests (visibility: `lockgate pending` finds runs by it).
SA_PENDING = SearchAttributeKey.for_keyword_list("LockgatePending")
# The run's state (running, awaiting_approval, frozen, ...), as `status` and the inbox show it.
SA_STATE = SearchAttributeKey.for_keyword("LockgateState")
SEARCH_ATTRIBUTES = (SA_AGENT, SA_INITIATOR, SA_PENDING, SA_STATE)

# -- groups ----------------------------------------------------------------------------------------
# May halt runs and freeze/unfreeze agents.
GROUP_OPERATORS = "operators"
