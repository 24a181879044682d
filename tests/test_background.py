"""Background work runs once per cluster (issue 29): the reaper, the archiver and the checkpointer are
Temporal workflows with fixed ids, started idempotently by every worker, whose passes Temporal hands
to one of the workers that run background work. Archived histories live in the ledger's database,
so any host (any working directory, no local archive folder) audits and replays them."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from psycopg import sql
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from lockgate import errors
from lockgate.config import Settings
from lockgate.names import BACKGROUND_JOBS, background_queue, background_workflow_id
from lockgate.workflows.background import BackgroundJob
from tests.support.stack import ROOT, Outside, cli, finish, ledger_kinds, pending_request, start, status_of


async def _count(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count


def _start_worker(env: dict[str, str], log_path: Path) -> tuple[IO[bytes], subprocess.Popen[bytes]]:
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py")], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    return log, proc


@pytest.fixture
async def cluster(
    client: Client, settings: Settings, env: dict[str, str], worker_running: str, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    """Two workers with background work on, on a fresh task queue, passes every second: one in this
    process, one in a process of its own (another host, as far as Temporal can tell)."""
    from lockgate import worker

    queue = f"bg-{uuid.uuid4().hex[:8]}"
    fast = settings.model_copy(update={"task_queue": queue, "reap_interval": 1.0, "archive_interval": 1.0})
    deps = worker.build_deps(fast)
    log, other = _start_worker(
        {**env, "LOCKGATE_TASK_QUEUE": queue, "LOCKGATE_REAP_INTERVAL": "1", "LOCKGATE_ARCHIVE_INTERVAL": "1"},
        tmp_path / "worker.log",
    )
    try:
        async with worker.build_worker(client, deps, services=True) as here:
            yield {"queue": queue, "deps": deps, "here": here, "other": other, "log": tmp_path / "worker.log"}
    finally:
        if other.poll() is None:
            other.kill()
            other.wait(timeout=10)
        log.close()
        deps.ledger.dispose()


async def _running_jobs(client: Client, queue: str, timeout: float = 30) -> int:
    query = f'TaskQueue = "{background_queue(queue)}" AND ExecutionStatus = "Running"'
    deadline = time.monotonic() + timeout
    while (n := await _count(client, query)) < len(BACKGROUND_JOBS):
        assert time.monotonic() < deadline, f"only {n} background job(s) running"
        await asyncio.sleep(0.3)
    return n


async def test_two_workers_start_each_background_job_once(client: Client, cluster: dict[str, Any]) -> None:
    from lockgate.activities.background import ensure_background

    queue = cluster["queue"]
    assert await _running_jobs(client, queue) == 3
    # A third start (a worker restarting, `lockgate setup`) finds them running and starts nothing.
    await ensure_background(client, queue)
    await asyncio.sleep(1.0)
    for job in BACKGROUND_JOBS:
        wid = background_workflow_id(job, queue)
        assert await _count(client, f'WorkflowId = "{wid}"') == 1, job
        desc = await client.get_workflow_handle(wid).describe()
        assert desc.status == WorkflowExecutionStatus.RUNNING and desc.task_queue == background_queue(queue)
    assert await _count(client, f'TaskQueue = "{background_queue(queue)}"') == 3


async def _reaper_passes(client: Client, queue: str) -> list[BackgroundJob]:
    """Every completed reaper pass in the reaper job's history (its current execution)."""
    handle = client.get_workflow_handle(background_workflow_id("reaper", queue))
    out = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            payloads = event.activity_task_completed_event_attributes.result.payloads
            (state,) = await client.data_converter.decode(payloads, [BackgroundJob])
            out.append(state)
    return out


async def test_a_run_whose_worker_died_is_reaped_by_the_background_job(
    client: Client, cluster: dict[str, Any], outside: Outside, deps: Any
) -> None:
    queue = cluster["queue"]
    await _running_jobs(client, queue)
    handle = await start(
        client,
        queue,
        "script-agent",
        {
            "steps": [
                {"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount_cents": 250}},
                {"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 20000}},
            ]
        },
    )
    await pending_request(handle)
    accessor = (await status_of(handle)).identity_accessor
    assert accessor and outside.token_alive(accessor)
    # One host dies (SIGKILL: whatever background pass it was running is handed on after its
    # heartbeat timeout); Temporal runs no workflow code on terminate: only the reaper cleans up.
    cluster["other"].send_signal(signal.SIGKILL)
    cluster["other"].wait(timeout=10)
    await handle.terminate("host lost")
    deadline = time.monotonic() + 60
    while "run.closed" not in ledger_kinds(deps, handle.id):
        assert time.monotonic() < deadline, "the background reaper did not clean up within 60 s"
        await asyncio.sleep(0.25)
    assert not outside.token_alive(accessor)
    rows = outside.refunds(handle.id)
    assert len(rows) == 1 and rows[0][4] is not None  # step 1's refund reversed
    outside.assert_nothing_leaked()
    # The pass that reaped it ran inside the cluster's reaper workflow (no worker thread reaps now).
    deadline = time.monotonic() + 20
    while not any(handle.id in p.last.done for p in await _reaper_passes(client, queue)):
        assert time.monotonic() < deadline, "no reaper pass of the background job reports the run"
        await asyncio.sleep(0.5)
    closed = [json.loads(e.data) for e in deps.ledger.entries(handle.id) if e.kind == "run.closed"]
    assert closed[0]["reason"] == "closed by the reaper"


def _cli_elsewhere(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as another host runs it: another working directory, no archive folder of its own."""
    other = {**env, "LOCKGATE_ARCHIVE_DIR": str(cwd / "no-such-archive"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "lockgate.cli", *args], env=other, cwd=cwd, capture_output=True, text=True, timeout=120
    )


async def test_archived_histories_are_read_from_the_ledger_on_any_host(
    client: Client, cluster: dict[str, Any], env: dict[str, str], settings: Settings, deps: Any, tmp_path: Path
) -> None:
    queue = cluster["queue"]
    handle = await start(client, queue, "refund-agent", {"order_id": "A-1003", "amount_cents": 120})
    assert await finish(handle) is None
    deadline = time.monotonic() + 60
    while "history.archived" not in ledger_kinds(deps, handle.id):
        assert time.monotonic() < deadline, "the background archiver did not archive the run"
        await asyncio.sleep(0.3)
    (record,) = [json.loads(e.data) for e in deps.ledger.entries(handle.id) if e.kind == "history.archived"]
    assert all(item["stored"] == "ledger" and "file" not in item for item in record["histories"])
    ledger_file = settings.ledger_url.split("///", 1)[1]
    with sqlite3.connect(ledger_file) as conn:
        stored = conn.execute("SELECT sha256 FROM history_archive WHERE run_id = ?", (handle.id,)).fetchall()
    assert [s for (s,) in stored] == [item["sha256"] for item in record["histories"]]
    assert not any(p.name == "archive" and any(p.iterdir()) for p in Path(settings.state_dir).iterdir() if p.is_dir())

    await client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=settings.namespace or "default", workflow_execution=WorkflowExecution(workflow_id=handle.id)
        )
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            await client.get_workflow_handle(handle.id).describe()
        except RPCError as err:
            assert err.status == RPCStatusCode.NOT_FOUND
            break
        assert time.monotonic() < deadline, "the server did not delete the run"
        await asyncio.sleep(0.2)

    audit = await asyncio.to_thread(_cli_elsewhere, env, tmp_path, "audit", handle.id)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "the Temporal server no longer has this run" in audit.stdout and "ARCHIVE PROBLEMS" not in audit.stdout
    replay = await asyncio.to_thread(_cli_elsewhere, env, tmp_path, "replay", handle.id, "--json")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    (report,) = json.loads(replay.stdout)
    assert report["ok"] and report["histories"] == 1 and report["source"].startswith("archive")

    # Someone with write access to the database edits the stored history: it no longer matches the
    # digest the ledger recorded (and a checkpoint signed), and nothing replays it.
    with sqlite3.connect(ledger_file) as conn:
        (original,) = conn.execute("SELECT content FROM history_archive WHERE run_id = ?", (handle.id,)).fetchone()
        conn.execute(
            "UPDATE history_archive SET content = replace(content, 'lockgate', 'lockgatX') WHERE run_id = ?",
            (handle.id,),
        )
    try:
        edited = await asyncio.to_thread(_cli_elsewhere, env, tmp_path, "audit", handle.id)
        assert "does not match its ledger digest (edited)" in edited.stdout, edited.stdout + edited.stderr
        bad = await asyncio.to_thread(_cli_elsewhere, env, tmp_path, "replay", handle.id, "--json")
        assert bad.returncode != 0, bad.stdout
    finally:
        # The session's ledger is shared: later tests replay every archived run.
        with sqlite3.connect(ledger_file) as conn:
            conn.execute("UPDATE history_archive SET content = ? WHERE run_id = ?", (original, handle.id))


async def test_a_worker_with_background_off_runs_none_of_it(client: Client, settings: Settings) -> None:
    from lockgate import worker

    queue = f"bg-off-{uuid.uuid4().hex[:8]}"
    off = settings.model_copy(update={"task_queue": queue, "background": False})
    deps = worker.build_deps(off)
    try:
        async with worker.build_worker(client, deps, services=True):
            await asyncio.sleep(3)
            assert await _count(client, f'TaskQueue = "{background_queue(queue)}"') == 0
    finally:
        deps.ledger.dispose()


async def test_migrate_indexes_the_scans_by_kind(env: dict[str, str], settings: Settings) -> None:
    """`lockgate migrate` on PostgreSQL: the kind index, the checkpointer's partial index, the archive table."""
    assert settings.pg_dsn
    name = f"ledger_ix_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.pg_dsn.replace("/shop?", "/postgres?"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = settings.pg_dsn.replace("postgresql://", "postgresql+psycopg://").replace("/shop?", f"/{name}?")
    done = await cli(env, "migrate", "--url", url)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(settings.pg_dsn.replace("/shop?", f"/{name}?")) as conn:
        indexes = dict(
            conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'").fetchall()
        )
        assert "(kind, run_id)" in indexes["ix_ledger_kind_run"]
        assert "WHERE dirty" in indexes["ix_ledger_heads_dirty"]
        assert "WHERE (NOT closed)" in indexes["ix_ledger_heads_open"]
        cols = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'history_archive'"
            )
        }
        assert {"run_id", "idx", "temporal_run_id", "sha256", "content"} <= cols
        # The planner takes the index for a scan by kind (sequential scans priced out to show it can).
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0] for r in conn.execute("EXPLAIN SELECT DISTINCT run_id FROM ledger WHERE kind = 'history.archived'")
        )
        assert "ix_ledger_kind_run" in plan, plan


async def test_a_foreign_workflow_cannot_drive_a_background_pass(
    client: Client, cluster: dict[str, Any], worker_running: str, deps: Any
) -> None:
    """A Temporal client's own workflow schedules the reaper's pass on the background queue with a
    state it wrote (a watermark in the future, to hide closed runs): refused before anything ran."""
    from tests.rogue import RogueCallWorkflow

    spec = {
        "queue": background_queue(cluster["queue"]),
        "activity": "background.reap",
        "arg": {"job": "reaper", "since": "2999-01-01T00:00:00+00:00", "cursor": "zzz"},
    }
    wid = f"rogue-bg-{uuid.uuid4().hex[:8]}"
    answer = await client.execute_workflow(RogueCallWorkflow.run, spec, id=wid, task_queue=worker_running)
    assert answer["ok"] is False and "refused" in answer["message"], answer
    assert answer["type"] == errors.BAD_INPUT and answer["retry_state"] == "NON_RETRYABLE_FAILURE", answer
    assert "caller.refused" in ledger_kinds(deps, wid)


class _RacingSigner:
    """The real Transit signer, with a rival checkpointer that, while this one waits for its
    signature, appends to the same chain and takes the next checkpoint number `losses` times."""

    def __init__(self, real: Any, rival: Any, chain: str, losses: int) -> None:
        self._real, self._rival, self._chain, self.left = real, rival, chain, losses
        self.key_name = real.key_name

    def sign(self, message: bytes) -> str:
        if self.left > 0:
            self.left -= 1
            self._rival.append(f"rival:{uuid.uuid4().hex}", self._chain, "note", {"by": "rival"})
            assert self._rival.checkpoint() is not None
            self._rival.append(f"rival:{uuid.uuid4().hex}", self._chain, "note", {"by": "rival"})
        return str(self._real.sign(message))

    def public_keys(self) -> dict[int, str]:
        return dict(self._real.public_keys())

    def write_witness(self, name: str, record: dict[str, Any]) -> None:
        self._real.write_witness(name, record)

    def read_witness(self, name: str) -> dict[str, Any] | None:
        return self._real.read_witness(name)


def test_a_checkpointer_that_keeps_losing_the_race_retries_until_it_signs(deps: Any, tmp_path: Path) -> None:
    """Two checkpointers on one ledger: the loser of each race signs again on top of the winner's
    checkpoint, however many times it loses (it once gave up after ten), and the ledger verifies."""
    from lockgate.activities.anchor import TransitAnchor
    from lockgate.activities.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    real = TransitAnchor(lambda: deps.vault.client)
    rival = Ledger(url, signer=real, checkpoint_interval=None)
    racing = _RacingSigner(real, rival, "run-raced", losses=15)
    loser = Ledger(url, signer=racing, checkpoint_interval=None)
    try:
        loser.append("first", "run-raced", "note", {"by": "loser"})
        seq = loser.checkpoint()
        assert racing.left == 0 and seq == 16  # fifteen numbers taken by the rival, then its own
        assert loser.checkpoint() is None  # nothing left unsigned
        assert loser.verify() == []
    finally:
        loser.dispose()
        rival.dispose()


async def test_the_background_passes_publish_backlog_and_lag_gauges(
    client: Client, env: dict[str, str], tmp_path: Path
) -> None:
    """The only worker of its cluster runs every pass, and its metrics endpoint shows the reaper's
    backlog and the checkpoint lag."""
    import urllib.request

    from lockgate.devstack import free_port

    queue = f"bg-m-{uuid.uuid4().hex[:8]}"
    address = f"127.0.0.1:{free_port()}"
    log, proc = _start_worker(
        {**env, "LOCKGATE_TASK_QUEUE": queue, "LOCKGATE_REAP_INTERVAL": "1", "LOCKGATE_METRICS_ADDRESS": address},
        tmp_path / "worker.log",
    )

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
                return response.read().decode()
        except OSError:
            return ""

    try:
        deadline = time.monotonic() + 90
        wanted = ("lockgate_reaper_backlog", "lockgate_open_runs", "lockgate_checkpoint_lag_seconds")
        while True:
            text = await asyncio.to_thread(scrape)
            if all(name in text for name in wanted):
                break
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"gauges missing from the scrape: {text[-1500:]}"
            await asyncio.sleep(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
