"""The real stack for an agent author's own tests: Temporal, OpenBao and PostgreSQL on free ports.

`LocalStack` starts the embedded servers (the `dev` extra) in a temporary directory, bootstraps them
for your agents (their databases, roles and Vault policies), and stops everything on exit, whatever
happened::

    with LocalStack(agent_modules="myteam.agents", policy_dir="policies") as stack:
        client = await stack.client()
        async with stack.worker(client):
            handle = await stack.start(client, "report-agent", {"status": "all"})
            await handle.result()

lockgate's own test suite and benchmarks use it too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lockgate.config import Settings, load_settings, read_env_file
from lockgate.devstack import DevStack, free_port, recorded_ports
from lockgate.errors import UserError

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowHandle
    from temporalio.worker import Worker

    from lockgate.identity import OperatorSession
    from lockgate.worker import Deps

__all__ = ["LocalStack"]


class LocalStack:
    """A private dev stack for tests.

    Args:
        agent_modules: Modules declaring the agents to bootstrap and run (comma-separated).
        policy_dir: The Cedar bundle the workers load.
        base_dir: Where servers keep their state (default: a new temporary directory, removed on exit).
        task_queue: The workers' task queue (default: a fresh one).
    """

    def __init__(
        self,
        *,
        agent_modules: str,
        policy_dir: str | Path,
        base_dir: str | Path | None = None,
        task_queue: str | None = None,
    ) -> None:
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="lockgate-"))
        self.policy_dir = Path(policy_dir)
        self.agent_modules = agent_modules
        self.task_queue = task_queue or f"tests-{uuid.uuid4().hex[:8]}"
        self.dev = DevStack(
            self.base_dir / "state",
            temporal_port=free_port(),
            ui_port=free_port(),
            vault_port=free_port(),
            ui=False,
            agent_modules=agent_modules,
        )
        self._deps: Deps | None = None
        self._people: dict[str, OperatorSession] = {}
        self._attached = False
        self._ledger_url: str | None = None

    @classmethod
    def attach(
        cls,
        base_dir: str | Path,
        *,
        agent_modules: str,
        policy_dir: str | Path,
        task_queue: str | None = None,
        ledger_url: str | None = None,
    ) -> LocalStack:
        """The stack another `LocalStack` started in `base_dir` and keeps running, used without
        starting or stopping it: several test sessions in turn share one stack (the servers), each
        with its own task queue and, given `ledger_url`, its own ledger.

        Raises:
            UserError: no stack was started in `base_dir`.
        """
        self = cls(agent_modules=agent_modules, policy_dir=policy_dir, base_dir=base_dir, task_queue=task_queue)
        state = self.base_dir / "state"
        ports = recorded_ports(read_env_file(state / "dev.env"))
        if "LOCKGATE_DEV_TEMPORAL_PORT" not in ports or "LOCKGATE_DEV_VAULT_PORT" not in ports:
            raise UserError(f"{base_dir}: no running stack was started there (no dev.env with its ports)")
        self.dev = DevStack(
            state,
            temporal_port=ports["LOCKGATE_DEV_TEMPORAL_PORT"],
            ui_port=ports.get("LOCKGATE_DEV_UI_PORT", free_port()),
            vault_port=ports["LOCKGATE_DEV_VAULT_PORT"],
            ui=False,
            agent_modules=agent_modules,
        )
        self._own_dir = False
        self._attached = True
        self._ledger_url = ledger_url
        return self

    # -- lifecycle -------------------------------------------------------------------------------
    def up(self) -> LocalStack:
        if self._attached:
            return self  # started, and stopped, by the LocalStack that owns it
        for attempt in range(3):
            try:
                self.dev.up()
                return self
            except UserError:
                # A port chosen free was taken before the server bound it: new ports, again.
                if attempt == 2:
                    raise
                self.dev.down()
                self.dev.temporal_port, self.dev.vault_port = free_port(), free_port()
        return self

    def down(self) -> None:
        try:
            if self._deps is not None:
                self._deps.ledger.dispose()
            if not self._attached:
                self.dev.down()
        finally:
            if self._own_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    # -- what tests use --------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment a CLI or worker process of this stack runs with."""
        values = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKGATE_", "VAULT_", "TEMPORAL_"))}
        values.update(self.dev.env())
        values.update(
            {
                "LOCKGATE_STATE_DIR": str(self.dev.state_dir),
                "LOCKGATE_POLICY_DIR": str(self.policy_dir),
                "LOCKGATE_LEDGER_URL": self._ledger_url or f"sqlite:///{self.dev.state_dir / 'ledger.db'}",
                "LOCKGATE_TASK_QUEUE": self.task_queue,
                "LOCKGATE_AGENT_MODULES": self.agent_modules,
            }
        )
        return values

    def settings(self) -> Settings:
        return load_settings(self.env())

    @property
    def deps(self) -> Deps:
        """Worker dependencies (Vault login, policies, ledger), built once."""
        if self._deps is None:
            from lockgate.worker import build_deps

            self._deps = build_deps(self.settings())
        return self._deps

    async def client(self) -> Client:
        from lockgate.worker import connect

        return await connect(self.settings(), self.deps.vault)

    def worker(self, client: Client, **kwargs: Any) -> Worker:
        """A worker with `LockgatePlugin` on this stack's task queue (use as `async with`)."""
        from lockgate.worker import build_worker

        return build_worker(client, self.deps, task_queue=self.task_queue, **kwargs)

    def person(self, name: str) -> OperatorSession:
        """A dev person of this stack, logged in (alice, bob, carol, dave, erin, mallory, ...)."""
        from lockgate.identity import login_userpass

        if name not in self._people:
            self._people[name] = login_userpass(self.dev.vault_addr, name, self.env()["LOCKGATE_DEV_PASSWORD"])
        return self._people[name]

    async def start(
        self, client: Client, agent: str, data: dict[str, Any], *, initiator: str = "erin", run_id: str | None = None
    ) -> WorkflowHandle[Any, Any]:
        """Starts a run as `initiator` (their signed start statement makes them its initiator)."""
        from lockgate.ops import start_run

        return await start_run(client, self.task_queue, agent, data, session=self.person(initiator), run_id=run_id)
