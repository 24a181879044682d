"""Session fixtures: one real stack (Temporal dev server, OpenBao, PostgreSQL) on free ports in a
temporary directory, a worker on a fresh task queue, and the outside view of Vault and Postgres.
The stack is stopped at session end, whatever happened. Helpers are in tests/support/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

import examples.report_agent  # noqa: F401 - the README's example agent
import tests.agents  # noqa: F401 - registers test agents before Vault is bootstrapped
from lockgate.config import Settings, load_settings
from lockgate.devstack import DevStack
from lockgate.testing import LocalStack
from tests.rogue import RogueCallWorkflow
from tests.support.stack import (
    _PEOPLE,
    _STACK,
    AGENT_MODULES,
    PROCESS_AGENT_MODULES,
    ROOT,
    Outside,
    compose_policies,
)


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
    return compose_policies(tmp_path_factory.mktemp("policies"))


@pytest.fixture(scope="session")
def local(tmp_path_factory: pytest.TempPathFactory, policy_dir: Path) -> Iterator[LocalStack]:
    """The session's private stack (lockgate.testing), stopped at session end whatever happened.

    With LOCKGATE_TEST_SHARED_STACK=DIR the servers of a stack already running in DIR (the mutation
    runner keeps one per lane: `python -m mutation.stack`) are used instead, neither started nor
    stopped here; the session still has its own task queue, ledger and worker."""
    shared = os.environ.get("LOCKGATE_TEST_SHARED_STACK")
    if shared:
        ledger = tmp_path_factory.mktemp("ledger") / "ledger.db"
        stack = LocalStack.attach(
            shared, agent_modules=AGENT_MODULES, policy_dir=policy_dir, ledger_url=f"sqlite:///{ledger}"
        )
    else:
        stack = LocalStack(
            agent_modules=AGENT_MODULES, policy_dir=policy_dir, base_dir=tmp_path_factory.mktemp("stack")
        )
    with stack as local:
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


@pytest.fixture(scope="session")
def outside(settings: Settings) -> Outside:
    return Outside(settings)


@pytest.fixture(autouse=True)
def fresh_shop(request: pytest.FixtureRequest) -> None:
    """Each stack test starts with every order fully refundable (earlier refunds count as reversed)."""
    if "worker_running" not in request.fixturenames:
        return
    with request.getfixturevalue("outside").pg() as conn:
        conn.execute("UPDATE refunds SET reversed_at = now() WHERE reversed_at IS NULL")
        conn.execute("UPDATE customers SET closed_at = NULL")


@pytest.fixture
async def rogue(client: Client, worker_running: str) -> AsyncIterator[Any]:
    """Runs RogueCallWorkflow under a chosen workflow id, hosted by the session worker itself (hostile
    code registered beside lockgate's passes the caller check: tests/test_foreign_callers.py covers a
    workflow on a worker of its own); the activity it calls runs on the session worker."""

    async def call(
        workflow_id: str,
        activity: str = "",
        arg: Any = None,
        *,
        own_origin: bool = False,
        calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """One call (`own_origin`: with the rogue execution's own first execution as origin), or
        `calls` in one execution (see RogueCallWorkflow): then {"origin": ..., "answers": [...]}."""
        spec: dict[str, Any] = {"queue": worker_running}
        if calls is not None:
            spec["calls"] = [{**c, "arg": c["arg"].model_dump(mode="json")} for c in calls]
        else:
            spec.update(activity=activity, arg=arg.model_dump(mode="json"), own_origin=own_origin)
        result: dict[str, Any] = await client.execute_workflow(
            RogueCallWorkflow.run, spec, id=workflow_id, task_queue=worker_running
        )
        return result

    yield call
