"""Figure 7: what payload encryption (Vault Transit codec) costs a governed tool call.

Two workers in this process, same deps (Vault broker, ledger, policies), same server, each with its
own client: one whose converter encrypts every payload (LOCKGATE_PAYLOAD_KEY set), one in clear.
Runs alternate between the two sides (and swap order every repetition) so that drift on a shared
machine hits both alike. Per repetition, the per-step cost of each side is (T(n2) - T(n1)) /
(n2 - n1), which cancels what every run pays once; the figure is the ratio of the two sides'
medians, the spread the interquartile range of the per-repetition ratios (a difference of two
noisy run times is noisy on a shared machine: the median keeps one bad repetition out).
"""

from __future__ import annotations

import statistics
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any

from temporalio.client import Client

import bench.agents as bench_agents
from bench.harness import RUN_TIMEOUT, Bench, result_of, say
from lockgate import worker
from lockgate.activities.codec import TransitCodec
from lockgate.bootstrap import PAYLOAD_KEY

__all__ = ["codec_overhead"]


async def _run(b: Bench, client: Client, queue: str, tool: str, n: int) -> float:
    run_id = f"bench-codec-{uuid.uuid4().hex[:12]}"
    inp = b.run_input(tool, n, run_id)  # the initiator's signed start, made before the clock starts
    t0 = time.perf_counter()
    handle = await client.start_workflow("lockgate.agent", inp, id=run_id, task_queue=queue)
    await result_of(handle, RUN_TIMEOUT + n)
    return time.perf_counter() - t0


async def codec_overhead(b: Bench, n1: int, n2: int, reps: int, tool: str = bench_agents.NOOP) -> dict[str, Any]:
    """Governed call (the no-secret tool: the codec's share is largest there), encrypted vs clear."""
    sides: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        for side, key in (("encrypted", PAYLOAD_KEY), ("clear", None)):
            client = await worker.connect(b.settings.model_copy(update={"payload_key": key}), b.deps.vault)
            codec = client.data_converter.payload_codec
            assert isinstance(codec, TransitCodec) and codec.key == key  # clear: decodes old runs only
            queue = f"{b.queue}-codec-{side}"
            await stack.enter_async_context(worker.build_worker(client, b.deps, task_queue=queue))
            sides[side] = (client, queue)
        for client, queue in sides.values():  # warm-up: sandbox, pools, the first data key
            await _run(b, client, queue, tool, 2)
            await _run(b, client, queue, tool, 2)
        samples: dict[str, dict[int, list[float]]] = {s: {n1: [], n2: []} for s in sides}
        for rep in range(reps):
            order = list(sides) if rep % 2 == 0 else list(reversed(sides))
            for n in (n1, n2):
                for side in order:
                    client, queue = sides[side]
                    samples[side][n].append(await _run(b, client, queue, tool, n))
    step_ms = {
        s: [(t2 - t1) / (n2 - n1) * 1000 for t1, t2 in zip(samples[s][n1], samples[s][n2], strict=True)] for s in sides
    }
    ratios = [e / c for e, c in zip(step_ms["encrypted"], step_ms["clear"], strict=True)]
    run_ratios = [e / c for e, c in zip(samples["encrypted"][n2], samples["clear"][n2], strict=True)]
    medians = {s: statistics.median(v) for s, v in step_ms.items()}
    runs = {s: statistics.median(samples[s][n2]) for s in sides}
    out = {
        "tool": tool,
        "n1": n1,
        "n2": n2,
        "reps": reps,
        "samples_s": samples,
        "step_ms": medians,
        "step_ratio": medians["encrypted"] / medians["clear"],
        "step_ratio_iqr": _iqr(ratios),
        "run_ratio": runs["encrypted"] / runs["clear"],
        "run_ratio_iqr": _iqr(run_ratios),
    }
    say(
        f"codec: encrypted {medians['encrypted']:.1f} ms/step, clear {medians['clear']:.1f} ms/step, ratio "
        f"{out['step_ratio']:.2f}x (IQR {out['step_ratio_iqr'][0]:.2f}-{out['step_ratio_iqr'][1]:.2f}); "
        f"run of {n2}: {out['run_ratio']:.2f}x (IQR {out['run_ratio_iqr'][0]:.2f}-{out['run_ratio_iqr'][1]:.2f})"
    )
    return out


def _iqr(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0])
    q = statistics.quantiles(values, n=4, method="inclusive")
    return (q[0], q[2])
