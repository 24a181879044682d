"""Who is calling: lockgate's activities serve only the executions lockgate governs.

An activity's arguments say nothing about who scheduled it: anyone with a Temporal client can run a
worker and a workflow of their own, on their own task queue, and schedule `run.open`, `tool.*` or
`audit.record` on lockgate's queue with arguments they wrote. So before any lockgate activity runs,
the worker establishes its caller from facts Temporal's server holds (the calling execution's type,
task queue and first execution, from DescribeWorkflowExecution) and serves it only when that
execution is one of the workflow types this worker hosts, running on this worker's task queue: then
the code that scheduled the call is the code lockgate's workers run (lockgate's agent workflow, or a
governed app's workflow under the drop-in plugin). Local activities are scheduled in-process by the
workflow task this worker is running, so their caller is one of its own workflows by construction.

What this cannot see: a worker someone else runs that polls lockgate's own task queue with its own
code for lockgate's workflow type. Only Temporal's authorizer (mTLS identities, namespace and task
queue permissions) keeps such a worker out; README "Trust model" says so.

A refused call changes nothing, is recorded (`caller.refused`) and fails at once, never retried.
"""

from __future__ import annotations

import contextvars
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from lockgate import metrics
from lockgate.errors import BAD_INPUT
from lockgate.names import RUN_OPEN, is_engine_activity

__all__ = ["CallerFacts", "CallerGuard", "verified_caller"]

log = logging.getLogger("lockgate.callers")

# Executions whose facts are kept (per Temporal run: one DescribeWorkflowExecution per run and worker).
CACHE_SIZE = 20_000


@dataclass(frozen=True)
class CallerFacts:
    """What Temporal's server says about the execution that scheduled the running activity."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    # The first execution of the chain (the same across continue-as-new); "" when the server was not
    # asked (a local activity other than `run.open`).
    first_run_id: str
    # The workflow id of the calling execution's parent (None: it has none; or the server was not asked).
    parent_id: str | None = None


_CALLER: contextvars.ContextVar[CallerFacts | None] = contextvars.ContextVar("lockgate_caller", default=None)


def verified_caller() -> CallerFacts | None:
    """The verified caller of the lockgate activity running now (None outside one)."""
    return _CALLER.get()


Record = Callable[[str, str, dict[str, Any]], object]


class CallerGuard(Interceptor):
    """The activity interceptor that proves callers (installed on every lockgate worker).

    Args:
        client: The worker's client (it asks the server who the caller is).
        task_queue: The worker's task queue: lockgate's calls come from executions running there.
        hosted: The workflow types this worker hosts (lockgate's agent, governed apps' workflows).
        record: `(event_key, run_id, data)` -> records a refusal (the ledger).
        guarded: Which activity types are lockgate's (default: engine and tool activities).
        described_locally: Local activity types whose caller is still described by the server:
            `run.open`, whose sub-agent check needs the caller's Temporal parent (once per run).
    """

    def __init__(
        self,
        *,
        client: Client,
        task_queue: str,
        hosted: frozenset[str],
        record: Record,
        guarded: Callable[[str], bool] = is_engine_activity,
        described_locally: frozenset[str] = frozenset({RUN_OPEN}),
    ) -> None:
        self._client = client
        self.task_queue = task_queue
        self.hosted = hosted
        self._record = record
        self.guarded = guarded
        self.described_locally = described_locally
        self._known: OrderedDict[str, CallerFacts | str] = OrderedDict()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Inbound(next, self)

    async def establish(self) -> CallerFacts:
        """The running activity's caller, proven; raises a non-retryable refusal otherwise."""
        info = activity.info()
        if info.workflow_type is None or info.workflow_id is None or info.workflow_run_id is None:
            self._refuse(info, "not scheduled by a workflow")
        assert info.workflow_id is not None and info.workflow_run_id is not None and info.workflow_type is not None
        if info.workflow_type not in self.hosted:
            self._refuse(info, f"workflow type {info.workflow_type!r} is not one this worker governs")
        if info.is_local and info.activity_type not in self.described_locally:
            # Scheduled in-process by a workflow task of this very worker.
            return CallerFacts(info.workflow_id, info.workflow_run_id, info.workflow_type, self.task_queue, "")
        known = self._known.get(info.workflow_run_id)
        if known is None:
            known = await self._describe(info)
            self._known[info.workflow_run_id] = known
            while len(self._known) > CACHE_SIZE:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(info.workflow_run_id)
        if isinstance(known, str):
            self._refuse(info, known)
        assert isinstance(known, CallerFacts)
        return known

    async def _describe(self, info: activity.Info) -> CallerFacts | str:
        """Temporal's facts about the calling execution, or why they disqualify it. A server that
        does not answer raises (retryable): nothing runs until the caller is known."""
        assert info.workflow_id is not None and info.workflow_run_id is not None
        handle = self._client.get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
        try:
            desc = await handle.describe()
        except RPCError as err:
            if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                return f"no such execution on the server ({err.status.name})"
            raise
        if desc.workflow_type != info.workflow_type:
            return f"the server says the caller is a {desc.workflow_type!r}, not a {info.workflow_type!r}"
        # Now the server names the type establish already found hosted.
        if desc.task_queue != self.task_queue:
            return (
                f"the calling {desc.workflow_type} runs on task queue {desc.task_queue!r}, "
                f"not on lockgate's {self.task_queue!r}: it is not a run lockgate governs"
            )
        first = desc.raw_info.first_run_id or desc.run_id
        return CallerFacts(desc.id, desc.run_id, desc.workflow_type, desc.task_queue, first, desc.parent_id)

    def _refuse(self, info: activity.Info, reason: str) -> None:
        workflow_id = info.workflow_id or "?"
        key = f"caller.refused:{workflow_id}:{info.workflow_run_id}:{info.activity_type}:{info.activity_id}"
        try:
            self._record(
                key,
                workflow_id,
                {
                    "activity": info.activity_type,
                    "workflow_type": info.workflow_type,
                    "workflow_run_id": info.workflow_run_id,
                    "task_queue": info.task_queue,
                    "reason": reason,
                },
            )
        except Exception:
            log.exception("could not record a refused caller")
        log.error("refused %s from %s %s: %s", info.activity_type, info.workflow_type, workflow_id, reason)
        metrics.count(
            "lockgate_calls_refused", "calls refused before anything ran", activity=info.activity_type, why="caller"
        )
        raise ApplicationError(f"{info.activity_type}: refused: {reason}", type=BAD_INPUT, non_retryable=True)


class _Inbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, guard: CallerGuard) -> None:
        super().__init__(next)
        self._guard = guard

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if not self._guard.guarded(activity.info().activity_type):
            return await self.next.execute_activity(input)
        facts = await self._guard.establish()
        token = _CALLER.set(facts)
        try:
            # A sync activity runs in a copy of this context (temporalio copies it into the thread).
            return await self.next.execute_activity(input)
        finally:
            _CALLER.reset(token)
