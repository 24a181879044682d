"""The second example agent: incident response, on the same engine and guarantees."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from lockgate import errors
from lockgate.ops import send_verdict
from tests.support.stack import Outside, finish, pending_request, person, start, status_of


def host(outside: Outside, host_id: str) -> tuple[Any, ...]:
    with outside.pg() as conn:
        return conn.execute("SELECT quarantined_at, quarantine_key FROM ops.hosts WHERE id = %s", (host_id,)).fetchone()


def tickets(outside: Outside, run_id: str) -> list[tuple[Any, ...]]:
    with outside.pg() as conn:
        return list(conn.execute("SELECT severity, closed_at FROM ops.tickets WHERE run_id = %s", (run_id,)))


def release_all(outside: Outside) -> None:
    with outside.pg() as conn:
        conn.execute("UPDATE ops.hosts SET quarantined_at = NULL, quarantine_key = NULL")


async def test_quarantine_only_after_oncall_approval(client: Client, worker_running: str, outside: Outside) -> None:
    release_all(outside)
    handle = await start(client, worker_running, "incident-agent", {"host_id": "web-1"}, initiator="erin")
    req = await pending_request(handle)
    assert (req.tool, req.group) == ("host.quarantine", "sre-oncall")
    assert host(outside, "web-1")[0] is None  # not before approval
    refused = await send_verdict(client, handle.id, req.request_id, session=person("alice"), approve=True)
    assert not refused.accepted and "sre-oncall" in refused.reason
    assert (await send_verdict(client, handle.id, req.request_id, session=person("frank"), approve=True)).accepted
    assert await finish(handle) is None
    assert host(outside, "web-1")[0] is not None
    assert [t[0] for t in tickets(outside, handle.id)] == ["high"]
    outside.assert_nothing_leaked()
    release_all(outside)


async def test_rejected_quarantine_closes_the_ticket(client: Client, worker_running: str, outside: Outside) -> None:
    release_all(outside)
    handle = await start(client, worker_running, "incident-agent", {"host_id": "web-1"}, initiator="erin")
    req = await pending_request(handle)
    assert (
        await send_verdict(
            client, handle.id, req.request_id, session=person("grace"), approve=False, reason="false positive"
        )
    ).accepted
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and cause.type == errors.APPROVAL_REJECTED
    assert host(outside, "web-1")[0] is None
    (ticket,) = tickets(outside, handle.id)
    assert ticket[1] is not None  # compensated: closed
    outside.assert_nothing_leaked()


async def test_failed_page_releases_the_quarantine(client: Client, worker_running: str, outside: Outside) -> None:
    release_all(outside)
    handle = await start(client, worker_running, "incident-agent", {"host_id": "web-2", "page": True}, initiator="erin")
    req = await pending_request(handle)
    assert (await send_verdict(client, handle.id, req.request_id, session=person("frank"), approve=True)).accepted
    cause = await finish(handle)
    assert isinstance(cause, ApplicationError) and "no owning team" in cause.message
    assert host(outside, "web-2") == (None, None)  # the quarantine was released by its compensation
    assert tickets(outside, handle.id)[0][1] is not None
    status = await status_of(handle)
    assert [c.tool for c in status.compensations] == ["host.release", "tickets.close"]
    outside.assert_nothing_leaked()
