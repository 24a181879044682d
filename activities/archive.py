"""Histories that outlive the server's retention: every closed run's Temporal history, archived as
files next to the ledger and anchored in it.

A workflow cannot export its own final history from inside, so the archiver works from outside,
after the run closed: the worker's background pass (and `lockgate reap`) lists lockgate runs that
closed since the last pass, writes each history as the JSON the Temporal UI and CLI produce
(`google.protobuf.json_format` of `temporalio.api.history.v1.History`), and records their digests
in the ledger (`history.archived`), where the next checkpoint signs them. `lockgate audit` and
`lockgate replay` read the archive when the server no longer has a run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode

from lockgate.activities.ledger import Ledger
from lockgate.files import private_dir, write_private
from lockgate.models import canonical_json

__all__ = ["ARCHIVED", "ArchivedHistory", "HistoryArchive", "history_digest", "run_histories"]

log = logging.getLogger("lockgate.archive")

ARCHIVED = "history.archived"
_WORKFLOW_TYPE = "lockgate.agent"


def history_digest(history_json: dict[str, Any]) -> str:
    """sha256 of a history's canonical JSON: independent of how the file was indented."""
    return hashlib.sha256(canonical_json(history_json).encode()).hexdigest()


def _safe(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:120] + "-" + hashlib.sha256(run_id.encode()).hexdigest()[:8]


async def run_histories(client: Client, run_id: str) -> list[tuple[WorkflowHistory, bool]]:
    """Every history the server holds for a run id, oldest first, each with whether it is closed."""
    found = []
    async for wf in client.list_workflows(f'WorkflowId = "{run_id}"'):
        found.append(wf)
    found.sort(key=lambda wf: wf.start_time)
    out = []
    for wf in found:
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        closed = wf.status is not None and wf.status != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
        out.append((history, closed))
    return out


@dataclass(frozen=True)
class ArchivedHistory:
    history: WorkflowHistory
    digest: str
    path: Path


class HistoryArchive:
    """The archive directory (LOCKGATE_ARCHIVE_DIR, default STATE_DIR/archive) and its ledger records."""

    def __init__(self, directory: Path, ledger: Ledger) -> None:
        self.directory = Path(directory)
        self._ledger = ledger

    def record(self, run_id: str) -> dict[str, Any] | None:
        """The ledger's record of the run's archived histories (None: not archived)."""
        for e in self._ledger.entries(run_id):
            if e.kind == ARCHIVED:
                return dict(json.loads(e.data))
        return None

    def archived_runs(self) -> list[str]:
        with self._ledger.reader.connect() as conn:
            from sqlalchemy import text

            rows = conn.execute(text("SELECT DISTINCT run_id FROM ledger WHERE kind = :k"), {"k": ARCHIVED})
            return sorted(str(r[0]) for r in rows)

    def write(self, run_id: str, histories: list[WorkflowHistory]) -> dict[str, Any]:
        """Writes the run's histories and records their digests in the ledger (idempotent)."""
        private_dir(self.directory)
        folder = private_dir(self.directory / _safe(run_id))
        items = []
        for i, history in enumerate(histories):
            doc = history.to_json_dict()
            name = f"{i:04d}-{history.run_id}.json"
            write_private(folder / name, json.dumps(doc, separators=(",", ":")))
            items.append(
                {
                    "temporal_run_id": history.run_id,
                    "events": len(history.events),
                    "sha256": history_digest(doc),
                    "file": f"{folder.name}/{name}",
                }
            )
        data = {"workflow_id": run_id, "histories": items}
        self._ledger.try_append(f"{ARCHIVED}:{run_id}", run_id, ARCHIVED, data)
        return self.record(run_id) or data

    def load(self, run_id: str) -> tuple[list[ArchivedHistory], list[str]]:
        """The run's archived histories, each checked against the digest the ledger recorded."""
        record = self.record(run_id)
        if record is None:
            return [], []
        out: list[ArchivedHistory] = []
        problems: list[str] = []
        for item in record["histories"]:
            path = self.directory / item["file"]
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                problems.append(f"archived history {item['temporal_run_id']}: unreadable ({err})")
                continue
            digest = history_digest(doc)
            if digest != item["sha256"]:
                problems.append(
                    f"archived history {item['temporal_run_id']}: does not match its ledger digest (edited)"
                )
                continue
            out.append(ArchivedHistory(WorkflowHistory.from_json(run_id, doc), digest, path))
        return out, problems

    async def archive_run(self, client: Client, run_id: str) -> dict[str, Any] | None:
        """Archives a run whose every history is closed; None if it is still going (or unknown)."""
        if self.record(run_id) is not None:
            return self.record(run_id)
        histories = await run_histories(client, run_id)
        if not histories or not all(closed for _, closed in histories):
            return None
        return await asyncio.to_thread(self.write, run_id, [h for h, _ in histories])

    async def archive_once(self, client: Client, *, overlap: timedelta = timedelta(minutes=2)) -> list[str]:
        """One pass: archives the lockgate runs closed since the last pass. Returns their ids."""
        mark = self.directory / ".closed-through"
        since = None
        try:
            since = datetime.fromisoformat(mark.read_text().strip())
        except (OSError, ValueError):
            pass
        query = f'WorkflowType = "{_WORKFLOW_TYPE}" AND ExecutionStatus != "Running"'
        if since is not None:
            query += f' AND CloseTime > "{(since - overlap).isoformat()}"'
        started = datetime.now(UTC)
        done = set(await asyncio.to_thread(self.archived_runs))
        candidates: dict[str, None] = {}
        async for wf in client.list_workflows(query):
            if wf.id not in done:
                candidates[wf.id] = None
        archived = []
        for run_id in candidates:
            try:
                if await self.archive_run(client, run_id) is not None:
                    archived.append(run_id)
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    log.warning("archive: run %s not archived this pass: %s", run_id, err)
        if archived:
            await asyncio.to_thread(self._ledger.seal)
        private_dir(self.directory)
        mark.write_text(started.isoformat())
        return archived


async def archive_forever(client: Client, archive: HistoryArchive, interval: float, stop: asyncio.Event) -> None:
    """The worker's background pass: closed runs are archived within `interval` seconds."""
    while not stop.is_set():
        try:
            await archive.archive_once(client)
        except Exception:
            log.exception("archive pass failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
