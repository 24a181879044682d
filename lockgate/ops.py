"""Operator actions against Temporal, shared by the CLI, the demo and the tests."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, cast

from pydantic import ValidationError
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from lockgate.errors import UserError
from lockgate.identity import OperatorSession, sign
from lockgate.ids import InvalidRunId, check_run_id
from lockgate.models import MAX_ARGS_BYTES, ApprovalAttempt, ApprovalRequest, RunInput, RunState, RunStatus, args_digest
from lockgate.people import FieldValue
from lockgate.spec import describe_validation, registry

__all__ = [
    "approval_attempt",
    "halt_run",
    "list_pending",
    "parse_input",
    "run_status",
    "send_verdict",
    "set_freeze",
    "start_refusal",
    "start_run",
    "wait_closed",
    "wake_frozen",
]

WORKFLOW = "lockgate.agent"

_CLOSED = {
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED: "completed",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_FAILED: "failed",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_CANCELED: "halted",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TERMINATED: "terminated",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TIMED_OUT: "terminated",
}


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_input(agent_name: str, raw: str | None) -> dict[str, Any]:
    """Checks the agent exists and its input parses and fits its schema; UserError otherwise."""
    agent = registry.get(agent_name)
    if agent is None:
        raise UserError(f"unknown agent {agent_name!r} (known: {', '.join(registry.names())})")
    if raw is not None and len(raw.encode()) > MAX_ARGS_BYTES:
        raise UserError(f"input is over {MAX_ARGS_BYTES} bytes")
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicate_keys) if raw else {}
    except json.JSONDecodeError as err:
        raise UserError(f"--input is not valid JSON: {err}") from None
    except _DuplicateKey as err:
        # Parsers disagree on which duplicate wins: what was validated, signed and run could differ.
        raise UserError(f"--input has the key {err.key!r} twice (a JSON object names each key once)") from None
    if not isinstance(data, dict):
        raise UserError("--input must be a JSON object")
    try:
        # Strict: JSON's own types only (no 1e3 or true for an integer, no "5" for a number), so what
        # the run gets is exactly what was validated.
        agent.input_model.model_validate_json(raw or "{}", strict=True)
    except ValidationError as err:
        raise UserError(f"invalid input for {agent_name}: {describe_validation(err)}") from None
    return data


def start_refusal(policy_dir: Any, agent: str, session: OperatorSession) -> str | None:
    """Why `session`'s person may not start `agent` by the start policies in `policy_dir` (None:
    they may, or the policies cannot be read here). A clear answer before the start; the worker
    decides again, authoritatively, when it opens the run (activities/starts.py)."""
    from lockgate.errors import PolicyError
    from lockgate.gates.starts import decide_start
    from lockgate.policies import load_bundle

    spec = registry.get(agent)
    if spec is None:
        return None
    try:
        bundle = load_bundle(policy_dir, registry)
    except (PolicyError, OSError):
        return None  # not this shell's to judge: the worker refuses with the reason
    verdict = decide_start(bundle, session.name, sorted(session.groups), agent, spec.owner)
    return None if verdict.allowed else verdict.reason


async def start_run(
    client: Client,
    task_queue: str,
    agent: str,
    data: dict[str, Any],
    *,
    session: OperatorSession,
    run_id: str | None = None,
    tenant: str | None = None,
) -> WorkflowHandle[Any, Any]:
    """Starts a run as the logged-in person: their signed start statement makes them its initiator.
    With `tenant`, the run acts for that tenant (`context.run.tenant`; the worker accepts it only
    from a member of Vault group `tenant-<tenant>`)."""
    run_id = run_id or f"{agent}-{uuid.uuid4().hex[:10]}"
    try:
        check_run_id(run_id)
    except InvalidRunId as err:
        raise UserError(str(err)) from None
    fields: dict[str, FieldValue] = {"run_id": run_id, "agent": agent, "input_digest": args_digest(data)}
    if tenant:
        fields["tenant"] = tenant
    start = await asyncio.to_thread(sign, session, "start", fields)
    try:
        return await client.start_workflow(
            WORKFLOW,
            RunInput(agent=agent, input=data, initiator=session.name, start=start),
            id=run_id,
            task_queue=task_queue,
            # A run id names one run forever: the ledger and the audit are keyed by it.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except RPCError as err:
        if err.status == RPCStatusCode.ALREADY_EXISTS:
            raise UserError(f"a run with id {run_id!r} already exists") from None
        raise
    except WorkflowAlreadyStartedError:
        raise UserError(f"a run with id {run_id!r} already exists") from None


async def _describe(client: Client, run_id: str) -> Any:
    try:
        return await client.get_workflow_handle(run_id).describe()
    except RPCError as err:
        if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise UserError(f"unknown run {run_id!r}") from None
        raise


async def run_status(client: Client, run_id: str) -> RunStatus:
    """The run's own account (query); for a terminated run, its last known account from history."""
    desc = await _describe(client, run_id)
    handle = client.get_workflow_handle(run_id)
    closed = _CLOSED.get(desc.status)
    try:
        status: RunStatus = await asyncio.wait_for(handle.query("status", result_type=RunStatus), timeout=10)
    except Exception as err:  # noqa: BLE001 - no worker, or the run never got going
        state = closed or "running"
        return RunStatus(
            run_id=run_id,
            agent="?",
            initiator="?",
            owner="?",
            state=cast(RunState, state),
            step=0,
            error=f"run did not answer its status query: {err}",
        )
    if closed == "terminated" and status.state not in ("completed", "failed", "halted"):
        # Temporal runs no workflow code on terminate: the query replays up to the last event.
        status = status.model_copy(update={"state": "terminated", "open_leases": 0})
    return status


async def list_pending(client: Client, agent: str | None = None) -> list[dict[str, Any]]:
    """Every waiting approval request, from one visibility listing (the runs' memos)."""
    # Any workflow type: drop-in governed apps (lockgate.dropin) publish the same attributes and memo.
    query = 'LockgateState = "awaiting_approval" AND ExecutionStatus = "Running"'
    if agent:
        query += f' AND LockgateAgent = "{agent}"'
    out: list[dict[str, Any]] = []
    async for wf in client.list_workflows(query):
        try:
            requests = [ApprovalRequest.model_validate(r) for r in (await wf.memo_value("pending", default=[]))]
        except Exception:  # noqa: BLE001 - an unreadable memo: ask the run itself
            requests = await _query_pending(client.get_workflow_handle(wf.id))
        for req in requests:
            out.append(
                {
                    "run_id": wf.id,
                    "request_id": req.request_id,
                    "agent": req.agent,
                    "tool": req.tool,
                    "step": req.step,
                    "args_digest": req.args_digest,
                    "args": req.args_preview,
                    "group": req.group,
                    "quorum": req.quorum,
                    "approvals": list(req.approvals),
                    "requested_at": req.requested_at.isoformat(),
                    "expires_at": req.expires_at.isoformat(),
                    # What the run did before this request (the chain policies judged).
                    "chain": req.chain,
                }
            )
    out.sort(key=lambda r: (r["requested_at"], r["run_id"]))
    return out


async def _query_pending(handle: WorkflowHandle[Any, Any]) -> list[ApprovalRequest]:
    try:
        return await handle.query("pending_approvals", result_type=list[ApprovalRequest])
    except Exception:  # noqa: BLE001 - closed meanwhile
        return []


async def send_verdict(
    client: Client,
    run_id: str,
    request_id: str,
    *,
    session: OperatorSession,
    approve: bool,
    reason: str = "",
    args_digest: str | None = None,
) -> ApprovalAttempt:
    """Signs the person's approval or rejection of exactly this request (run, Temporal run, request,
    decision, tool, args digest) and sends it as an update: the run answers with its verdict."""
    desc = await _describe(client, run_id)
    if desc.status != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
        raise UserError(f"run {run_id} is not running ({_CLOSED.get(desc.status, 'closed')})")
    handle = client.get_workflow_handle(run_id)
    pending = await handle.query("pending_approvals", result_type=list[ApprovalRequest])
    match = next((p for p in pending if p.request_id == request_id), None)
    fields: dict[str, str | int | bool | None] = {
        "run_id": run_id,
        "temporal_run_id": desc.run_id,
        "request_id": request_id,
        "decision_id": match.decision_id if match else "",
        "tool": match.tool if match else "",
        "args_digest": args_digest if args_digest is not None else (match.args_digest if match else ""),
        "reason": reason[:500],
    }
    signed = await asyncio.to_thread(sign, session, "approve" if approve else "reject", fields)
    try:
        return await handle.execute_update(
            "approve" if approve else "reject", signed, result_type=ApprovalAttempt, id=signed.statement.nonce
        )
    except WorkflowUpdateFailedError as err:
        raise UserError(
            f"run {run_id} did not take the {'approval' if approve else 'rejection'}: {err.cause}"
        ) from None


async def approval_attempt(client: Client, run_id: str, attempt_id: str) -> ApprovalAttempt | None:
    """What the run made of one approval or rejection it received (by the attempt's id)."""
    raw = await asyncio.wait_for(client.get_workflow_handle(run_id).query("approval_attempt", attempt_id), timeout=10)
    return ApprovalAttempt.model_validate(raw) if raw else None


async def halt_run(client: Client, run_id: str, reason: str, *, session: OperatorSession) -> None:
    """An operator's signed halt (group `operators`): the run stops, compensates and revokes."""
    desc = await _describe(client, run_id)
    if desc.status != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
        raise UserError(f"run {run_id} is not running ({_CLOSED.get(desc.status, 'closed')})")
    signed = await asyncio.to_thread(sign, session, "halt", {"run_id": run_id, "reason": reason[:500]})
    answer = await client.get_workflow_handle(run_id).execute_update("halt", signed, result_type=str)
    if answer.startswith("refused"):
        raise UserError(f"halt {answer}")


async def wait_closed(client: Client, run_id: str, timeout: float = 60) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        desc = await _describe(client, run_id)
        state = _CLOSED.get(desc.status)
        if state is not None:
            return state
        if asyncio.get_running_loop().time() > deadline:
            return "running"
        await asyncio.sleep(0.2)


def set_freeze(ledger: Any, session: OperatorSession, scope: str, frozen: bool, reason: str = "") -> None:
    """An operator's freeze or unfreeze of `scope` (an agent, or "*"): a statement signed by them,
    stored as the row's evidence (workers lift a freeze only on a verified operator's unfreeze).

    Raises:
        UserError: the person is not in `operators`, or Vault refused to sign.
    """
    from lockgate.activities.approvals import OPERATORS
    from lockgate.activities.freeze import FreezeStore

    if OPERATORS not in session.groups:
        raise UserError(f"{session.name} is not in group {OPERATORS} (freeze and unfreeze are theirs)")
    signed = sign(session, "freeze" if frozen else "unfreeze", {"scope": scope, "reason": reason[:500]})
    FreezeStore(ledger).set(scope, frozen, by=session.name, reason=reason, evidence=signed.model_dump_json())


async def wake_frozen(client: Client, agent: str | None) -> list[str]:
    """Signals `unfreeze` to every frozen run (of `agent`, or all): they re-check their gate now."""
    query = 'LockgateState = "frozen" AND ExecutionStatus = "Running"'
    if agent:
        query += f' AND LockgateAgent = "{agent}"'
    woken = []
    async for wf in client.list_workflows(query):
        try:
            await client.get_workflow_handle(wf.id).signal("unfreeze")
            woken.append(wf.id)
        except RPCError:
            pass  # closed meanwhile
    return woken
