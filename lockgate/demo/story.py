"""`lockgate demo`: the refund-agent story on the real stack, start to finish, in about a minute."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import psycopg

from lockgate.config import Settings, load_settings, read_env_file
from lockgate.devstack import DevStack
from lockgate.errors import UserError

__all__ = ["run_demo"]

# The demo's people (Vault userpass identities of the dev stack): erin asks for refunds, alice
# (finance) and carol (support-leads) approve, mallory is in no group.
INITIATOR = "erin"


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


_SESSIONS: dict[str, Any] = {}


def _person(settings: Settings, name: str) -> Any:
    """`lockgate login NAME` for the demo's people (the dev password is in dev.env)."""
    from lockgate.identity import login_userpass

    if name not in _SESSIONS:
        password = read_env_file(settings.state_dir / "dev.env").get("LOCKGATE_DEV_PASSWORD", "")
        _SESSIONS[name] = login_userpass(settings.vault_addr, name, password)
    return _SESSIONS[name]


async def _approve(client: Any, settings: Settings, run_id: str, request_id: str, who: str) -> None:
    from lockgate.ops import send_verdict

    attempt = await send_verdict(
        client, run_id, request_id, session=_person(settings, who), approve=True, reason="demo"
    )
    mark = "accepted" if attempt.accepted else "REFUSED"
    _say(f"   ({who} logged in) lockgate approve {run_id} {request_id}  -> {mark}: {attempt.reason}")


async def _forged_signal(client: Any, ledger: Any, run_id: str, pending: dict[str, Any]) -> None:
    """What round 1 accepted: a raw Temporal signal that merely says it is alice."""
    claim = {"request_id": pending["request_id"], "approver": "alice", "args_digest": pending["args_digest"]}
    await client.get_workflow_handle(run_id).signal("approve", claim)
    _say(f'   temporal workflow signal --workflow-id {run_id} --name approve --input \'{{"approver": "alice", ...}}\'')
    for _ in range(100):
        refused = [
            e for e in ledger.events(run_id) if e["kind"] == "approval.refused" and "forged" in e.get("reason", "")
        ]
        if refused:
            _say(f"   -> REFUSED, recorded in the ledger: {refused[-1]['approver']}: {refused[-1]['reason']}")
            return
        await asyncio.sleep(0.1)
    _say("   -> not recorded within 10 s (see lockgate audit)")


def _leftovers(settings: Settings, vault_token: str | None) -> tuple[int, int]:

    from lockgate import vaultio

    roles = 0
    if settings.pg_dsn:
        with psycopg.connect(settings.pg_dsn) as conn:
            row = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'").fetchone()
            roles = row[0] if row else 0
    leases = 0
    client = vaultio.client(settings.vault_addr, vault_token)
    try:
        roles_listed = client.adapter.list("/v1/sys/leases/lookup/database/creds/")
    except Exception:  # noqa: BLE001 - no lease under that prefix at all
        roles_listed = None
    for role in [k.rstrip("/") for k in (roles_listed or {}).get("data", {}).get("keys", [])]:
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
        erin = _person(settings, INITIATOR)
        _say(f"   {INITIATOR} logged in (Vault userpass); every run below is started with her signed statement")
        run = lambda data: start_run(client, settings.task_queue, "refund-agent", data, session=erin)  # noqa: E731

        _title(1, "autonomous: refund 15.00 on A-1001 (under the 100.00 autonomy limit)")
        await _finish(client, await run({"order_id": "A-1001", "amount_cents": 1500, "reason": "late delivery"}))

        _title(2, "approval gate: refund 250.00 on A-1002 needs group finance")
        handle = await run({"order_id": "A-1002", "amount_cents": 25000, "reason": "damaged item"})
        pending = await _wait_pending(client, handle.id)
        _say(
            f"   lockgate pending -> {pending['run_id']} {pending['request_id']} {pending['tool']} "
            f"args {pending['args']} group {pending['group']} quorum {pending['quorum']}"
        )
        await _approve(client, settings, handle.id, pending["request_id"], "mallory")
        await _forged_signal(client, deps.ledger, handle.id, pending)
        await _approve(client, settings, handle.id, pending["request_id"], "alice")
        await _finish(client, handle)

        _title(3, "denied: refund 1,500.00 on A-1002 is over the hard cap; no lease, no side effect")
        await _finish(client, await run({"order_id": "A-1002", "amount_cents": 150000, "reason": "goodwill"}))

        _title(4, "failure and compensation: refund on A-1003, then notify a customer whose email is invalid")
        handle = await run({"order_id": "A-1003", "amount_cents": 1000, "reason": "wrong size", "notify": True})
        pending = await _wait_pending(client, handle.id)
        _say(f"   the run read regulated data (customers.profile), so egress needs {pending['group']}")
        await _approve(client, settings, handle.id, pending["request_id"], "carol")
        await _finish(client, handle)

        _title(5, f"audit timeline of {handle.id}")
        from lockgate.ops import run_status

        status = (await run_status(client, handle.id)).model_dump(mode="json")
        events = (await handle.fetch_history()).events
        history = history_entries(events, client.data_converter)
        # The run's closing checkpoint is signed moments after it closes; the story shows it proven.
        await asyncio.to_thread(deps.ledger.seal)
        _say(render_text(timeline(deps.ledger, handle.id, status, history)))

    # One more run, left waiting for two support-leads, for the approvers' inbox.
    async with lockgate_worker.build_worker(client, deps, services=False):
        waiting = await start_run(
            client, settings.task_queue, "incident-agent", {"host_id": "web-2"}, session=_person(settings, "erin")
        )
        await _wait_pending(client, waiting.id)
    try:
        inbox = stack.start_inbox()
        _title(6, f"the approvers' inbox: {inbox}")
        _say(f"   {waiting.id} waits there for an on-call engineer: sign in as frank or grace with")
        _say("   LOCKGATE_DEV_PASSWORD from .lockgate/dev.env (start `lockgate worker` so the run goes on once")
        _say("   approved); the story's runs are on their run pages")
    except UserError as err:
        _say(f"   (the inbox did not start: {err})")
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
