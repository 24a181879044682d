"""Drop-in apps' workflows import network libraries lazily inside Temporal's sandbox (an OpenAI
Agents workflow imports httpx at the first replay of its type in a process). Re-imported in the
sandbox, that stack touches what the sandbox restricts at import time (truststore calls
platform.system(), sniffio subclasses threading.local) and the replay fails as non-deterministic.
lockgate's runner passes the whole stack through; this workflow imports each of its modules afresh
inside the sandbox, which fails without the passthrough."""

from __future__ import annotations

import importlib
import importlib.util
import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

from lockgate.plugin import PASSTHROUGH_MODULES, workflow_runner

NETWORK_STACK = ("httpx", "httpcore2", "sniffio", "anyio", "h11", "truststore", "certifi", "idna")


@workflow.defn(sandboxed=True)
class ImportsTheNetworkStack:
    @workflow.run
    async def run(self, names: list[str]) -> list[str]:
        loaded = []
        for name in names:
            importlib.import_module(name)
            loaded.append(name)
        return loaded


async def test_httpx_and_its_transport_stack_import_inside_the_sandbox(client: Client) -> None:
    names = [n for n in NETWORK_STACK if importlib.util.find_spec(n) is not None]
    assert "httpx" in names and "sniffio" in names and set(names) <= set(PASSTHROUGH_MODULES)
    queue = f"sandbox-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[ImportsTheNetworkStack], workflow_runner=workflow_runner()):
        loaded = await client.execute_workflow(
            ImportsTheNetworkStack.run,
            names,
            id=f"sandbox-imports-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
            execution_timeout=timedelta(seconds=60),
        )
    assert loaded == names
