"""Container health checks: `python -m lockgate.health worker | URL`.

- `worker`: this host's worker polls its task queue. Temporal lists the pollers of a task queue
  with their identities (`pid@hostname` by default); the check passes only when one of them is
  this container's hostname, so a worker that lost its connection, or never started, fails it
  while other replicas keep polling.
- `URL`: an HTTP GET answered 200 (the inbox's `/healthz`, the codec server's `/health`).

Exit 0 healthy, 1 not. A worker with `LOCKGATE_HEALTH_ADDRESS` also serves `/livez` and `/readyz`
itself (lockgate/probes.py): the compose file checks `URL` = its `/readyz`, Kubernetes probes them
over HTTP and keeps `worker` as its startup probe.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import urllib.request
from datetime import timedelta

from lockgate.config import Settings, load_settings

__all__ = ["check_url", "check_worker", "main"]


async def check_worker(settings: Settings, hostname: str | None = None, timeout: float = 8.0) -> str | None:
    """None when a worker on `hostname` (default: this host) polls the settings' task queue for
    workflow tasks, else why not."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client
    from temporalio.service import RPCError

    from lockgate.errors import UserError
    from lockgate.worker import connect_config

    host = hostname or socket.gethostname()
    try:
        config = connect_config(settings)
    except UserError as err:
        return str(err)
    target = config.pop("target_host")
    try:
        client = await asyncio.wait_for(Client.connect(target, **config), timeout)
        resp = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=settings.task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ),
            timeout=timedelta(seconds=timeout),
        )
    # A failed connect is a RuntimeError in temporalio; a call, an RPCError; both mean unhealthy.
    except (RPCError, RuntimeError, TimeoutError, OSError) as err:
        return f"Temporal at {target}: {type(err).__name__}: {err}"
    mine = [p.identity for p in resp.pollers if p.identity.rpartition("@")[2] == host]
    if not mine:
        seen = ", ".join(sorted(p.identity for p in resp.pollers)) or "none"
        return f"no worker on {host} polls task queue {settings.task_queue} (pollers: {seen})"
    return None


def check_url(url: str, timeout: float = 5.0) -> str | None:
    """None when GET `url` answers 200, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the URL is the operator's
            return None if resp.status == 200 else f"{url}: HTTP {resp.status}"
    except OSError as err:
        return f"{url}: {err}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m lockgate.health (worker | URL)", file=sys.stderr)
        return 2
    what = argv[0]
    if what == "worker":
        problem = asyncio.run(check_worker(load_settings()))
    elif what.startswith(("http://", "https://")):
        problem = check_url(what)
    else:
        print(f"lockgate.health: unknown check {what!r}", file=sys.stderr)
        return 2
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # os._exit, as lockgate's CLI: the Temporal client's native threads can abort the interpreter
    # during finalization, which would turn a healthy exit into SIGABRT.
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
