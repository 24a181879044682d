"""Histories that outlive the server's retention: every closed run's Temporal history, archived in
the ledger's database and anchored in the ledger.

A workflow cannot export its own final history from inside, so the archiver works from outside,
after the run closed: the cluster's background archiver (`lockgate.background`, once per cluster)
and `lockgate archive` list lockgate runs that closed since the last pass, store each history as the
JSON the Temporal UI and CLI produce (`google.protobuf.json_format` of
`temporalio.api.history.v1.History`; payloads as encrypted as they were in history) in the
`history_archive` table, and record their digests in the ledger (`history.archived`), where the next
checkpoint signs them. `lockgate audit`, `replay` and evidence exports read the archive, on any host,
when the server no longer has a run. Archives written by older lockgates as files under
`LOCKGATE_ARCHIVE_DIR` are still read (the ledger's record names the file).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode

from lockgate.activities.ledger import Ledger
from lockgate.models import canonical_json

__all__ = ["ARCHIVED", "ArchivePass", "ArchivedHistory", "HistoryArchive", "history_digest", "run_histories"]

log = logging.getLogger("lockgate.archive")

ARCHIVED = "history.archived"
_WORKFLOW_TYPE = "lockgate.agent"


def history_digest(history_json: dict[str, Any]) -> str:
    """sha256 of a history's canonical JSON: independent of how the file was indented."""
    return hashlib.sha256(canonical_json(history_json).encode()).hexdigest()


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
    # Where it was read from: "ledger" (the database), or a legacy file's path.
    source: str = "ledger"


@dataclass
class ArchivePass:
    """One bounded pass of the archiver: the runs it archived, the close time every run closed
    before is archived through (the next pass's watermark), and how many candidates it left for
    the next pass (the archive's backlog)."""

    archived: list[str] = field(default_factory=list)
    through: str | None = None
    left: int = 0


# Visibility is eventually consistent: a pass looks this far back before its watermark.
OVERLAP = timedelta(minutes=2)
# A pass archives at most this many runs (a first pass over a long history works through it in
# several passes; the watermark moves only once nothing before it is left).
PASS_LIMIT = 200


class HistoryArchive:
    """Closed runs' histories in the ledger's database (`history_archive`), each anchored by its
    digest in the ledger; `directory` is where older lockgates wrote them as files (still read)."""

    def __init__(self, directory: Path | None, ledger: Ledger) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._ledger = ledger

    def record(self, run_id: str) -> dict[str, Any] | None:
        """The ledger's record of the run's archived histories (None: not archived)."""
        for e in self._ledger.entries(run_id):
            if e.kind == ARCHIVED:
                return dict(json.loads(e.data))
        return None

    def archived_runs(self) -> list[str]:
        with self._ledger.reader.connect() as conn:
            rows = conn.execute(text("SELECT DISTINCT run_id FROM ledger WHERE kind = :k"), {"k": ARCHIVED})
            return sorted(str(r[0]) for r in rows)

    def archived_among(self, run_ids: list[str]) -> set[str]:
        """Which of `run_ids` have an archive record (one indexed look-up per batch: kind, run_id)."""
        found: set[str] = set()
        with self._ledger.reader.connect() as conn:
            for i in range(0, len(run_ids), 500):
                batch = run_ids[i : i + 500]
                names = {f"r{j}": r for j, r in enumerate(batch)}
                query = text(
                    f"SELECT DISTINCT run_id FROM ledger WHERE kind = :k AND run_id IN ({', '.join(':' + n for n in names)})"
                )
                found.update(str(r[0]) for r in conn.execute(query, {"k": ARCHIVED, **names}))
        return found

    def _store(self, run_id: str, idx: int, history: WorkflowHistory, doc: dict[str, Any], digest: str) -> str:
        """Stores one history (idempotent: a concurrent archiver's identical row stands) and
        returns the digest of what the table holds for it."""
        row = {
            "r": run_id,
            "i": idx,
            "t": history.run_id,
            "n": len(history.events),
            "h": digest,
            "c": json.dumps(doc, separators=(",", ":")),
            "at": datetime.now(UTC).isoformat(),
        }
        try:
            with self._ledger.engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO history_archive (run_id, idx, temporal_run_id, events, sha256, content, archived_at) "
                        "VALUES (:r, :i, :t, :n, :h, :c, :at)"
                    ),
                    row,
                )
        except IntegrityError:
            pass  # another archiver stored it first: the ledger records what the table holds
        with self._ledger.reader.connect() as conn:
            stored = conn.execute(
                text("SELECT sha256 FROM history_archive WHERE run_id = :r AND idx = :i"), {"r": run_id, "i": idx}
            ).first()
        return str(stored[0]) if stored else digest

    def write(self, run_id: str, histories: list[WorkflowHistory]) -> dict[str, Any]:
        """Stores the run's histories and records their digests in the ledger (idempotent)."""
        items = []
        for i, history in enumerate(histories):
            doc = history.to_json_dict()
            digest = self._store(run_id, i, history, doc, history_digest(doc))
            items.append(
                {
                    "temporal_run_id": history.run_id,
                    "events": len(history.events),
                    "sha256": digest,
                    "stored": "ledger",
                }
            )
        data = {"workflow_id": run_id, "histories": items}
        self._ledger.try_append(f"{ARCHIVED}:{run_id}", run_id, ARCHIVED, data)
        return self.record(run_id) or data

    def _read(self, run_id: str, idx: int, item: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """One archived history's JSON and where it came from (OSError/ValueError: unreadable)."""
        if item.get("file"):
            if self.directory is None:
                raise OSError("archived as a file by an older lockgate; set LOCKGATE_ARCHIVE_DIR to read it")
            path = self.directory / str(item["file"])
            return json.loads(path.read_text()), str(path)
        with self._ledger.reader.connect() as conn:
            row = conn.execute(
                text("SELECT content FROM history_archive WHERE run_id = :r AND idx = :i AND temporal_run_id = :t"),
                {"r": run_id, "i": idx, "t": item["temporal_run_id"]},
            ).first()
        if row is None:
            raise OSError("not in the ledger database's history_archive (deleted?)")
        return json.loads(str(row[0])), "ledger"

    def load(self, run_id: str) -> tuple[list[ArchivedHistory], list[str]]:
        """The run's archived histories, each checked against the digest the ledger recorded."""
        record = self.record(run_id)
        if record is None:
            return [], []
        out: list[ArchivedHistory] = []
        problems: list[str] = []
        for idx, item in enumerate(record["histories"]):
            try:
                doc, source = self._read(run_id, idx, item)
            except (OSError, ValueError) as err:
                problems.append(f"archived history {item['temporal_run_id']}: unreadable ({err})")
                continue
            digest = history_digest(doc)
            if digest != item["sha256"]:
                problems.append(
                    f"archived history {item['temporal_run_id']}: does not match its ledger digest (edited)"
                )
                continue
            out.append(ArchivedHistory(WorkflowHistory.from_json(run_id, doc), digest, source))
        return out, problems

    async def archive_run(self, client: Client, run_id: str) -> dict[str, Any] | None:
        """Archives a run whose every history is closed; None if it is still going (or unknown)."""
        if self.record(run_id) is not None:
            return self.record(run_id)
        histories = await run_histories(client, run_id)
        if not histories or not all(closed for _, closed in histories):
            return None
        return await asyncio.to_thread(self.write, run_id, [h for h, _ in histories])

    async def archive_pass(
        self, client: Client, since: str | None = None, *, limit: int = PASS_LIMIT, overlap: timedelta = OVERLAP
    ) -> ArchivePass:
        """One bounded pass: the lockgate runs closed since `since` (an ISO time; None: ever) and
        not yet archived, at most `limit` of them. Its cost is the runs closed since the watermark
        (one visibility listing, one indexed ledger look-up per 500) plus the runs it archives."""
        query = f'WorkflowType = "{_WORKFLOW_TYPE}" AND ExecutionStatus != "Running"'
        if since is not None:
            query += f' AND CloseTime > "{(datetime.fromisoformat(since) - overlap).isoformat()}"'
        started = datetime.now(UTC)
        closed: dict[str, None] = {}
        async for wf in client.list_workflows(query):
            closed[wf.id] = None
        ids = list(closed)
        done = await asyncio.to_thread(self.archived_among, ids)
        todo = [r for r in ids if r not in done]
        out = ArchivePass(left=max(0, len(todo) - limit))
        failed = False
        for run_id in todo[:limit]:
            try:
                if await self.archive_run(client, run_id) is not None:
                    out.archived.append(run_id)
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    failed = True
                    log.warning("archive: run %s not archived this pass: %s", run_id, err)
        if out.archived:
            await asyncio.to_thread(self._ledger.seal)
        # The watermark moves only when nothing before it is left for a later pass.
        out.through = since if (out.left or failed) else started.isoformat()
        return out

    async def archive_once(self, client: Client) -> list[str]:
        """A full pass (`lockgate archive`): every closed lockgate run not yet archived. Returns their ids."""
        archived: list[str] = []
        while True:
            done = await self.archive_pass(client)
            archived += done.archived
            if not done.left or not done.archived:
                return archived
