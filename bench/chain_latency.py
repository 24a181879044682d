"""Gate latency with a run's chain in the context (`python -m bench.chain_latency`).

The shipped bundle and demo agents; `refunds.issue` on A-1001 with its own amount each call, in
every variant (the finance guard reads it, so every call misses the answer cache: the cost of a
decision). Three
variants take turns call by call: no chain (the first step of a run), a 100-step chain (lookups and
refunds over 50 distinct orders: the chain at its resource cap, so as large as it gets), and the same
100-step chain through a bundle without the chain policy (what the chain costs when no policy reads it),
and the 100-step chain on an order seen for the first time (the one-off cost of a new resource entity).
"""

from __future__ import annotations

import gc
import time
from datetime import UTC, datetime
from pathlib import Path

from lockgate.gates.engine import evaluate
from lockgate.models import Chain, GateRequest, GateState, ToolCall
from lockgate.policies import load_bundle
from lockgate.spec import load_agents

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def _chain(steps: int) -> Chain:
    chain = Chain()
    for i in range(steps):
        tool = "orders.lookup" if i % 2 else "refunds.issue"
        chain = chain.after(tool, ("Order", f"B-{i % 50:04d}"), "internal", False)
    return chain


def main(rounds: int = 2400) -> None:
    agents = load_agents("lockgate.demo.shop,lockgate.demo.incident", entry_points=False)
    agent = agents.get("refund-agent")
    bundle = load_bundle(ROOT / "policies", agents)
    sources = {
        f: t.replace("when { context.chain.on_resource", "when { false && context.chain.on_resource")
        for f, t in bundle.sources.items()
    }
    from lockgate.gates.bundle import PolicyBundle
    from lockgate.gates.engine import tool_entities

    blind = PolicyBundle.build(sources, entities_json=bundle.entities_json).with_entities(
        tool_entities(agents.agents())
    )
    long = _chain(100)
    variants = {
        "chain 0 steps": (bundle, Chain()),
        "chain 100 steps": (bundle, long),
        "100, unread": (blind, long),
        "100, new order": (bundle, long),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    gc.disable()
    for i in range(rounds):
        for k, (name, (b, chain)) in enumerate(variants.items()):
            # "new order": a resource the bundle has not seen yet (its entity store is extended once).
            order = f"N-{i:04d}" if name == "100, new order" else "A-1001"
            request = GateRequest(
                decision_id=f"d-{i}",
                run_id="r-1",
                agent="refund-agent",
                initiator="erin",
                step=101,
                call=ToolCall(
                    tool="refunds.issue", args={"order_id": order, "amount_cents": 1 + i * len(variants) + k}
                ),
                state=GateState(chain=chain),
            )
            start = time.perf_counter()
            d = evaluate(b, agent, request, now=NOW)
            times[name].append(time.perf_counter() - start)
            assert d.outcome == "allow", d
    gc.enable()
    for name, ts in times.items():
        ts.sort()
        p50, p99 = ts[len(ts) // 2] * 1e6, ts[int(len(ts) * 0.99)] * 1e6
        print(f"{name:>16}: p50 {p50:6.0f} us  p99 {p99:6.0f} us  ({len(ts)} calls)")


if __name__ == "__main__":
    main()
