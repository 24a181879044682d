"""Where a governed call's time goes, phase by phase, beside the plain activity it replaces.

Governed runs on the bench's in-process worker, with lockgate's own OpenTelemetry spans collected in
memory (`lockgate.gate`: the pure decision; `lockgate.lease`: Vault issuing the dynamic secret;
`lockgate.tool`: the tool's body; `lockgate.revoke`: Vault revoking it) and the ledger's calls timed
(appends, and the reads of the gate's state check). What remains of a call's wall time is Temporal:
scheduling the activity, the workflow task, the history events, and the worker's own Python around
the phases. The anchor is a plain Temporal activity doing the same work (bench.baseline).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import bench.agents as bench_agents
from bench import baseline
from bench.harness import Bench, median, say

__all__ = ["phases"]

_SPANS: dict[str, list[float]] | None = None
_INSTALLED = False


def _install() -> bool:
    """An in-memory span processor on the global tracer provider (set once per process)."""
    global _INSTALLED
    if _INSTALLED:
        return True
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    except ImportError:
        return False

    class Collect(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            if _SPANS is not None and span.start_time is not None and span.end_time is not None:
                _SPANS[span.name].append((span.end_time - span.start_time) / 1e6)

    provider = TracerProvider()
    provider.add_span_processor(Collect())
    trace.set_tracer_provider(provider)
    _INSTALLED = True
    return True


@contextmanager
def _timed_ledger(ledger: Any, into: dict[str, list[float]]) -> Iterator[None]:
    """Times the ledger's outermost appends and reads (a nested call counts in its caller)."""
    depth = threading.local()
    originals: dict[str, Callable[..., Any]] = {}

    def wrap(name: str, bucket: str) -> None:
        original = getattr(ledger, name)
        originals[name] = original

        def timed(*args: Any, **kwargs: Any) -> Any:
            outer = not getattr(depth, "n", 0)
            depth.n = getattr(depth, "n", 0) + 1
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depth.n -= 1
                if outer:
                    into[bucket].append((time.perf_counter() - t) * 1000)

        setattr(ledger, name, timed)

    for name, bucket in (("append", "ledger.append"), ("run_events", "ledger.read"), ("events", "ledger.read")):
        wrap(name, bucket)
    try:
        yield
    finally:
        for name in originals:
            delattr(ledger, name)  # the class's methods again


async def phases(b: Bench, runs: int = 4, steps: int = 5) -> dict[str, Any]:
    global _SPANS
    if not _install():
        return {"error": "opentelemetry-sdk is not installed"}
    out: dict[str, Any] = {"runs": runs, "steps_per_run": steps}
    for kind, tool, activity in (("a", bench_agents.NOOP, baseline.NOOP), ("b", bench_agents.PG, baseline.PG)):
        await b.governed(tool, 2)  # warm
        collected: dict[str, list[float]] = defaultdict(list)
        _SPANS = collected
        try:
            with _timed_ledger(b.deps.ledger, collected):
                walls = [await b.governed(tool, steps) for _ in range(runs)]
        finally:
            _SPANS = None
        plain = [await b.plain(activity, steps) for _ in range(runs)]
        calls = runs * steps
        per_call = {name: sum(v) / calls for name, v in collected.items()}
        res = {
            "tool": tool,
            "calls": calls,
            "ms_per_call": per_call,
            "counts_per_call": {name: len(v) / calls for name, v in collected.items()},
            "governed_run_ms": median(walls) * 1000,
            "plain_run_ms": median(plain) * 1000,
        }
        say(
            f"phases ({kind}) {tool}: "
            + ", ".join(f"{k} {v:.2f} ms x{res['counts_per_call'][k]:.1f}" for k, v in sorted(per_call.items()))
            + f"; run of {steps}: governed {res['governed_run_ms']:.0f} ms, plain {res['plain_run_ms']:.0f} ms"
        )
        out[kind] = res
    return out
