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
    "BACKGROUND_ARCHIVE",
    "BACKGROUND_CHECKPOINT",
    "BACKGROUND_JOBS",
    "BACKGROUND_REAP",
    "DROPIN_GATE",
    "DROPIN_OPEN",
    "ENGINE_ACTIVITIES",
    "GATE_EVALUATE",
    "GROUP_OPERATORS",
    "HALT_VERIFY",
    "LEDGER_ROW_KEY",
    "LEDGER_SIGNING_KEY",
    "LEDGER_WITNESS_PATH",
    "PAYLOAD_ENCRYPT_POLICY",
    "PAYLOAD_KEY",
    "PAYLOAD_READER_GROUPS",
    "PAYLOAD_READER_POLICY",
    "PAYLOAD_WRITER_POLICY",
    "PERSON_POLICY",
    "PLANNER_LLM",
    "RUNS_MOUNT",
    "RUN_CLOSE",
    "RUN_OPEN",
    "RUN_RESUME",
    "RUN_SEAL",
    "RUN_TOKEN_ROLE",
    "SA_AGENT",
    "SA_INITIATOR",
    "SA_PENDING",
    "SA_STATE",
    "SEAL_KEY",
    "SEARCH_ATTRIBUTES",
    "TOOL_PREFIX",
    "TRANSIT_MOUNT",
    "USERPASS_MOUNT",
    "WORKER_APPROLE",
    "WORKER_POLICY",
    "WORKFLOW_AGENT",
    "WORKFLOW_BACKGROUND",
    "audience_policy",
    "background_queue",
    "background_workflow_id",
    "is_engine_activity",
    "tool_activity",
]

# -- workflow types --------------------------------------------------------------------------------
WORKFLOW_AGENT = "lockgate.agent"
# The cluster's background work (workflows/background.py): one execution per job and cluster.
WORKFLOW_BACKGROUND = "lockgate.background"

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
# The background jobs' activities, served on the background queue only (`background_queue`).
BACKGROUND_REAP = "background.reap"
BACKGROUND_ARCHIVE = "background.archive"
BACKGROUND_CHECKPOINT = "background.checkpoint"
BACKGROUND_JOBS = {"reaper": BACKGROUND_REAP, "archiver": BACKGROUND_ARCHIVE, "checkpointer": BACKGROUND_CHECKPOINT}

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


def background_queue(task_queue: str) -> str:
    """The task queue of the cluster's background work: polled only by workers that run it
    (`LOCKGATE_BACKGROUND`), so a worker that hosts only tools never gets a reaper pass."""
    return f"{task_queue}-background"


def background_workflow_id(job: str, task_queue: str) -> str:
    """The one execution of a background job per cluster (namespace and lockgate task queue)."""
    return f"lockgate.{job}/{task_queue}"


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

# -- Vault / OpenBao (created by the dev stack's bootstrap and `lockgate setup`) --------------------
RUN_TOKEN_ROLE = "lockgate-run"  # noqa: S105 - a token role name, not a secret
WORKER_POLICY = "lockgate-worker"
WORKER_APPROLE = "lockgate-worker"
RUNS_MOUNT = "lockgate"  # kv-v1: runs/<run id> holds a run's token, worker/ the worker's settings
TRANSIT_MOUNT = "transit"
PERSON_POLICY = "lockgate-person"
USERPASS_MOUNT = "userpass"
SEAL_KEY = "lockgate-seal"  # Transit key that seals engine-only state
PAYLOAD_KEY = "lockgate-payloads"  # the Transit key Temporal payloads are encrypted under
PAYLOAD_READER_POLICY = "lockgate-payload-reader"  # decrypt only: the reader groups below
PAYLOAD_WRITER_POLICY = "lockgate-payload-writer"  # decrypt and new data keys: workers, services
PAYLOAD_ENCRYPT_POLICY = "lockgate-payload-encrypt"  # new data keys only: every person (start, sign)
LEDGER_SIGNING_KEY = "lockgate-ledger"
LEDGER_ROW_KEY = "lockgate-ledger-rows"  # rows' MACs (lockgate.activities.ledger.rowkey)
LEDGER_WITNESS_PATH = "ledger"  # kv-v1 under RUNS_MOUNT: the newest checkpoint of each ledger

# -- groups ----------------------------------------------------------------------------------------
# May halt runs and freeze/unfreeze agents.
GROUP_OPERATORS = "operators"
# Who may read payloads (decrypt) is a role, held by these groups' identity policy: auditors read
# everything and act on nothing, operators halt and freeze what they can see, approvers read what
# they are asked to approve. Everyone else (mallory, erin the requester) can encrypt, not decrypt.
PAYLOAD_READER_GROUPS = ("auditors", "operators", "finance", "support-leads", "sre-oncall")


def audience_policy(role: str) -> str:
    """The only Vault policy of a token minted per call from token role `role` (an MCP server's
    audience, `mcp-<server>`): it lets the token look itself up, which is how its audience checks it."""
    return f"lockgate-audience-{role}"
