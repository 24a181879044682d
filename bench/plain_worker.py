"""`python -m bench.plain_worker`: the memory figure's anchor, a plain temporalio worker process.

It runs only `bench.plain.wait` on BENCH_QUEUE, sandboxed (temporalio's default runner), with the
same sticky cache size as the governed worker it is compared with (BENCH_MAX_CACHED), against the
stack's Temporal server (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE). No lockgate code is loaded.
"""

from __future__ import annotations

import asyncio
import os

from temporalio.client import Client
from temporalio.worker import Worker

from bench.baseline import PlainWaitWorkflow


async def main() -> None:
    client = await Client.connect(
        os.environ["TEMPORAL_ADDRESS"], namespace=os.environ.get("TEMPORAL_NAMESPACE", "default")
    )
    worker = Worker(
        client,
        task_queue=os.environ["BENCH_QUEUE"],
        workflows=[PlainWaitWorkflow],
        max_cached_workflows=int(os.environ["BENCH_MAX_CACHED"]),
    )
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
