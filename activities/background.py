"""The cluster's background passes (workflows/background.py runs them, once per cluster): one reaper
pass, one archiver pass, one checkpoint. Each heartbeats while it works, so a worker that dies
mid-pass hands the pass to another worker within the heartbeat timeout; each returns the job's
next state (watermark, cursor) so that no host keeps any of it.

`ensure_background` starts the three executions idempotently (a worker's start, `lockgate setup`):
an execution already running under the job's id is left alone, so two workers starting together
still leave exactly one per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import text
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from lockgate import metrics
from lockgate.activities.archive import HistoryArchive
from lockgate.activities.ledger import CHECKPOINT_INTERVAL, Ledger
from lockgate.activities.reaper import Reaper
from lockgate.names import (
    BACKGROUND_ARCHIVE,
    BACKGROUND_CHECKPOINT,
    BACKGROUND_JOBS,
    BACKGROUND_REAP,
    background_queue,
    background_workflow_id,
)
from lockgate.workflows.background import BackgroundJob, BackgroundWorkflow, PassReport

__all__ = ["BackgroundActivities", "checkpoint_lag", "ensure_background", "keep_background"]

log = logging.getLogger("lockgate.background")

T = TypeVar("T")

# Heartbeats while a pass works (the workflow's heartbeat timeout is 30 s).
_BEAT = 5.0


async def _heartbeating(work: Awaitable[T]) -> T:
    """Runs `work`, heartbeating meanwhile (a pass that sits in a thread still says it is alive)."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(_BEAT)

    beating = asyncio.create_task(beat())
    try:
        return await work
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


def checkpoint_lag(ledger: Ledger) -> tuple[int, float]:
    """(chains with rows no checkpoint signed yet, seconds since the newest checkpoint when there
    are any, else 0): indexed reads (`ix_ledger_heads_dirty`)."""
    with ledger.reader.connect() as conn:
        pending = int(
            conn.execute(
                text(
                    "SELECT count(*) FROM ledger_heads WHERE dirty "
                    "AND (size > sealed_size OR (closed AND NOT sealed_final))"
                )
            ).scalar_one()
        )
        if not pending:
            return 0, 0.0
        last = conn.execute(text("SELECT at FROM ledger_checkpoints ORDER BY seq DESC LIMIT 1")).first()
    if last is None:
        return pending, 0.0
    return pending, max(0.0, (datetime.now(UTC) - datetime.fromisoformat(str(last[0]))).total_seconds())


class BackgroundActivities:
    """The passes, with the worker's clients passed in.

    Args:
        client: The worker's Temporal client (the reaper describes runs, the archiver reads histories).
        reaper: The reaper (`lockgate.worker.build_reaper`).
        archive: The history archive (`lockgate.worker.build_archive`).
        ledger: The ledger (the checkpointer signs it).
        intervals: job -> seconds between passes (this worker's settings; the next pass uses them).
    """

    def __init__(
        self,
        *,
        client: Client,
        reaper: Reaper,
        archive: HistoryArchive,
        ledger: Ledger,
        intervals: dict[str, float],
    ) -> None:
        self._client = client
        self._reaper = reaper
        self._archive = archive
        self._ledger = ledger
        self._intervals = intervals

    def activities(self) -> list[Callable[..., Any]]:
        return [self.reap, self.archive, self.checkpoint]

    @activity.defn(name=BACKGROUND_REAP)
    async def reap(self, state: BackgroundJob) -> BackgroundJob:
        """One reaper pass over the runs that closed since the watermark and one sweep page."""
        done = await _heartbeating(self._reaper.reap_pass(self._client, state.since, state.cursor))
        metrics.gauge("lockgate_reaper_backlog", "runs the reaper found needing work and left", done.backlog)
        metrics.gauge("lockgate_open_runs", "runs holding an open Vault identity", done.open_runs)
        report = PassReport(done=[r.run_id for r in done.reports], examined=done.examined, backlog=done.backlog)
        return state.model_copy(
            update={"since": done.since, "cursor": done.cursor, "interval": self._intervals["reaper"], "last": report}
        )

    @activity.defn(name=BACKGROUND_ARCHIVE)
    async def archive(self, state: BackgroundJob) -> BackgroundJob:
        """One archiver pass over the lockgate runs closed since the watermark and not yet archived."""
        done = await _heartbeating(self._archive.archive_pass(self._client, state.since))
        report = PassReport(done=done.archived, examined=len(done.archived) + done.left, backlog=done.left)
        return state.model_copy(update={"since": done.through, "interval": self._intervals["archiver"], "last": report})

    @activity.defn(name=BACKGROUND_CHECKPOINT)
    async def checkpoint(self, state: BackgroundJob) -> BackgroundJob:
        """Signs what changed since the last checkpoint (a lost race is retried, never an error)."""
        seq = await _heartbeating(asyncio.to_thread(self._ledger.checkpoint))
        pending, lag = await asyncio.to_thread(checkpoint_lag, self._ledger)
        metrics.gauge("lockgate_checkpoint_pending_chains", "chains with rows no checkpoint signed yet", pending)
        metrics.gauge("lockgate_checkpoint_lag_seconds", "age of the newest checkpoint while rows wait", lag)
        report = PassReport(done=[str(seq)] if seq is not None else [], examined=pending, backlog=pending)
        return state.model_copy(update={"interval": self._intervals["checkpointer"], "last": report})


async def ensure_background(client: Client, task_queue: str, intervals: dict[str, float] | None = None) -> list[str]:
    """Starts each background job's execution unless it is already running (idempotent: any number
    of workers may call it at once; one execution per job and cluster). Returns the workflow ids."""
    intervals = intervals or {}
    ids = []
    for job in BACKGROUND_JOBS:
        workflow_id = background_workflow_id(job, task_queue)
        await client.start_workflow(
            BackgroundWorkflow.run,
            BackgroundJob.model_validate({"job": job, "interval": intervals.get(job, CHECKPOINT_INTERVAL)}),
            id=workflow_id,
            task_queue=background_queue(task_queue),
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        ids.append(workflow_id)
    return ids


async def keep_background(
    client: Client, task_queue: str, intervals: dict[str, float], stop: asyncio.Event, every: float = 60.0
) -> None:
    """A background-enabled worker's watch: the jobs are (re)started at once and then every `every`
    seconds, so a job someone terminated comes back without a restart (one idempotent start per job
    and minute per worker: nothing that grows with the runs)."""
    while not stop.is_set():
        try:
            await ensure_background(client, task_queue, intervals)
        except Exception as err:  # noqa: BLE001 - Temporal away: the next round tries again
            log.warning("background jobs not ensured: %s", err)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
