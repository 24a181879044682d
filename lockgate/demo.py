"""`lockgate demo`: the refund-agent story on the real stack, start to finish, in about a minute."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import psycopg

from lockgate.bootstrap import DB_ROLES
from lockgate.config import Settings, load_settings
from lockgate.devstack import DevStack

__all__ = ["run_demo"]

INITIATOR = "demo-operator"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _title(n: int, text: str) -> None:
    _say()
    _say(f"== {n}. {text}")


async def _wait_pending(client: Any, run_id: str, timeout: float = 30) -> dict[str, Any]:
    from lockgate.ops import list_pending

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Search attributes are eventually consistent; the run's own query is exact.
        rows = [r for r in await list_pending(client) if r["run_id"] == run_id]
        if rows:
            return rows[0]
        await asyncio.sleep(0.2)
    raise RuntimeError(f"run {run_id} did not ask for approval in {timeout:.0f}s")


async def _finish(client: Any, handle: Any) -> Any:
    from lockgate.ops import run_status

    try:
        await handle.result()
    except Exception:  # noqa: BLE001, S110 - the status says how it ended
        pass
    status = await run_status(client, handle.id)
    for s in status.steps:
        extra = s.summary or s.error or ""
        label = "FAILED" if s.outcome == "allow" and s.error else s.outcome.upper()
        _say(f"   step {s.step}: {s.tool:<18} {label:<8} [{', '.join(s.policy_ids) or s.gate}] {extra}")
    for s in status.compensations:
        _say(f"   compensation step {s.step}: {s.tool} -> {s.summary or s.error}")
    _say(f"   run {handle.id}: {status.state.upper()}" + (f" ({status.error})" if status.error else ""))
    return status


async def _approve(client: Any, run_id: str, request_id: str, who: str) -> None:
    from lockgate.ops import send_verdict

    attempt = await send_verdict(client, run_id, request_id, approver=who, approve=True, reason="demo")
    mark = "accepted" if attempt.accepted else "REFUSED"
    _say(f"   lockgate approve {run_id} {request_id} --as {who}  -> {mark}: {attempt.reason}")


def _leftovers(settings: Settings, vault_token: str | None) -> tuple[int, int]:
    import hvac

    roles = 0
    if settings.pg_dsn:
        with psycopg.connect(settings.pg_dsn) as conn:
            roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'").fetchone()[0]
    leases = 0
    client = hvac.Client(url=settings.vault_addr, token=vault_token)
    for role in DB_ROLES:
        try:
            resp = client.adapter.list(f"/v1/sys/leases/lookup/database/creds/{role}/")
            leases += len((resp or {}).get("data", {}).get("keys", []))
        except Exception:  # noqa: BLE001, S110 - none under that prefix
            pass
    return leases, roles


async def run_demo(settings: Settings, *, keep_up: bool = True) -> int:
    from lockgate import worker as lockgate_worker
    from lockgate.audit import history_entries, render_text, timeline
    from lockgate.ops import start_run

    started = time.monotonic()
    # The demo fails a tool on purpose; keep the SDK's traceback for it out of the story.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    _say("lockgate demo: the refund-agent on real Temporal, OpenBao (Vault API) and PostgreSQL")
    _say("== 0. dev stack")
    stack = DevStack.from_env(settings.state_dir)
    stack.up(lambda m: _say(f"   {m}"))
    settings = load_settings()
    if settings.pg_dsn:
        # The demo's story needs refundable orders: earlier demo refunds count as reversed.
        with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE refunds SET reversed_at = now() WHERE reversed_at IS NULL")
        _say("   demo shop reset: every order fully refundable again")
    deps = lockgate_worker.build_deps(settings)
    client = await lockgate_worker.connect(settings, deps.vault)
    _say(
        f"   worker logged in to Vault with AppRole; policy bundle {deps.bundle.hash[:12]} "
        f"({len(deps.bundle.statements)} policies)"
    )

    async with lockgate_worker.build_worker(client, deps):
        run = lambda data: start_run(client, settings.task_queue, "refund-agent", data, initiator=INITIATOR)  # noqa: E731

        _title(1, "autonomous: refund 15.00 on A-1001 (under the 100.00 autonomy limit)")
        await _finish(client, await run({"order_id": "A-1001", "amount_cents": 1500, "reason": "late delivery"}))

        _title(2, "approval gate: refund 250.00 on A-1002 needs group finance")
        handle = await run({"order_id": "A-1002", "amount_cents": 25000, "reason": "damaged item"})
        pending = await _wait_pending(client, handle.id)
        _say(
            f"   lockgate pending -> {pending['run_id']} {pending['request_id']} {pending['tool']} "
            f"args {pending['args']} group {pending['group']} quorum {pending['quorum']}"
        )
        await _approve(client, handle.id, pending["request_id"], "mallory")
        await _approve(client, handle.id, pending["request_id"], "alice")
        await _finish(client, handle)

        _title(3, "denied: refund 1,500.00 on A-1002 is over the hard cap; no lease, no side effect")
        await _finish(client, await run({"order_id": "A-1002", "amount_cents": 150000, "reason": "goodwill"}))

        _title(4, "failure and compensation: refund on A-1003, then notify a customer whose email is invalid")
        handle = await run({"order_id": "A-1003", "amount_cents": 1000, "reason": "wrong size", "notify": True})
        pending = await _wait_pending(client, handle.id)
        _say(f"   the run read regulated data (customers.profile), so egress needs {pending['group']}")
        await _approve(client, handle.id, pending["request_id"], "carol")
        await _finish(client, handle)

        _title(5, f"audit timeline of {handle.id}")
        from lockgate.ops import run_status

        status = (await run_status(client, handle.id)).model_dump(mode="json")
        events = (await handle.fetch_history()).events
        history = history_entries(events, client.data_converter)
        _say(render_text(timeline(deps.ledger, handle.id, status, history)))

    leases, roles = _leftovers(settings, settings.vault_token)
    _say()
    _say(
        f"== after the runs: {leases} live Vault leases, {roles} dynamic Postgres roles"
        f" {'(nothing leaked)' if leases == roles == 0 else '(LEAKED)'}"
    )
    if settings.ui_address:
        _say(f"   Temporal UI: {settings.ui_address}/namespaces/{settings.namespace}/workflows")
    _say(f"   try: lockgate status {handle.id} | lockgate audit {handle.id} --format md | lockgate leases")
    _say(f"demo finished in {time.monotonic() - started:.1f}s")
    if not keep_up:
        stack.down(lambda m: _say(f"   {m}"))
    return 0 if leases == roles == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(run_demo(load_settings())))
