"""The session stack's helpers for tests: start and finish runs as people do, ask a run's status,
read the ledger, run the CLI, and look at Vault and Postgres from outside (conftest.py holds the
fixtures that start the stack; these read what it wrote to `STACK`)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import psycopg
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ActivityError, ChildWorkflowError

from lockgate.config import Settings
from lockgate.identity import OperatorSession, login_userpass, sign
from lockgate.models import ApprovalRequest, RunInput, RunStatus, args_digest

__all__ = [
    "AGENT_MODULES",
    "DROPIN_POLICIES",
    "PROCESS_AGENT_MODULES",
    "ROOT",
    "_PEOPLE",
    "_STACK",
    "Outside",
    "as_person",
    "cli",
    "finish",
    "ledger_events",
    "ledger_kinds",
    "pending_request",
    "person",
    "run_cli",
    "start",
    "status_of",
]

ROOT = Path(__file__).resolve().parent.parent.parent

# The agents the CLI and worker processes of the session load...
PROCESS_AGENT_MODULES = "lockgate.demo.shop,lockgate.demo.incident,tests.agents,examples.report_agent"
# ...and the ones the stack is bootstrapped for (Vault policies, databases): also the drop-in
# examples. Those import their frameworks (seconds per process), and nothing but their own workers
# needs them: `LockgatePlugin(govern=...)` adds their agents to the worker it configures.
AGENT_MODULES = (
    f"{PROCESS_AGENT_MODULES},examples.pydantic_ai_agent,examples.openai_agents_agent,"
    "examples.pydantic_ai_itops,examples.openai_agents_oncall"
)


# The drop-in examples' policies (examples/pydantic_ai_agent.py, examples/openai_agents_agent.py,
# and the second app of each framework: examples/pydantic_ai_itops.py, examples/openai_agents_oncall.py).
DROPIN_POLICIES = ("bank-support", "airline", "itops", "oncall")


def compose_policies(target: Path) -> Path:
    """The test sessions' policy folder in `target`: the shipped policies, the test agents', the
    README's report agent and the drop-in apps', their schemas appended into one."""
    for item in (ROOT / "policies").iterdir():
        shutil.copy(item, target / item.name)
    shutil.copy(ROOT / "tests" / "policies" / "test-agents.cedar", target / "test-agents.cedar")
    shutil.copy(ROOT / "examples" / "policies" / "report-agent.cedar", target / "report-agent.cedar")
    for name in DROPIN_POLICIES:
        shutil.copy(ROOT / "examples" / "policies" / f"{name}.cedar", target / f"{name}.cedar")
    with open(target / "schema.cedarschema", "a") as schema:
        schema.write((ROOT / "tests" / "policies" / "test-schema.cedarschema").read_text())
        schema.write((ROOT / "examples" / "policies" / "report-agent.cedarschema").read_text())
        for name in DROPIN_POLICIES:
            schema.write((ROOT / "examples" / "policies" / f"{name}.cedarschema").read_text())
    return target


class Outside:
    """Looks at Vault and Postgres the way an auditor would: as root, from outside lockgate."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.vault = hvac.Client(url=settings.vault_addr, token=settings.vault_token)

    def pg(self) -> psycopg.Connection:
        assert self.settings.pg_dsn
        return psycopg.connect(self.settings.pg_dsn, autocommit=True)

    def dynamic_roles(self) -> list[str]:
        with self.pg() as conn:
            return [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'")]

    def live_leases(self) -> list[str]:
        out = []
        try:
            roles = self.vault.adapter.list("/v1/sys/leases/lookup/database/creds/")
        except hvac.exceptions.InvalidPath:
            return []
        for role in [k.rstrip("/") for k in (roles or {}).get("data", {}).get("keys", [])]:
            try:
                resp = self.vault.adapter.list(f"/v1/sys/leases/lookup/database/creds/{role}/")
            except hvac.exceptions.InvalidPath:
                continue
            out += [f"database/creds/{role}/{k}" for k in (resp or {}).get("data", {}).get("keys", [])]
        return out

    def refunds(self, run_id: str) -> list[tuple[Any, ...]]:
        with self.pg() as conn:
            return list(
                conn.execute(
                    "SELECT order_id, amount_cents, idempotency_key, step, reversed_at FROM refunds WHERE run_id = %s "
                    "ORDER BY step",
                    (run_id,),
                )
            )

    def token_alive(self, accessor: str) -> bool:
        try:
            self.vault.adapter.post("/v1/auth/token/lookup-accessor", json={"accessor": accessor})
            return True
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
            return False

    def assert_nothing_leaked(self, within: float = 10.0) -> None:
        """No live lease, no dynamic role. Vault revokes a token's leases asynchronously (about
        0.1 s here), so this looks again for up to `within` seconds before it fails."""
        deadline = time.monotonic() + within
        while True:
            leases = self.live_leases()
            roles = self.dynamic_roles()
            if (not leases and not roles) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert leases == [], f"live Vault leases left: {leases}"
        assert roles == [], f"dynamic Postgres roles left: {roles}"


# The dev people of the session's stack (Vault userpass), logged in once each.
_STACK: dict[str, str] = {}
_PEOPLE: dict[str, OperatorSession] = {}


def person(name: str) -> OperatorSession:
    """A dev person's operator session (alice, bob, carol, dave, erin, mallory, ...)."""
    if name not in _PEOPLE:
        _PEOPLE[name] = login_userpass(_STACK["VAULT_ADDR"], name, _STACK["LOCKGATE_DEV_PASSWORD"])
    return _PEOPLE[name]


def as_person(env: dict[str, str], name: str) -> dict[str, str]:
    """The CLI environment of `name`, logged in (their operator token)."""
    return {**env, "LOCKGATE_OPERATOR_TOKEN": person(name).token}


async def start(
    client: Client,
    task_queue: str,
    agent: str,
    data: dict[str, Any],
    *,
    initiator: str = "erin",
    run_id: str | None = None,
    session: OperatorSession | None = None,
) -> WorkflowHandle[Any, Any]:
    """Starts a run as `initiator` would: with their signed start statement (`session`: a person of
    another stack than the session's)."""
    run_id = run_id or f"{agent}-{uuid.uuid4().hex[:10]}"
    session = session or person(initiator)
    signed = await asyncio.to_thread(
        sign, session, "start", {"run_id": run_id, "agent": agent, "input_digest": args_digest(data)}
    )
    return await client.start_workflow(
        "lockgate.agent",
        RunInput(agent=agent, input=data, initiator=session.name, start=signed),
        id=run_id,
        task_queue=task_queue,
    )


async def finish(handle: WorkflowHandle[Any, Any]) -> BaseException | None:
    """Waits for the run; returns the failure's cause (None when it completed)."""
    try:
        await asyncio.wait_for(handle.result(), timeout=60)
        return None
    except TimeoutError:
        raise
    except Exception as err:  # noqa: BLE001
        cause = getattr(err, "cause", err)
        while isinstance(cause, (ActivityError, ChildWorkflowError)) and cause.cause is not None:
            cause = cause.cause
        return cause


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lockgate.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        input=input,
    )


def ledger_kinds(deps: Any, run_id: str) -> list[str]:
    return [e.kind for e in deps.ledger.entries(run_id)]


def ledger_events(deps: Any, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in deps.ledger.entries(run_id) if e.kind == kind]


async def status_of(handle: WorkflowHandle[Any, Any]) -> RunStatus:
    return await handle.query("status", result_type=RunStatus)


async def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """run_cli off the event loop, so the session's in-process worker keeps serving meanwhile."""
    return await asyncio.to_thread(run_cli, env, *args, timeout=timeout)


async def pending_request(handle: WorkflowHandle[Any, Any], timeout: float = 20) -> ApprovalRequest:
    """The run's first pending approval request, once it has asked for one (its own query: exact)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        pending = await handle.query("pending_approvals", result_type=list[ApprovalRequest])
        if pending:
            return pending[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} did not ask for approval")


async def wait_file(path: str | os.PathLike[str], timeout: float = 60) -> None:
    """Until `path` exists (a test hook's `.reached` marker); fails after `timeout` seconds."""
    for _ in range(int(timeout / 0.05)):
        if os.path.exists(path):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never appeared")
