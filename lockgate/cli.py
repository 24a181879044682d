"""`lockgate`: the operator's command line (DESIGN.md "CLI").

Exit codes: 0 done; 1 the operation ran and found a problem; 2 bad input or refused, with one line
on stderr and no traceback. `--json` prints machine-readable output on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lockgate.config import Settings, load_settings
from lockgate.errors import PolicyError, UserError
from lockgate.text import redact_url, safe, safe_json

__all__ = ["build_parser", "entry", "main"]


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


async def _client(settings: Settings, *, read: bool = True) -> Any:
    """A client as the operator: encrypted payloads are read with the operator's own Vault token,
    checked here once so that a token without access fails with one line, before anything else.
    `read=False` for a command that only sends (a start): encrypting is all it needs."""
    from lockgate.worker import connect

    client = await connect(settings)
    check = getattr(client.data_converter.payload_codec, "check_access", None)
    if check is not None:
        await asyncio.to_thread(check, decrypt=read)
    return client


def _ledger(settings: Settings) -> Any:
    from lockgate.verify import open_ledger

    return open_ledger(settings)


def _ledger_readonly(settings: Settings) -> Any:
    from lockgate.verify import open_ledger

    return open_ledger(settings, create=False)


def _session(settings: Settings) -> Any:
    """The logged-in person (`lockgate login`, or LOCKGATE_OPERATOR_TOKEN); UserError otherwise."""
    from lockgate.identity import load_session

    return load_session(settings)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


# -- dev ---------------------------------------------------------------------------------------
def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.devstack import DevStack

    stack = DevStack.from_env(settings.state_dir)
    say = (lambda _m: None) if args.json else (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    if args.action == "up":
        env = stack.up(say)
        status = stack.status()
        if args.json:
            _print_json({"status": status, "env_file": str(stack.env_file)})
        else:
            print(
                f"dev stack up. Temporal {env['LOCKGATE_TEMPORAL_ADDRESS']}, UI {env['LOCKGATE_UI_ADDRESS'] or '-'}, "
                f"OpenBao {env['VAULT_ADDR']}, Postgres socket {env['LOCKGATE_PG_SOCKET_DIR']}"
            )
            print(f"settings in {stack.env_file}")
        return 0
    if args.action == "down":
        stack.down(say)
        if not args.json:
            print("dev stack down")
        return 0
    status = stack.status()
    healthy = all(s["healthy"] for s in status.values())
    if args.json:
        _print_json({"healthy": healthy, "services": status})
    else:
        for name, s in status.items():
            where = s.get("address") or s.get("socket_dir") or "-"
            print(f"{name:<9} {'healthy' if s['healthy'] else 'DOWN':<8} {where}")
    return 0 if healthy else 1


# -- mcp -----------------------------------------------------------------------------------------
def cmd_mcp(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.mcp.cli import cmd_mcp as run

    return run(args, settings)


# -- policy --------------------------------------------------------------------------------------
def cmd_policy(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.policies import load_bundle
    from lockgate.policycli import agents_for_policies, cmd_policy_more

    if args.action != "check":
        return cmd_policy_more(args, settings)
    directory = Path(args.dir) if args.dir else settings.policy_dir
    try:
        # Validated against the schema generated from the agents' tools (the demo's when none are configured).
        bundle = load_bundle(directory, agents_for_policies())
    except PolicyError as err:
        if args.json:
            _print_json({"valid": False, "errors": [f"{directory / p}" for p in err.problems]})
        for problem in err.problems:
            print(f"{directory / problem}", file=sys.stderr)
        return 2
    if args.json:
        _print_json({"valid": True, "hash": bundle.hash, "policies": [s.policy_id for s in bundle.statements]})
    else:
        print(f"{directory}: {len(bundle.statements)} policies valid; bundle {bundle.hash}")
    return 0


# -- runs ----------------------------------------------------------------------------------------
async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.ids import InvalidRunId, check_run_id
    from lockgate.ops import parse_input, run_status, start_refusal, start_run

    data = parse_input(args.agent, args.input)
    session = _session(settings)
    run_id = args.id or f"{args.agent}-{uuid.uuid4().hex[:10]}"
    try:
        check_run_id(run_id)
    except InvalidRunId as err:
        raise UserError(str(err)) from None
    refusal = await asyncio.to_thread(start_refusal, settings.policy_dir, args.agent, session)
    if refusal is not None:
        # Recorded like the worker's refusals, with who asked: a refused start leaves evidence.
        with contextlib.suppress(Exception):
            _ledger(settings).try_append(
                f"run.refused:{run_id}:cli",
                run_id,
                "run.refused",
                {"reason": f"start: {refusal}", "origin_run_id": "", "initiator": session.name, "by": "cli"},
            )
        raise UserError(f"start refused: {refusal}")
    # Starting needs only encryption; with --wait a person who may not read still learns the outcome.
    client = await _client(settings, read=False)
    handle = await start_run(
        client, settings.task_queue, args.agent, data, session=session, run_id=run_id, tenant=args.tenant
    )
    if not args.wait:
        if args.json:
            _print_json({"run_id": handle.id})
        else:
            print(handle.id)
        return 0
    try:
        await handle.result()
    except Exception:  # noqa: BLE001, S110 - the status below tells what happened
        pass
    status = await run_status(client, handle.id)
    if args.json:
        _print_json(status.model_dump(mode="json"))
    else:
        print(handle.id)
        _print_status(status)
    return 0 if status.state == "completed" else 1


def _print_status(status: Any) -> None:
    # Every string here may come from an agent, a tool or a person: shown through `safe`.
    print(
        f"run {safe(status.run_id)}: {status.state}  agent {safe(status.agent)}  initiator {safe(status.initiator)}  "
        f"step {status.step}  spent {status.spent}  open leases {status.open_leases}"
    )
    for s in status.steps:
        line = (
            f"  step {s.step:>2} {safe(s.tool):<18} {s.outcome:<8} {s.gate:<10} {safe(','.join(s.policy_ids)) or '-'}"
        )
        if s.summary:
            line += f"  {safe(s.summary)}"
        if s.error:
            line += f"  ERROR: {safe(s.error)}"
        print(line)
    for s in status.compensations:
        print(f"  compensation step {s.step} {safe(s.tool)}: {safe(s.summary or s.error or s.outcome)}")
    for p in status.pending_approvals:
        print(
            f"  pending approval {safe(p.request_id)}: {safe(p.tool)} by {safe(p.group)} "
            f"({len(p.approvals)}/{p.quorum}), expires {p.expires_at:%Y-%m-%d %H:%M:%S}"
        )
    if status.error:
        print(f"  error: {safe(status.error)}")


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.ops import run_status

    status = await run_status(await _client(settings), args.run_id)
    if args.json:
        _print_json(status.model_dump(mode="json"))
    else:
        _print_status(status)
    return 0


async def cmd_pending(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.ops import list_pending

    rows = await list_pending(await _client(settings), args.agent)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no approval requests waiting")
    for r in rows:
        print(
            f"{safe(r['run_id'])}  {safe(r['request_id'])}  {safe(r['agent'])}  {safe(r['tool'])}  "
            f"group {safe(r['group'])} ({len(r['approvals'])}/{r['quorum']})  args {safe_json(r['args'])}  "
            f"digest {safe(r['args_digest'][:16])}  expires {safe(r['expires_at'])}"
        )
    return 0


async def cmd_verdict(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.ops import send_verdict

    approve = args.command == "approve"
    session = _session(settings)
    client = await _client(settings)
    try:
        attempt = await send_verdict(
            client,
            args.run_id,
            args.request_id,
            session=session,
            approve=approve,
            reason=args.reason or "",
            args_digest=args.digest,
        )
    except UserError as err:
        if "is not running" in str(err):
            # Too late for the run to hear it: the refused attempt is still recorded, with who and why.
            _ledger(settings).append(
                f"approval.refused:{args.run_id}:{uuid.uuid4().hex}",
                args.run_id,
                "approval.refused",
                {
                    "request_id": args.request_id,
                    "approver": session.name,
                    "verdict": args.command,
                    "accepted": False,
                    "reason": str(err),
                },
            )
        raise
    if args.json:
        _print_json(attempt.model_dump(mode="json"))
    if not attempt.accepted:
        print(f"lockgate: {args.command} refused: {safe(attempt.reason)}", file=sys.stderr)
        return 2
    if not args.json:
        print(
            f"{'approval' if approve else 'rejection'} by {safe(session.name)} recorded on {safe(args.run_id)} "
            f"{safe(args.request_id)}"
        )
    return 0


async def cmd_halt(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.ops import halt_run, run_status, wait_closed

    session = _session(settings)
    client = await _client(settings)
    await halt_run(client, args.run_id, args.reason or f"halted by {session.name}", session=session)
    await wait_closed(client, args.run_id, timeout=120)
    # One outcome: the run's own state (`halted`), not also Temporal's close status of the
    # workflow (a halted run's workflow closes as failed).
    status = await run_status(client, args.run_id)
    if args.json:
        _print_json(status.model_dump(mode="json"))
    else:
        _print_status(status)
    return 0


def _signed_ledger(settings: Settings) -> Any:
    """The ledger with the worker's signer when this shell has the worker's AppRole (dev stack),
    so a command that records something can also seal it; else the ledger alone."""
    from lockgate.activities.ledger import Ledger

    if settings.vault_role_id and settings.vault_secret_id:
        from lockgate.activities.anchor import TransitAnchor
        from lockgate.activities.ledger.rowkey import VaultRowKeys
        from lockgate.activities.vault import VaultBroker

        broker = VaultBroker(settings.vault_addr, settings.vault_role_id, settings.vault_secret_id, timeout=3)
        return Ledger(
            settings.ledger_url,
            signer=TransitAnchor(lambda: broker.client),
            checkpoint_interval=None,
            row_key=VaultRowKeys(lambda: broker.client),
            strict_events=True,
        )
    return _ledger(settings)


async def _await_proof(ledger: Any, run_id: str, timeout: float = 30) -> None:
    """Seals what the run just recorded (or waits for a worker's checkpoint to)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if ledger.signer is not None:
            await asyncio.to_thread(ledger.seal)
        evidence = await asyncio.to_thread(ledger.run_evidence, run_id)
        sizes = {c["chain"]: len(c["entries"]) for c in evidence["chains"]}
        proven = {c["chain"]: max((p["size"] for p in c["proofs"]), default=0) for c in evidence["chains"]}
        if all(proven.get(c, 0) >= n for c, n in sizes.items()) or asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.5)


async def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.activities.archive import HistoryArchive, run_histories
    from lockgate.activities.codec import PayloadKeyError
    from lockgate.activities.ledger import LedgerMissing
    from lockgate.audit import history_entries, render_markdown, render_text, timeline
    from lockgate.config import archive_dir
    from lockgate.ops import run_status
    from lockgate.verify import local_anchors, pin_keys, vault_anchors

    try:
        ledger = _signed_ledger(settings) if args.export else _ledger_readonly(settings)
    except LedgerMissing:
        raise UserError(f"unknown run {args.run_id!r} (no ledger at {redact_url(settings.ledger_url)})") from None
    archive = HistoryArchive(archive_dir(settings), ledger)
    status = None
    history: list[dict[str, Any]] = []
    source: str | None = None
    try:
        client = await _client(settings)
    except PayloadKeyError as err:
        # The ledger holds no regulated data: an auditor without the payload key still gets it.
        print(f"lockgate: run status and history not shown: {err}", file=sys.stderr)
        client = None
    except UserError:
        client = None  # audit from the ledger and the archive when Temporal is away
    if client is not None:
        try:
            status = (await run_status(client, args.run_id)).model_dump(mode="json")
        except UserError:
            status = None
        server = await run_histories(client, args.run_id)
        for h, _closed in server:
            history += history_entries(h.events, client.data_converter)
        if server:
            source = f"{len(server)} histor{'y' if len(server) == 1 else 'ies'} from the Temporal server"
        if args.export and server and all(closed for _, closed in server) and archive.record(args.run_id) is None:
            await archive.archive_run(client, args.run_id)
    if not history:
        archived, problems = archive.load(args.run_id)
        from lockgate import worker

        converter = client.data_converter if client is not None else worker.DATA_CONVERTER
        for h in archived:
            history += history_entries(h.history.events, converter)
        if archived:
            why = "the Temporal server no longer has this run" if client is not None else "Temporal is unreachable"
            source = f"{len(archived)} archived histor{'y' if len(archived) == 1 else 'ies'} ({why})"
        if problems:
            source = f"{source or 'archive'}; ARCHIVE PROBLEMS: {'; '.join(problems)}"
    anchors = vault_anchors(settings, ledger.name) or local_anchors(settings, ledger.name)
    keys = anchors.keys if anchors else None
    if args.export:
        from lockgate.export import build_bundle, verify_bundle, write_bundle

        await _await_proof(ledger, args.run_id)
        bundle = await asyncio.to_thread(build_bundle, ledger, archive, args.run_id)
        codec = client.data_converter.payload_codec if client is not None else None
        await asyncio.to_thread(_seal_for_auditor, bundle, args.auditor_key, codec, settings)
        write_bundle(bundle, args.export)
        if anchors is not None and anchors.source == "Vault" and keys:
            pin_keys(settings, keys)
        check = verify_bundle(bundle, trusted_keys=keys, trust=anchors.source if anchors else "")
        print(
            f"evidence bundle written to {args.export} ({'verified' if check.ok else 'NOT intact: ' + '; '.join(check.problems[:3])})",
            file=sys.stderr,
        )
    doc = timeline(ledger, args.run_id, status, history, trusted_keys=keys, history_source=source)
    ledger.dispose()
    if not doc["entries"] and status is None:
        raise UserError(f"unknown run {args.run_id!r}")
    if args.format == "json":
        _print_json(doc)
    elif args.format == "md":
        print(render_markdown(doc))
    else:
        print(render_text(doc))
    return 0 if doc["ledger_intact"] else 1


def _seal_for_auditor(bundle: dict[str, Any], public_key: str | None, codec: Any, settings: Settings) -> None:
    """Adds the histories' data keys, sealed for the auditor's key, to an evidence bundle: what an
    offline replay of encrypted histories needs. The exporter's own Vault token unwraps them, so
    only someone allowed to read the run can give them away (lockgate.auditkeys)."""
    from temporalio.client import WorkflowHistory

    from lockgate.activities.codec import encrypted_data_keys

    needed: set[tuple[str, str]] = set()
    for h in bundle["histories"]:
        needed |= encrypted_data_keys(WorkflowHistory.from_json(bundle["run_id"], h["history"]).events)
    if not needed:
        return
    if public_key is None:
        print(
            "lockgate: the bundle's histories are encrypted: an offline replay needs their keys, "
            "export again with --auditor-key AUDITOR.pub (lockgate auditor-key FILE makes one)",
            file=sys.stderr,
        )
        return
    from lockgate.auditkeys import load_public_key, seal_payload_keys

    recipient = load_public_key(public_key)
    if codec is None or not hasattr(codec, "transit"):
        from lockgate import worker

        codec = worker.data_converter(settings).payload_codec
        if codec is None:
            raise UserError("the histories are encrypted and this shell has no Vault token to read them")
    plain = [(name, wrapped, codec.transit.unwrap(name, wrapped)) for name, wrapped in sorted(needed)]
    bundle["payload_keys"] = seal_payload_keys(plain, recipient)


def cmd_auditor_key(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.auditkeys import generate_key

    private, public, fp = generate_key(args.file)
    if args.json:
        _print_json({"private_key": str(private), "public_key": str(public), "fingerprint": fp})
    else:
        print(f"auditor key {fp}: private {private} (keep it; mode 0600), public {public} (give it to exporters)")
    return 0


def _offline_ledger(settings: Settings) -> Any:
    """The ledger, only if it is a local file (offline replay never waits for a database server)."""
    from lockgate.activities.ledger import Ledger, LedgerMissing

    if not settings.ledger_url.startswith("sqlite"):
        return None
    try:
        return Ledger(settings.ledger_url, create=False)
    except LedgerMissing:
        return None


async def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate import worker
    from lockgate.replay import replay, replay_files
    from lockgate.spec import registry

    if args.history:
        if args.all or args.run_ids:
            raise UserError("--history replays files: name no RUN_ID and no --all with it")
        from lockgate.policies import load_bundle
        from lockgate.verify import load_keys_file, pinned_keys

        try:
            current = load_bundle(settings.policy_dir, registry)
        except (PolicyError, OSError):
            current = None  # the recorded copies are what counts; the current dir is only a shortcut
        keys, trust = (load_keys_file(args.keys), f"--keys {args.keys}") if args.keys else pinned_keys(settings)
        auditor_key = None
        if args.key:
            from lockgate.auditkeys import load_private_key

            auditor_key = load_private_key(args.key)
        ledger = _offline_ledger(settings)
        try:
            reports = await replay_files(
                args.history,
                registry,
                worker.DATA_CONVERTER,
                ledger=ledger,
                current=current,
                trusted_keys=keys,
                trust=trust,
                auditor_key=auditor_key,
            )
        finally:
            if ledger is not None:
                ledger.dispose()
    else:
        if not args.all and not args.run_ids:
            raise UserError("name RUN_ID..., --all or --history FILE...")
        from lockgate.activities.archive import HistoryArchive
        from lockgate.config import archive_dir

        client = await _client(settings)
        ledger = _ledger(settings)
        reports = await replay(
            client,
            ledger,
            registry,
            None if args.all else args.run_ids,
            client.data_converter,
            archive=HistoryArchive(archive_dir(settings), ledger),
            processes=args.processes,
        )
    bad = [r for r in reports if not r.ok]
    skipped = [r for r in reports if r.skipped is not None]
    if args.json:
        _print_json([r.as_dict() for r in reports])
    else:
        for r in reports:
            if r.skipped is not None:
                print(f"skipped  {r.run_id}: {r.skipped}")
                continue
            where = "" if r.source == "server" else f" [{r.source}]"
            kind = "" if r.workflow_type in ("", "lockgate.agent") else f" ({r.workflow_type})"
            print(
                f"{'ok      ' if r.ok else 'MISMATCH'} {r.run_id}{kind}: {r.histories} histories, {r.events} events, "
                f"{r.decisions} decisions re-checked{where}"
            )
            for problem in r.problems:
                print(f"    {problem}")
        print(
            f"{len(reports) - len(skipped)} runs replayed, {len(bad)} with mismatches"
            + (f", {len(skipped)} skipped (not replayable here, see above)" if skipped else "")
        )
    # A run named on the command line that could not be replayed is a failure; `--all` lists its
    # skips and fails only on mismatches.
    return 1 if bad or (skipped and not args.all) else 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Brings the ledger's schema to this lockgate's (forward only), as the migration role."""
    from lockgate.activities.ledger.migrate import runtime_grants, upgrade

    url = args.url or settings.ledger_url
    done = upgrade(url)
    if args.json:
        _print_json({"before": done.before, "after": done.after, "changed": done.changed})
    elif done.changed:
        print(f"ledger schema migrated: {done.before or 'none'} -> {done.after}")
    else:
        print(f"ledger schema already at {done.after}: nothing to do")
    if args.grants and not args.json:
        print("\n".join(s + ";" for s in runtime_grants(args.grants)))
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.verify import load_keys_file, verify_ledger

    keys = load_keys_file(args.keys) if args.keys else None
    if args.bundle:
        return _verify_bundle(args, settings, keys)
    report, anchors = verify_ledger(settings, strict=args.strict, keys=keys)
    if args.json:
        _print_json({**report.as_dict(), "anchors": anchors.source})
        return 0 if report.ok else 1
    from lockgate.evidence import fingerprint

    print(
        f"ledger {report.ledger_id}: {report.entries:,} entries in {report.chains:,} chains, "
        f"{report.checkpoints:,} signed checkpoints"
    )
    keys_line = ", ".join(f"v{v} {fingerprint(k)}" for v, k in sorted(report.keys.items())) or "none yet"
    print(f"signing keys: {keys_line} (trusted from: {anchors.source})")
    print(f"witness: {report.witness}")
    through = report.proven_through
    where = f"through checkpoint #{through['checkpoint']} ({through['at']})" if through else "no checkpoint yet"
    print(
        f"proven: {report.proven:,} entries {where}; {report.pending:,} pending (recorded in the last minute, "
        f"awaiting the next checkpoint); {report.unproven:,} unproven"
    )
    for problem in report.problems:
        print(f"  {problem}")
    print("ledger intact" if report.ok else f"ledger NOT intact: {len(report.problems)} problem(s)")
    return 0 if report.ok else 1


def _verify_bundle(args: argparse.Namespace, settings: Settings, keys: dict[int, str] | None) -> int:
    from lockgate.export import load_bundle_file, verify_bundle
    from lockgate.verify import pinned_keys

    bundle = load_bundle_file(args.bundle)
    trust = f"--keys {args.keys}" if keys else ""
    if keys is None:
        keys, trust = pinned_keys(settings)
    report = verify_bundle(bundle, trusted_keys=keys, trust=trust)
    if args.json:
        _print_json(report.as_dict())
    else:
        for line in report.lines():
            print(line)
    return 0 if report.ok else 1


def cmd_compensations(args: argparse.Namespace, settings: Settings) -> int:
    """Compensations that failed and are still outstanding (the reaper retries them with backoff)."""
    from lockgate.activities.reaper import failed_compensations
    from lockgate.spec import registry

    ledger = _ledger(settings)
    rows = []
    for run_id in ledger.run_ids_with("compensation.outstanding"):
        events = [{"run_id": run_id, **e} for e in ledger.events(run_id)]
        retries = [e for e in events if e["kind"] == "reaper.compensation"]
        for item in failed_compensations(events, registry):
            tries = [e for e in retries if int(e.get("step", -1)) == item["step"]]
            rows.append(
                {
                    "run_id": run_id,
                    "step": item["step"],
                    "compensation": item["compensation"],
                    "idempotency_key": item["idempotency_key"],
                    "retries": len(tries),
                    "last_error": tries[-1].get("error") if tries else None,
                }
            )
    if args.json:
        _print_json(rows)
        return 1 if rows else 0
    if not rows:
        print("no outstanding compensations")
    for r in rows:
        print(
            f"{safe(r['run_id'])}  step {r['step']}  {safe(r['compensation'])}  retries {r['retries']}"
            + (f"  last error: {safe(r['last_error'])}" if r["last_error"] else "")
        )
    return 1 if rows else 0


def cmd_leases(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.activities.vault import VaultBroker
    from lockgate.spec import registry

    if not (settings.vault_role_id and settings.vault_secret_id):
        raise UserError("LOCKGATE_VAULT_ROLE_ID / LOCKGATE_VAULT_SECRET_ID are not set (run `lockgate dev up`)")
    vault = VaultBroker(settings.vault_addr, settings.vault_role_id, settings.vault_secret_id)
    try:
        vault.check()
    except Exception as err:  # noqa: BLE001
        raise UserError(f"cannot reach Vault at {settings.vault_addr}: {err}") from None
    issued = {}
    for e in _ledger(settings).entries():
        if e.kind == "lease.issued":
            data = json.loads(e.data)
            issued[data["lease_id"]] = {"run_id": e.run_id, "tool": data.get("tool"), "step": data.get("step")}
    rows = []
    for path in sorted({t.secret for t in registry.tools() if t.secret}):
        for lease_id in vault.live_leases(path):
            info = vault.lease_info(lease_id) or {}
            rows.append(
                {
                    "lease_id": lease_id,
                    **issued.get(lease_id, {"run_id": None, "tool": None, "step": None}),
                    "expires_at": info.get("expire_time"),
                    "ttl": info.get("ttl"),
                }
            )
    if args.json:
        _print_json(rows)
    else:
        if not rows:
            print("no live leases")
        for r in rows:
            print(f"{r['lease_id']}  run {r['run_id']}  tool {r['tool']}  expires {r['expires_at']}")
    return 0


async def cmd_reap(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate import worker

    deps = worker.build_deps(settings)
    reports = await worker.build_reaper(deps).reap_once(await _client(settings))
    rows = [
        {
            "run_id": r.run_id,
            "workflow_status": r.workflow_status,
            "compensations": r.compensations,
            "identity_revoked": r.identity_revoked,
        }
        for r in reports
    ]
    if args.json:
        _print_json(rows)
    else:
        if not rows:
            print("nothing to reap")
        for r in rows:
            comps = ", ".join(
                f"step {c['step']} {c['tool']} {'ok' if c['ok'] else 'FAILED'}" for c in r["compensations"]
            )
            print(f"{r['run_id']} ({r['workflow_status']}): compensations [{comps or 'none'}], identity revoked")
    failed = any(not c["ok"] for r in rows for c in r["compensations"])
    return 1 if failed else 0


async def cmd_archive(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate import worker

    deps = worker.build_deps(settings)
    try:
        archive = worker.build_archive(deps)
        archived = await archive.archive_once(await _client(settings))
    finally:
        deps.ledger.dispose()
    if args.json:
        _print_json({"archived": archived, "stored": "ledger"})
    else:
        print(f"archived the histories of {len(archived)} closed run(s) in the ledger database")
    return 0


async def cmd_freeze(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.activities.freeze import ALL
    from lockgate.ops import set_freeze, wake_frozen
    from lockgate.spec import registry

    if args.agent and registry.get(args.agent) is None:
        from lockgate.spec import load_agent_modules

        load_agent_modules(settings.agent_modules)  # only to check the name given
    if args.agent and registry.get(args.agent) is None:
        raise UserError(f"unknown agent {args.agent!r} (known: {', '.join(registry.names())})")
    scope = ALL if args.all else args.agent
    frozen = args.command == "freeze"
    session = _session(settings)
    who = session.name
    set_freeze(_ledger(settings), session, scope, frozen, args.reason or "")
    woken: list[str] = []
    if not frozen:
        try:
            woken = await wake_frozen(await _client(settings), None if args.all else args.agent)
        except UserError:
            woken = []  # Temporal away: frozen runs find the lifted freeze at their next re-check
    if args.json:
        _print_json({"scope": scope, "frozen": frozen, "by": who, "woken": woken})
    else:
        target = "every agent" if args.all else args.agent
        print(
            f"{'froze' if frozen else 'unfroze'} {target}"
            + (f"; woke {len(woken)} frozen runs" if not frozen else "; no tool of it runs from the next gate on")
        )
    return 0


# -- teams: people and approver groups ----------------------------------------------------------
def _directory(args: argparse.Namespace, settings: Settings) -> Any:
    """The directory as the given Vault token (stdin) or the logged-in person sees and changes it."""
    from lockgate.teams import Directory

    if args.vault_token_stdin:
        token = _read_secret(True, "", "Vault token")
    else:
        token = _session(settings).token
    from lockgate import vaultio

    return Directory(vaultio.client(settings.vault_addr, token, timeout=10))


def cmd_groups(args: argparse.Namespace, settings: Settings) -> int:
    directory = _directory(args, settings)
    if args.action == "list":
        groups = directory.groups()
        if args.json:
            _print_json(groups)
        else:
            for name, members in groups.items():
                print(f"{safe(name):<20} {', '.join(safe(m) for m in members) or '-'}")
        return 0
    if not args.names or (args.action != "create" and len(args.names) < 2):
        raise UserError(
            "groups create NAME | groups add GROUP PERSON... | groups remove GROUP PERSON..."
            if args.action != "create"
            else "groups create NAME: name the group"
        )
    if args.action == "create":
        created = {name: directory.create_group(name) for name in args.names}
        if args.json:
            _print_json(
                {"created": [n for n, c in created.items() if c], "existed": [n for n, c in created.items() if not c]}
            )
        else:
            for name, c in created.items():
                print(f"group {safe(name)} {'created' if c else 'already exists'}")
        return 0
    group, people = args.names[0], args.names[1:]
    change = directory.add_members if args.action == "add" else directory.remove_members
    members = change(group, people)
    if args.json:
        _print_json({"group": group, "members": members})
    else:
        print(f"group {safe(group)}: {', '.join(safe(m) for m in members) or 'no members'}")
    return 0


def cmd_people(args: argparse.Namespace, settings: Settings) -> int:
    people = _directory(args, settings).people()
    if args.json:
        _print_json(people)
    else:
        for name, groups in people.items():
            print(f"{safe(name):<20} {', '.join(safe(g) for g in groups) or '-'}")
    return 0


# -- people: login / logout / whoami -------------------------------------------------------------
def _read_secret(from_stdin: bool, prompt: str, what: str) -> str:
    value = sys.stdin.readline().rstrip("\r\n") if from_stdin else getpass.getpass(prompt)
    if not value:
        raise UserError(f"no {what} given")
    return value


def _expiry(session: Any) -> str:
    if session.expires_at is None:
        return "never expires"
    left = int((session.expires_at - datetime.now(UTC)).total_seconds())
    return f"expires {session.expires_at:%Y-%m-%d %H:%M:%S} UTC (in {left // 3600}h{left % 3600 // 60:02d}m)"


def _print_session(session: Any) -> None:
    groups = ", ".join(sorted(session.groups)) or "none"
    print(f"{session.name}  groups: {groups}  token {_expiry(session)}  ({session.method} at {session.vault_addr})")


def cmd_login(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.identity import login_token, login_userpass, logout, save_session

    if args.method == "userpass":
        if not args.user:
            raise UserError("login: name the USER to log in as")
        password = _read_secret(args.password_stdin, f"Password for {args.user}: ", "password")
        session = login_userpass(settings.vault_addr, args.user, password)
    else:
        # A token from another auth method (OIDC, LDAP, ...): from stdin when piped, else a prompt.
        token = _read_secret(args.password_stdin or not sys.stdin.isatty(), "Vault token: ", "token")
        try:
            session = login_token(settings.vault_addr, token)
        except UserError as err:
            if "cannot reach" in str(err):
                raise
            raise UserError(f"login failed{' for ' + args.user if args.user else ''}: {err}") from None
        if args.user and session.name != args.user:
            raise UserError(f"login failed for {args.user}: the token belongs to {session.name}")
    try:
        logout(settings)  # the session being replaced: its token is revoked, not left lying around
    except UserError:
        pass
    save_session(settings, session)
    if args.json:
        _print_json(session.public())
    else:
        print(f"logged in as {session.name}")
        _print_session(session)
    return 0


def cmd_logout(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.identity import logout

    name = logout(settings)
    if args.json:
        _print_json({"logged_out": name})
    else:
        print(f"logged out {name} (token revoked)" if name else "not logged in: nothing to do")
    if settings.operator_token:
        print("lockgate: note: LOCKGATE_OPERATOR_TOKEN is still set and still acts for you", file=sys.stderr)
    return 0


def cmd_whoami(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.identity import load_session

    session = load_session(settings)
    if args.json:
        _print_json(session.public())
    else:
        _print_session(session)
    return 0


def cmd_inbox(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.inbox.app import Inbox, serve
    from lockgate.inbox.notify import webhooks_from_env

    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if not loopback:
        print("lockgate: note: serve the inbox behind HTTPS (cookies are then marked Secure)", file=sys.stderr)
    base = settings.inbox_url or f"http://{args.host}:{args.port}"
    webhooks = webhooks_from_env({"LOCKGATE_INBOX_WEBHOOKS": settings.inbox_webhooks})
    inbox = Inbox(settings, webhooks=webhooks, base_url=base, secure_cookies=not loopback)
    serve(inbox, args.host, args.port)
    return 0


def cmd_worker(_args: argparse.Namespace, _settings: Settings) -> int:
    from lockgate import worker

    return worker.main()


def cmd_codec_server(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.codec_server import CodecConfig, serve

    origins = list(args.origin or [])
    if not origins and settings.ui_address:
        origins = [settings.ui_address, settings.ui_address.replace("127.0.0.1", "localhost")]
    print(
        f"codec server on http://{args.host}:{args.port} (Vault {settings.vault_addr}, "
        f"key {settings.payload_key or '-'}, origins {', '.join(origins) or '-'})",
        file=sys.stderr,
        flush=True,
    )
    serve(CodecConfig(settings.vault_addr, settings.payload_key, tuple(origins)), args.host, args.port)
    return 0


def cmd_setup(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.setup import SetupOptions, run_setup
    from lockgate.spec import load_agents

    people = None
    if args.people:
        try:
            raw = json.loads(Path(args.people).read_text())
            people = {str(k): tuple(str(g) for g in v) for k, v in raw.items()}
        except (OSError, ValueError, AttributeError, TypeError) as err:
            raise UserError(f"--people {args.people}: expected a JSON object name -> [groups]: {err}") from None
    opts = SetupOptions(
        dry_run=args.dry_run,
        parts=tuple(args.only or ("temporal", "openbao", "ledger")),
        people=people,
        groups=tuple(args.group or ()),
        worker_credentials=Path(args.worker_credentials) if args.worker_credentials else None,
        new_worker_secret=args.new_worker_secret,
        setup_credentials=Path(args.setup_credentials) if args.setup_credentials else None,
        wrap_ttl=args.wrap_ttl,
        secret_id_ttl=args.secret_id_ttl,
        secret_id_uses=args.secret_id_uses,
        ledger_runtime_role=args.ledger_runtime_role,
        provision_databases=args.provision_databases,
        retention_days=args.retention_days,
        unwrap=args.unwrap,
    )
    report = run_setup(settings, load_agents(settings.agent_modules), opts)
    if args.json:
        _print_json(report.as_dict())
    else:
        for line in report.lines():
            print(safe(line, 2000))
    return 1 if report.problems else 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.demo.story import run_demo

    return asyncio.run(run_demo(settings, keep_up=not args.down))


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockgate",
        description="Governed tool calls for autonomous agent workflows (Temporal + Vault + Cedar).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[..., Any], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        return p

    p = add("dev", cmd_dev, "start, stop or check the embedded dev stack (Temporal, OpenBao, Postgres)")
    p.add_argument("action", choices=["up", "down", "status"])
    add("worker", cmd_worker, "run a lockgate worker (same as python worker.py)").set_defaults(agents=True)
    p = add("codec-server", cmd_codec_server, "serve /decode and /encode for the Temporal UI (Vault token per caller)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8235)
    p.add_argument("--origin", action="append", help="browser origin allowed to call (repeat; default: the UI's)")
    p = add("demo", cmd_demo, "walk the refund-agent through the whole story on the real stack")
    p.set_defaults(agents=True)
    p.add_argument("--down", action="store_true", help="stop the dev stack afterwards")

    p = add(
        "setup",
        cmd_setup,
        "prepare real servers, idempotently: Temporal search attributes, OpenBao, ledger migrations",
    )
    p.add_argument("--dry-run", action="store_true", help="compare only; print what would change")
    p.add_argument("--only", action="append", choices=["temporal", "openbao", "ledger"], help="one part (repeat)")
    p.add_argument("--people", metavar="FILE", help='JSON {"person": ["group", ...]} from your IdP sync')
    p.add_argument("--group", action="append", help="an approver group to create besides the policies' (repeat)")
    p.add_argument(
        "--worker-credentials",
        metavar="FILE",
        default=os.environ.get("LOCKGATE_WORKER_CREDENTIALS") or None,
        help="write the worker's role id and WRAPPED secret id (default: $LOCKGATE_WORKER_CREDENTIALS)",
    )
    p.add_argument("--new-worker-secret", action="store_true", help="issue a new worker secret id (rotation)")
    p.add_argument("--setup-credentials", metavar="FILE", help="write lockgate-setup's AppRole credentials (root run)")
    p.add_argument("--wrap-ttl", default="15m", help="lifetime of the wrapping token (default 15m)")
    p.add_argument("--secret-id-ttl", default="720h", help="lifetime of a worker secret id (default 720h)")
    p.add_argument("--secret-id-uses", type=int, default=100, help="logins per worker secret id (default 100)")
    p.add_argument("--ledger-runtime-role", metavar="ROLE", help="PostgreSQL role of the workers: gets DML grants")
    p.add_argument("--provision-databases", action="store_true", help="run the tools' declared setup_sql")
    p.add_argument(
        "--unwrap",
        action="store_true",
        default=os.environ.get("LOCKGATE_SETUP_UNWRAP", "").lower() in ("1", "true", "yes"),
        help="single host (compose): write the worker's secret id unwrapped ($LOCKGATE_SETUP_UNWRAP=1)",
    )
    p.add_argument("--retention-days", type=int, default=30, help="retention of a namespace setup registers (30)")

    p = add("run", cmd_run, "start a run of AGENT; prints the run id")
    p.set_defaults(agents=True)  # the input is validated against the agent's schema
    p.add_argument("agent")
    p.add_argument("--input", help="the agent's input as a JSON object")
    p.add_argument("--id", help="run id (default: AGENT-<random>)")
    p.add_argument("--wait", action="store_true", help="wait for the run to end and print its status")
    p.add_argument("--tenant", help="the tenant the run acts for (you must be in Vault group tenant-<name>)")

    p = add("status", cmd_status, "state, step, pending approvals and open leases of a run")
    p.add_argument("run_id")
    p = add("pending", cmd_pending, "approval requests waiting across all runs")
    p.add_argument("--agent")
    for name, verb in (("approve", "approve"), ("reject", "reject")):
        p = add(name, cmd_verdict, f"{verb} a pending approval request as IDENTITY")
        p.add_argument("run_id")
        p.add_argument("request_id")
        p.add_argument("--reason")
        p.add_argument("--digest", help="args digest you are approving (default: the pending request's)")
    p = add("halt", cmd_halt, "human override: stop a run, compensate, revoke")
    p.add_argument("run_id")
    p.add_argument("--reason")
    p = add("audit", cmd_audit, "timeline of a run from the ledger and its history")
    p.add_argument("run_id")
    p.add_argument("--format", choices=["text", "json", "md"], default="text")
    p.add_argument("--export", metavar="FILE", help="also write the run's evidence bundle (verifiable offline)")
    p.add_argument(
        "--auditor-key",
        metavar="PUB",
        help="seal the encrypted histories' keys for this auditor public key (offline replay with --key)",
    )
    p = add("auditor-key", cmd_auditor_key, "make an auditor key pair: FILE (private) and FILE.pub")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(agents=False)
    p = add("replay", cmd_replay, "replay histories with the current code and re-check every recorded decision")
    p.set_defaults(agents=True)  # the agents' tools and the drop-in apps' workflows
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    p.add_argument("--all", action="store_true", help="every lockgate run the server or the archive has")
    p.add_argument(
        "--history",
        nargs="+",
        metavar="FILE",
        help="replay exported files offline: evidence bundles or history JSON (temporal workflow show -o json)",
    )
    p.add_argument("--keys", metavar="FILE", help="trusted public keys of the ledger key, for bundles")
    p.add_argument("--key", metavar="AUDITOR_KEY", help="auditor private key: opens a bundle's encrypted histories")
    p.add_argument("--processes", type=int, help="replay processes for --all (default: one per core)")
    p = add("verify", cmd_verify, "verify the ledger (chains, signed checkpoints) or an evidence bundle, offline")
    p.add_argument("--bundle", metavar="FILE", help="verify an evidence bundle (lockgate audit --export) instead")
    p.add_argument("--keys", metavar="FILE", help="trusted public keys (JSON {version: base64}) of the ledger key")
    p.add_argument("--strict", action="store_true", help="no grace: every entry must already be checkpointed")
    # Verification needs no agent code: keeps the process small however large the ledger is.
    p.set_defaults(agents=False)
    p = add("migrate", cmd_migrate, "migrate the ledger's schema (forward only; run as the migration role)")
    p.add_argument("--url", help="the ledger as the migration role (default: LOCKGATE_LEDGER_URL)")
    p.add_argument("--grants", metavar="ROLE", help="also print the GRANTs a worker's runtime role ROLE needs")
    p.set_defaults(agents=False)
    for name, what in (
        ("freeze", "kill switch: no tool of the scope runs from the next gate on"),
        ("unfreeze", "lift the kill switch; frozen runs resume"),
    ):
        p = add(name, cmd_freeze, what)
        scope = p.add_mutually_exclusive_group(required=True)
        scope.add_argument("--agent")
        scope.add_argument("--all", action="store_true")
        p.add_argument("--reason")
    p = add("login", cmd_login, "log in as a person (a Vault identity); later commands act as them")
    p.add_argument("user", nargs="?", metavar="USER")
    p.add_argument("--method", choices=["userpass", "token"], default="userpass")
    p.add_argument("--password-stdin", action="store_true", help="read the password (or token) from stdin")
    add("logout", cmd_logout, "revoke the logged-in person's token and forget it")
    p = add("groups", cmd_groups, "approver groups (Vault identity): list | create NAME | add|remove GROUP PERSON...")
    p.add_argument("action", nargs="?", choices=["list", "create", "add", "remove"], default="list")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--vault-token-stdin", action="store_true", help="act with this Vault token, not the logged-in one")
    p = add("people", cmd_people, "people (Vault identity entities) and the approver groups they are in")
    p.add_argument("--vault-token-stdin", action="store_true", help="act with this Vault token, not the logged-in one")
    add("whoami", cmd_whoami, "the logged-in person: identity, groups, token expiry")
    p = add("inbox", cmd_inbox, "the approvers' web inbox (sign-in with Vault identity)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8234)
    add("leases", cmd_leases, "leases not yet revoked, with run, tool and expiry").set_defaults(agents=True)
    # Both read the agents' tools: an outstanding compensation counts only for its forward tool.
    add(
        "compensations", cmd_compensations, "compensations that failed and are still outstanding (exit 1 if any)"
    ).set_defaults(agents=True)
    add("reap", cmd_reap, "one pass of the reaper: clean up runs that ended without their own cleanup").set_defaults(
        agents=True
    )
    add("archive", cmd_archive, "one pass of the archiver: keep closed runs' histories beside the ledger")
    p = add("mcp", cmd_mcp, "MCP servers: list, review SERVER (diff against its pin), pin SERVER (approve)")
    p.set_defaults(agents=True)  # the servers are declared with the agents that use them
    p.add_argument("action", choices=["list", "review", "pin"])
    p.add_argument("server", nargs="?")
    p.add_argument("--policy-dir", help="where the pin file goes (default: LOCKGATE_POLICY_DIR)")
    from lockgate.policysupply import SUPPLY_ACTIONS

    p = add(
        "policy", cmd_policy, "policies: check, test, diff, schema; signed team bundles: publish, sign, promote, ..."
    )
    p.set_defaults(agents=True)  # validated against the schema generated from the agents' tools
    p.add_argument("action", choices=["check", "test", "diff", "schema", *SUPPLY_ACTIONS])
    p.add_argument("dir", nargs="?", help="policy directory (diff: the candidate bundle's; sign/promote/shadow: HASH)")
    p.add_argument("--team", help="publish, sign, promote, rollback, shadow, status, shadow-report: the team")
    p.add_argument("--stop", action="store_true", help="shadow: stop shadowing the team's candidate")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = load_settings()
    try:
        from lockgate.spec import load_agent_modules

        # Only commands that use the agents import their modules (and the agent frameworks those
        # import: seconds per process). Operator commands (status, pending, approve, audit,
        # verify, halt, ...) never need them.
        if getattr(args, "agents", False):
            load_agent_modules(settings.agent_modules)
        result = args.handler(args, settings)
        if asyncio.iscoroutine(result):
            result = _run(result)
        return int(result or 0)
    except UserError as err:
        print(f"lockgate: {safe(err, 1000)}", file=sys.stderr)
        return 2
    except PolicyError as err:
        for problem in err.problems:
            print(f"lockgate: {safe(problem, 1000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        if os.environ.get("LOCKGATE_DEBUG"):
            raise
        print(f"lockgate: {type(err).__name__}: {safe(err, 1000)}", file=sys.stderr)
        return 2


def entry() -> None:
    """Console-script entry point.

    Exits with os._exit after flushing: the Temporal client's native runtime threads can abort the
    interpreter during finalization (PyGILState_Release), turning a clean exit code into SIGABRT.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
