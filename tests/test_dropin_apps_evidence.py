"""Four governed apps, two per framework, end to end for auditors (issue 33, done-when): the example
apps (Pydantic AI bank support, OpenAI Agents airline) and a second app of each (a Pydantic AI IT
helpdesk with `TemporalDurability`, an approval by the team's own group and a compensation reading
`ctx.forward`; an OpenAI Agents on-call assistant with function tools and `activity_as_tool` tools)
run governed on the real stack; then every run replays (`lockgate replay RUN...` and `--all`, which
skips none of them), one run per app is exported as an evidence bundle that verifies and replays
with every server stopped, and no ledger row holds any value a tool returned that its declaration
did not choose to keep (the tools return distinctive names, emails, phone numbers and hosts; the
decoded histories hold them, which shows the scan can see them)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import hvac
import pytest
from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
from sqlalchemy import inspect, text
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
from temporalio.openai_agents.testing import TestModelProvider
from temporalio.worker import Worker

from examples import openai_agents_agent as airline
from examples import openai_agents_oncall as oncall
from examples import pydantic_ai_agent as bank
from examples import pydantic_ai_itops as itops
from lockgate.activities.archive import HistoryArchive
from lockgate.activities.codec import TransitCodec, decode_events
from lockgate.config import Settings, archive_dir
from lockgate.plugin import LockgatePlugin
from lockgate.teams import Directory
from tests.support.dropin import app_client, app_deps, approve, db, ledger, pending_of
from tests.support.offline import offline
from tests.support.stack import AGENT_MODULES, cli, person

# What the tools return that no declaration keeps: people's names, emails, phone numbers, hosts.
SENTINELS = {
    "itops": (
        "Ada Quillfeather",
        "ada.quillfeather@helpdesk.example",
        "Grace Ostrowska-Lind",
        "grace.ostrowska-lind@helpdesk.example",
    ),
    "oncall": (
        "Linnea Brightwater-Oyelaran",
        "+1 555 0100 7731",
        "Tomasz Quellmark",
        "+1 555 0100 4412",
        "pay-7f3k.prod.internal",
    ),
    "bank": ("$123.45",),
    "airline": ("Updated seat to 12A for confirmation number ABC123",),
}
TYPES = {
    "bank": "BankSupportWorkflow",
    "airline": "CustomerServiceWorkflow",
    "itops": "HelpdeskWorkflow",
    "oncall": "OnCallWorkflow",
}


@dataclass
class Apps:
    clients: dict[str, tuple[Client, str]]
    runs: dict[str, list[str]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def deps_(settings: Settings) -> Any:
    return app_deps(settings)


@pytest.fixture(scope="module")
def it_security(settings: Settings) -> Any:
    """The helpdesk team's own approver group, made with the public API (`lockgate groups`)."""
    directory = Directory(hvac.Client(url=settings.vault_addr, token=settings.vault_token))
    directory.create_group("it-security")
    directory.add_members("it-security", ["dave"])
    yield directory
    directory.remove_members("it-security", ["dave"])


def _openai(model: Any) -> OpenAIAgentsPlugin:
    return OpenAIAgentsPlugin(
        model_params=ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30)),
        model_provider=TestModelProvider(model),
    )


@pytest.fixture(scope="module")
async def apps(settings: Settings, deps_: Any, it_security: Any) -> AsyncIterator[Apps]:
    """Each app's own client and worker, its framework plugin beside `LockgatePlugin(govern=...)`."""

    def governed(gov: Any) -> LockgatePlugin:
        return LockgatePlugin(deps=deps_, services=False, govern=[gov], start_as=lambda: person("erin"))

    suffix = uuid.uuid4().hex[:8]
    bank_client = await app_client(settings, [PydanticAIPlugin(), governed(bank.GOVERNANCE)])
    itops_client = await app_client(settings, [PydanticAIPlugin(), governed(itops.GOVERNANCE)])
    airline_client = await app_client(settings, [_openai(airline.ScriptedModel()), governed(airline.GOVERNANCE)])
    oncall_client = await app_client(settings, [_openai(oncall.ScriptedModel()), governed(oncall.GOVERNANCE)])
    queues = {name: f"{name}-ev-{suffix}" for name in TYPES}
    async with (
        Worker(
            bank_client,
            task_queue=queues["bank"],
            workflows=[bank.BankSupportWorkflow],
            plugins=[AgentPlugin(bank.support_agent)],
        ),
        Worker(
            itops_client,
            task_queue=queues["itops"],
            workflows=[itops.HelpdeskWorkflow],
            plugins=[AgentPlugin(itops.helpdesk_agent)],
        ),
        Worker(
            airline_client,
            task_queue=queues["airline"],
            workflows=[airline.CustomerServiceWorkflow],
            activities=[airline.update_seat],
        ),
        Worker(
            oncall_client,
            task_queue=queues["oncall"],
            workflows=[oncall.OnCallWorkflow],
            activities=[oncall.page_engineer, oncall.restart_service],
        ),
    ):
        yield Apps(
            clients={
                "bank": (bank_client, queues["bank"]),
                "itops": (itops_client, queues["itops"]),
                "airline": (airline_client, queues["airline"]),
                "oncall": (oncall_client, queues["oncall"]),
            }
        )


async def _start(apps: Apps, app: str, workflow: Any, arg: Any) -> Any:
    client, queue = apps.clients[app]
    handle = await client.start_workflow(workflow, arg, id=f"{app}-{uuid.uuid4().hex[:10]}", task_queue=queue)
    apps.runs.setdefault(app, []).append(handle.id)
    return handle


async def _result(handle: Any) -> Any:
    """The run's result; a run still waiting after two minutes fails the test instead of hanging it."""
    return await asyncio.wait_for(handle.result(), timeout=120)


def _completed(deps: Any, run_id: str) -> list[tuple[str, str]]:
    return [(e["tool"], e["summary"]) for e in ledger(deps, run_id) if e["kind"] == "tool.completed"]


async def _bank_runs(apps: Apps, settings: Settings) -> None:
    with db(settings, "bank") as conn:
        conn.execute("UPDATE cards SET blocked = false")
    balance = await _start(apps, "bank", bank.BankSupportWorkflow.run, bank.SupportRequest(customer_id=123, customer_name="John", prompt="What is my balance?"))  # fmt: skip
    assert (await _result(balance)).support_advice == "$123.45"
    fraud = await _start(apps, "bank", bank.BankSupportWorkflow.run, bank.SupportRequest(customer_id=123, customer_name="John", prompt="There is fraud on my card!"))  # fmt: skip
    request = await pending_of(fraud)
    assert (await approve(apps.clients["bank"][0], fraud, request, "carol")).accepted
    assert (await _result(fraud)).block_card


async def _airline_runs(apps: Apps, settings: Settings) -> None:
    with db(settings, "airline") as conn:
        conn.execute("UPDATE bookings SET seat = CASE confirmation_number WHEN 'ABC123' THEN '22F' ELSE '23A' END")
    moved = await _start(apps, "airline", airline.CustomerServiceWorkflow.run, ["How many seats are on the plane?", "Please move me to seat 12A for ABC123"])  # fmt: skip
    assert any("Updated seat to 12A" in line for line in await _result(moved))
    failed = await _start(apps, "airline", airline.CustomerServiceWorkflow.run, ["Please move me to seat 12A for ABC123 and seat 9B for NOPE00"])  # fmt: skip
    with pytest.raises(WorkflowFailureError):
        await _result(failed)


def _locked_by(settings: Settings, username: str) -> str | None:
    with db(settings, "itops") as conn:
        row = conn.execute("SELECT locked_by FROM accounts WHERE username = %s", (username,)).fetchone()
    assert row is not None
    return row[0]


async def _itops_runs(apps: Apps, settings: Settings, deps: Any) -> None:
    with db(settings, "itops") as conn:
        conn.execute("UPDATE accounts SET locked_by = NULL, lock_reason = NULL")
    # Allowed: the lookup returns Ada's name and email; the ledger keeps only what was declared.
    first = await _start(apps, "itops", itops.HelpdeskWorkflow.run, "Suspicious sign-ins: look up ada, then lock ada")
    outcome = await _result(first)
    assert outcome.locked == ["ada"] and (_locked_by(settings, "ada") or "").startswith(f"{first.id}:")
    assert _completed(deps, first.id) == [
        ("lookup_account", '{"locked": false, "team": "payments"}'),
        ("lock_account", "account locked"),
    ]
    # A privileged account: waits for the team's own group; mallory (no group) is refused, dave approves.
    privileged = await _start(apps, "itops", itops.HelpdeskWorkflow.run, "look up adm-grace, then lock adm-grace")
    request = await pending_of(privileged)
    assert (request.tool, request.group, request.agent) == ("lock_account", "it-security", "helpdesk-agent")
    client = apps.clients["itops"][0]
    assert not (await approve(client, privileged, request, "mallory")).accepted
    assert _locked_by(settings, "adm-grace") is None
    assert (await approve(client, privileged, request, "dave")).accepted
    assert (await _result(privileged)).locked == ["adm-grace"]
    # A failure after a lock: the compensation finds the account in the run's record (ctx.forward).
    with db(settings, "itops") as conn:
        conn.execute("UPDATE accounts SET locked_by = NULL WHERE username = 'ada'")
    failing = await _start(apps, "itops", itops.HelpdeskWorkflow.run, "lock ada, then look up ghost-user")
    with pytest.raises(WorkflowFailureError):
        await _result(failing)
    assert _locked_by(settings, "ada") is None
    done = [e for e in ledger(deps, failing.id) if e["kind"] == "tool.completed"]
    assert [(e["tool"], e["summary"]) for e in done] == [
        ("lock_account", "account locked"),
        ("unlock_account", "ada unlocked"),
    ]
    assert done[1]["compensates"] == done[0]["idempotency_key"]


async def _oncall_runs(apps: Apps, settings: Settings, deps: Any) -> None:
    # Function tools (workflow code) and an activity tool with a lease.
    paged = await _start(apps, "oncall", oncall.OnCallWorkflow.run, "check payments, who is on call for payments, page payments")  # fmt: skip
    assert (await _result(paged))[-1] == "done: 3 step(s)"
    assert _completed(deps, paged.id) == [
        ("service_health", '{"error_rate": 0.31, "service": "payments", "status": "degraded"}'),
        ("who_is_on_call", "returned str (result not recorded: declare Govern(summary=...))"),
        ("page_engineer", "paged"),
    ]
    assert [e["tool"] for e in ledger(deps, paged.id) if e["kind"] == "lease.issued"] == ["page_engineer"]
    # A restart waits for an operator.
    restart = await _start(apps, "oncall", oncall.OnCallWorkflow.run, "restart payments")
    request = await pending_of(restart)
    assert (request.tool, request.group) == ("restart_service", "operators")
    assert (await approve(apps.clients["oncall"][0], restart, request, "carol")).accepted
    assert (await _result(restart))[-1] == "done: 1 step(s)"
    # A failure after a page: the page is cancelled by its compensation, found through ctx.forward.
    failing = await _start(apps, "oncall", oncall.OnCallWorkflow.run, "page search, then page nowhere-svc")
    with pytest.raises(WorkflowFailureError):
        await _result(failing)
    done = [e for e in ledger(deps, failing.id) if e["kind"] == "tool.completed"]
    # In reverse: the page that raised is compensated too (it may have acted before it raised), with
    # the args its gate allowed; then the page that went out.
    assert [(e["tool"], e["summary"]) for e in done] == [
        ("page_engineer", "paged"),
        ("cancel_page", "nothing to cancel"),
        ("cancel_page", "page for search cancelled"),
    ]
    assert [e["compensates"] for e in done[1:]] == [f"{failing.id}:2", done[0]["idempotency_key"]]
    assert "compensation.outstanding" not in {e["kind"] for e in ledger(deps, failing.id)}
    with db(settings, "oncall") as conn:
        row = conn.execute(
            "SELECT cancelled_at FROM pages WHERE idempotency_key = %s", (done[0]["idempotency_key"],)
        ).fetchone()
    assert row is not None and row[0] is not None


def _ledger_rows(deps: Any, *, archive: bool) -> list[str]:
    """Every row of every table of the ledger's database, as text (with the archived histories,
    `history_archive`, when `archive`: their payloads are encrypted unless the suite runs in clear)."""
    engine = deps.ledger.reader
    rows: list[str] = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            if table == "history_archive" and not archive:
                continue
            rows += [repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
    return rows


def _payload_texts(doc: Any, out: list[str]) -> None:
    """The decoded text of every payload `data` in a history's JSON."""
    if isinstance(doc, dict):
        data = doc.get("data")
        if isinstance(data, str):
            try:
                out.append(base64.b64decode(data).decode("utf-8", "replace"))
            except ValueError:
                pass
        for value in doc.values():
            _payload_texts(value, out)
    elif isinstance(doc, list):
        for value in doc:
            _payload_texts(value, out)


async def test_four_apps_replay_export_verify_offline_and_keep_results_private(
    apps: Apps, deps_: Any, settings: Settings, env: dict[str, str], tmp_path: Path, outside: Any
) -> None:
    await _bank_runs(apps, settings)
    await _airline_runs(apps, settings)
    await _itops_runs(apps, settings, deps_)
    await _oncall_runs(apps, settings, deps_)
    outside.assert_nothing_leaked()
    mine = {run_id: TYPES[app] for app, ids in apps.runs.items() for run_id in ids}
    declared = {**env, "LOCKGATE_AGENT_MODULES": AGENT_MODULES}

    # Each run, named: replayed with its app's workflow, every recorded decision re-checked.
    named = await cli(declared, "replay", *mine, "--json", timeout=600)
    assert named.returncode == 0, _failed_replays(named.stdout) + named.stderr[-3000:]
    reports = {r["run_id"]: r for r in json.loads(named.stdout[re.search(r"^\[", named.stdout, re.M).start() :])}  # type: ignore[union-attr]
    for run_id, workflow_type in mine.items():
        report = reports[run_id]
        assert report["ok"] and report["skipped"] is None, report
        assert report["workflow_type"] == workflow_type and report["histories"] == 1 and report["decisions"] >= 1

    # All: every governed run; none of these four types is skipped, and each of these runs is ok.
    every = await cli(declared, "replay", "--all", "--json", timeout=600)
    start = re.search(r"^\[", every.stdout, re.M)
    assert start is not None, every.stdout[-2000:] + every.stderr[-2000:]
    all_reports = json.loads(every.stdout[start.start() :])
    assert [r for r in all_reports if r["skipped"] and r["workflow_type"] in TYPES.values()] == []
    by_id = {r["run_id"]: r for r in all_reports}
    assert all(by_id[run_id]["ok"] and not by_id[run_id]["skipped"] for run_id in mine), [by_id.get(r) for r in mine]

    # Evidence: one run per app exported (histories sealed for an auditor), then verified and
    # replayed with every server stopped.
    key = tmp_path / "auditor"
    assert (await cli(declared, "auditor-key", str(key))).returncode == 0
    bundles: dict[str, Path] = {}
    for app, ids in apps.runs.items():
        run_id = ids[-1]  # the richest run of each app: approved or compensated
        bundle = bundles[run_id] = tmp_path / f"{app}.json"
        exported = await cli(declared, "audit", run_id, "--export", str(bundle), "--auditor-key", f"{key}.pub")
        assert exported.returncode == 0 and "verified" in exported.stderr, exported.stdout + exported.stderr
    # The ledger's public keys, as the exporter anchored them (an auditor keeps their own copy).
    keys = tmp_path / "keys.json"
    anchor = json.loads((Path(env["LOCKGATE_STATE_DIR"]) / "ledger-anchor.json").read_text())
    keys.write_text(json.dumps(anchor["keys"]))
    dead = {**offline(env, tmp_path), "LOCKGATE_AGENT_MODULES": AGENT_MODULES}
    for run_id, bundle in bundles.items():
        verified = await cli(dead, "verify", "--bundle", str(bundle), "--keys", str(keys))
        assert verified.returncode == 0 and "bundle intact" in verified.stdout, (run_id, verified.stdout)
    replayed = await cli(dead, "replay", "--history", *map(str, bundles.values()), "--keys", str(keys), "--key", str(key), "--json")  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout[-3000:] + replayed.stderr[-3000:]
    offline_reports = json.loads(replayed.stdout[re.search(r"^\[", replayed.stdout, re.M).start() :])  # type: ignore[union-attr]
    assert sorted(r["run_id"] for r in offline_reports) == sorted(bundles)
    assert all(r["ok"] and r["decisions"] >= 1 for r in offline_reports), offline_reports

    # Private results: no ledger row (of any table) holds a value a tool returned that its
    # declaration did not choose; neither does the archive or a bundle as stored.
    sentinels = [s for values in SENTINELS.values() for s in values]
    codec = apps.clients["itops"][0].data_converter.payload_codec
    encrypted = isinstance(codec, TransitCodec)  # `LOCKGATE_TEST_PAYLOAD_KEY=` runs the suite in clear
    rows = _ledger_rows(deps_, archive=encrypted)
    assert len(rows) > 50
    leaked = {s: [r for r in rows if s in r][:2] for s in sentinels if any(s in r for r in rows)}
    assert leaked == {}, leaked
    archive = HistoryArchive(archive_dir(settings), deps_.ledger)
    decoded: list[str] = []
    for run_id, bundle in bundles.items():
        archived, problems = archive.load(run_id)
        assert archived and not problems, problems
        for item in archived:  # stored in the ledger's database: scanned with its rows above
            plain = item.history
            if isinstance(codec, TransitCodec):
                plain = WorkflowHistory(plain.workflow_id, decode_events(plain.events, codec))
            _payload_texts(json.loads(plain.to_json()), decoded)
        if encrypted:
            assert [s for s in sentinels if s in bundle.read_text()] == [], run_id
    # Control: the tools did return those values (the decoded histories, as a keyholder sees them).
    for app in ("itops", "oncall"):
        seen = [s for s in SENTINELS[app] if any(s in t for t in decoded)]
        assert seen, f"no {app} result value in its decoded history: the scan above proves nothing"


def _failed_replays(stdout: str) -> str:
    """The reports of the runs that did not replay (whole), or the output's tail when it is no list."""
    try:
        reports = json.loads(stdout[re.search(r"^\[", stdout, re.M).start() :])  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        return stdout[-3000:]
    return json.dumps([r for r in reports if not r.get("ok")], indent=1)
