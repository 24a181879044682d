"""The cluster's background work, once per cluster: the reaper, the history archiver and the
checkpointer, each one long-running workflow with a fixed id (`background_workflow_id`) that runs a
pass (an activity on the background queue), sleeps, and continues as new now and then.

Temporal decides which worker runs each pass: a worker that dies mid-pass stops heartbeating and the
pass is retried on another; a pass that keeps failing is logged and the next one comes at the next
interval (the job never ends on an error). Workers start these executions idempotently when they
start (`ensure_background`), so a second worker finds them running and starts nothing.

Each pass's state (the reaper's and the archiver's watermarks, the reaper's sweep cursor) travels
in the workflow, not on a host: whichever worker runs the next pass carries on from it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from lockgate.names import BACKGROUND_JOBS, WORKFLOW_BACKGROUND

__all__ = ["BackgroundJob", "BackgroundWorkflow", "PassReport"]

Job = Literal["reaper", "archiver", "checkpointer"]

# A pass heartbeats while it works: a worker that dies mid-pass is noticed within this, and the
# pass is retried on another worker.
PASS_HEARTBEAT = timedelta(seconds=30)
# A pass may compensate several runs (each gated and leased like any call): generous, but bounded.
PASS_TIMEOUT = timedelta(minutes=10)
# A few attempts, then the job waits for its next interval rather than hammer a server that is down.
PASS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=3
)
# Passes per execution before continuing as new: the history stays short, whatever the uptime.
PASSES_PER_RUN = 200


class PassReport(BaseModel):
    """What one pass did (kept in the pass's activity result: the history says who reaped what)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    done: list[str] = Field(default_factory=list)  # runs reaped / archived, or checkpoint numbers
    examined: int = 0  # runs (or chains) the pass looked at: its cost
    backlog: int = 0  # work it found and left for a later pass


class BackgroundJob(BaseModel):
    """A background job's state between passes (the workflow's input and each pass's result).

    Args:
        job: Which job.
        since: The watermark: work that closed before it is done (ISO time; None before the first pass).
        cursor: The reaper's sweep position in the open runs (the last run id it described).
        interval: Seconds to the next pass: the setting of the worker that ran the last pass.
        last: What the last pass did.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: Job
    since: str | None = None
    cursor: str = ""
    interval: float = 10.0
    last: PassReport = Field(default_factory=PassReport)


@workflow.defn(name=WORKFLOW_BACKGROUND)
class BackgroundWorkflow:
    """Runs one background job forever: a pass, a sleep, and continue-as-new every few hundred."""

    @workflow.run
    async def run(self, state: BackgroundJob) -> None:
        for _ in range(PASSES_PER_RUN):
            try:
                state = await workflow.execute_activity(
                    BACKGROUND_JOBS[state.job],
                    state,
                    result_type=BackgroundJob,
                    start_to_close_timeout=PASS_TIMEOUT,
                    heartbeat_timeout=PASS_HEARTBEAT,
                    retry_policy=PASS_RETRY,
                )
            except ActivityError as err:
                # The job outlives a failed pass: the next one starts from the same state.
                workflow.logger.warning("background %s: pass failed: %s", state.job, err.cause or err)
            await workflow.sleep(timedelta(seconds=max(state.interval, 0.5)))
            if workflow.info().is_continue_as_new_suggested():
                break
        workflow.continue_as_new(state)
