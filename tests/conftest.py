"""Session fixtures: one real stack (Temporal dev server, OpenBao, PostgreSQL) on free ports in a
temporary directory, a worker on a fresh task queue, and helpers that look at Vault and Postgres
from the outside. The stack is stopped at session end, whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hvac
import psycopg
import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ActivityError, ChildWorkflowError

import examples.report_agent  # noqa: F401 - the README's example agent
import tests.agents  # noqa: F401 - registers test agents before Vault is bootstrapped
from lockgate.config import Settings, load_settings
from lockgate.devstack import DevStack
from lockgate.identity import OperatorSession, login_userpass, sign
from lockgate.models import ApprovalRequest, RunInput, RunStatus, args_digest
from lockgate.testing import LocalStack

ROOT = Path(__file__).resolve().parent.parent

# The agents the CLI and worker processes of the session load...
PROCESS_AGENT_MODULES = "lockgate.demo.shop,lockgate.demo.incident,tests.agents,examples.report_agent"
# ...and the ones the stack is bootstrapped for (Vault policies, databases): also the drop-in
# examples. Those import their frameworks (seconds per process), and nothing but their own workers
# needs them: `LockgatePlugin(govern=...)` adds their agents to the worker it configures.
AGENT_MODULES = f"{PROCESS_AGENT_MODULES},examples.pydantic_ai_agent,examples.openai_agents_agent"


# The drop-in examples' policies (examples/pydantic_ai_agent.py, examples/openai_agents_agent.py).
DROPIN_POLICIES = ("bank-support", "airline")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run slow fault-injection scenarios")


# The live servers' data lives in a folder of this session's own: pytest's numbered folders under
# /tmp/pytest-of-USER are pruned by any other pytest session on the machine (another checkout's
# `make test` once deleted this session's PostgreSQL mid-run). Removed at the end of the session,
# after the session fixtures have stopped the servers.
_OWN_BASETEMP: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _OWN_BASETEMP
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        _OWN_BASETEMP = Path(tempfile.mkdtemp(prefix="lockgate-tests-"))
        # Readable by the unprivileged user embedded PostgreSQL runs as when the tests run as root.
        _OWN_BASETEMP.chmod(0o755)
        config.option.basetemp = str(_OWN_BASETEMP / "t")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_BASETEMP is not None:
        shutil.rmtree(_OWN_BASETEMP, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("LOCKGATE_RUN_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow scenario: run with --run-slow (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("policies")
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


@pytest.fixture(scope="session")
def local(tmp_path_factory: pytest.TempPathFactory, policy_dir: Path) -> Iterator[LocalStack]:
    """The session's private stack (lockgate.testing), stopped at session end whatever happened."""
    with LocalStack(
        agent_modules=AGENT_MODULES, policy_dir=policy_dir, base_dir=tmp_path_factory.mktemp("stack")
    ) as local:
        _STACK.update(local.env())
        yield local
        _STACK.clear()
        _PEOPLE.clear()


@pytest.fixture(scope="session")
def stack(local: LocalStack) -> DevStack:
    return local.dev


@pytest.fixture(scope="session")
def env(local: LocalStack) -> dict[str, str]:
    """The environment a CLI or worker process of this test session runs with."""
    values = {**local.env(), "PYTHONPATH": str(ROOT), "LOCKGATE_AGENT_MODULES": PROCESS_AGENT_MODULES}
    # The dev stack encrypts payloads; LOCKGATE_TEST_PAYLOAD_KEY= (empty) runs the suite in clear.
    if "LOCKGATE_TEST_PAYLOAD_KEY" in os.environ:
        values["LOCKGATE_PAYLOAD_KEY"] = os.environ["LOCKGATE_TEST_PAYLOAD_KEY"]
    return values


@pytest.fixture(scope="session")
def settings(env: dict[str, str]) -> Settings:
    return load_settings(env)


@pytest.fixture(scope="session")
def deps(settings: Settings) -> Any:
    from lockgate import worker

    return worker.build_deps(settings)


@pytest.fixture(scope="session")
async def client(settings: Settings, deps: Any) -> Client:
    """The session worker's client: payload keys used with the worker's AppRole identity."""
    from lockgate import worker

    return await worker.connect(settings, deps.vault)


@pytest.fixture(scope="session")
async def worker_running(client: Client, deps: Any, settings: Settings) -> AsyncIterator[str]:
    """A worker for the whole session on the session's task queue. It also hosts two workflows
    written by a hostile author (tests/rogue.py): code registered beside lockgate's passes the
    caller check, so the activities' own checks are what stands in their way."""
    from lockgate import worker
    from tests.rogue import RogueCallWorkflow, RogueWorkflow

    w = worker.build_worker(client, deps, extra_workflows=[RogueWorkflow, RogueCallWorkflow])
    async with w:
        yield settings.task_queue


# -- helpers ---------------------------------------------------------------------------------------
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


@pytest.fixture(scope="session")
def outside(settings: Settings) -> Outside:
    return Outside(settings)


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


@pytest.fixture(autouse=True)
def fresh_shop(request: pytest.FixtureRequest) -> None:
    """Each stack test starts with every order fully refundable (earlier refunds count as reversed)."""
    if "worker_running" not in request.fixturenames:
        return
    with request.getfixturevalue("outside").pg() as conn:
        conn.execute("UPDATE refunds SET reversed_at = now() WHERE reversed_at IS NULL")
        conn.execute("UPDATE customers SET closed_at = NULL")


async def pending_request(handle: WorkflowHandle[Any, Any], timeout: float = 20) -> ApprovalRequest:
    """The run's first pending approval request, once it has asked for one (its own query: exact)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        pending = await handle.query("pending_approvals", result_type=list[ApprovalRequest])
        if pending:
            return pending[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} did not ask for approval")
