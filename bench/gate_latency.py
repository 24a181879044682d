"""Figure 3: gate decision latency in-process (gates.engine.evaluate; no Temporal, no I/O).

Bundles of 10, 100 and 1,000 policies: the bench agent's permit, the repo's one open-scope policy
(`egress.after-regulated-read`, which applies to every action and so is in every slice) and generated
policies scoped to as many other actions, each with an `@id` and a condition on the call's args. The
production path slices by action (PolicyBundle.slice_for); for comparison the same decision is also
timed against the whole PolicySet (what it would cost without slicing), and cedarpy alone both ways.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import cedarpy

import bench.agents as bench_agents
from bench.harness import ROOT, percentile
from gates.bundle import PolicyBundle
from gates.engine import cedar_context, evaluate, tool_entities
from lockgate.models import GateRequest, GateState, ToolCall
from lockgate.spec import registry

__all__ = ["build_bundle", "measure"]

OPEN_SCOPE = """@id("egress.after-regulated-read")
@approval("support-leads")
forbid (principal, action, resource)
when { resource.egress && context.run.tainted }
unless { context.run.approved_groups.contains("support-leads") };
"""


class UnslicedBundle(PolicyBundle):
    """The same bundle, but every decision evaluates every policy (no slicing by action)."""

    def slice_for(self, action: str, *, without_approval: bool = False) -> Any:
        key = ("*", without_approval)
        if key not in self._slices:
            texts = [s.text for s in self.statements if not (without_approval and s.approval_group)]
            self._slices[key] = cedarpy.PolicySet.from_str("\n".join(texts))
        return self._slices[key]


def _generated(i: int) -> tuple[str, str]:
    """Policy i and its schema action: permits and approval-forbids on other agents' actions."""
    action = f"gen.tool{i:04d}"
    if i % 3 == 0:
        text = (f'@id("gen.{i:04d}")\n@approval("finance")\nforbid (principal, action == Action::"{action}", resource)\n'
                f'when {{ context.args.amount > {1000 + i} }}\nunless {{ context.run.approved_groups.contains("finance") }};\n')
    else:
        text = (f'@id("gen.{i:04d}")\npermit (principal == Agent::"gen-agent-{i % 37}", action == Action::"{action}", '
                f'resource)\nwhen {{ context.args.amount <= {100 * i} && !context.run.tainted }};\n')
    schema = (f'action "{action}" appliesTo {{ principal: Agent, resource: Tool, '
              f'context: {{ run: Run, args: {{ amount: Long }} }} }};\n')
    return text, schema


def build_bundle(total: int) -> PolicyBundle:
    """A validated bundle of exactly `total` policies (schema-checked, like a real policy dir)."""
    # The relevant permit, exactly as the stack's policy dir has it (bench/agents.py).
    relevant = next(c for c in bench_agents.POLICY.split("\n\n") if '@id("bench.noop")' in c)
    texts, schemas = [relevant.strip() + "\n", OPEN_SCOPE], []
    for i in range(total - len(texts)):
        text, schema = _generated(i)
        texts.append(text)
        schemas.append(schema)
    schema_text = (ROOT / "policies" / "schema.cedarschema").read_text() + bench_agents.SCHEMA + "".join(schemas)
    bundle = PolicyBundle.build({"bench.cedar": "\n".join(texts)}, schema_text=schema_text,
                                entities_json=(ROOT / "policies" / "entities.json").read_text())
    assert len(bundle.statements) == total, (len(bundle.statements), total)
    return bundle.with_entities(tool_entities(registry.agents()))


def _unsliced(bundle: PolicyBundle) -> UnslicedBundle:
    return UnslicedBundle(statements=bundle.statements, entities_json=bundle.entities_json,
                          schema_text=bundle.schema_text, hash=bundle.hash, extra_entities=bundle.extra_entities,
                          **({"sources": bundle.sources} if hasattr(bundle, "sources") else {}))


def _sample(fn: Callable[[], Any], iterations: int, warmup: int) -> list[float]:
    """Per-call latencies in microseconds. GC stays on: a collection is part of real latency."""
    for _ in range(warmup):
        fn()
    gc.collect()
    out = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1000)
    return out


def _stats(samples: list[float]) -> dict[str, float]:
    return {"p50_us": percentile(samples, 50), "p99_us": percentile(samples, 99),
            "mean_us": sum(samples) / len(samples), "n": len(samples)}


def measure(sizes: tuple[int, ...], iterations: int, warmup: int = 200) -> dict[int, dict[str, dict[str, float]]]:
    agent = bench_agents.AGENT
    now = datetime.now(timezone.utc)
    request = GateRequest(
        decision_id="bench/1/1", run_id="bench", agent=agent.name, initiator=bench_agents.INITIATOR, step=1,
        call=ToolCall(tool=bench_agents.NOOP, args={"i": 1}),
        state=GateState(steps_taken=3, deadline_at=now + timedelta(hours=1)),
    )
    cedar_request = {
        "principal": {"type": "Agent", "id": agent.name},
        "action": {"type": "Action", "id": bench_agents.NOOP},
        "resource": {"type": "Tool", "id": bench_agents.NOOP},
        "context": cedar_context(agent, request),
    }
    results: dict[int, dict[str, dict[str, float]]] = {}
    for size in sizes:
        bundle = build_bundle(size)
        flat = _unsliced(bundle)
        for b in (bundle, flat):  # the same decision either way, or the comparison means nothing
            decision = evaluate(b, agent, request, now=now)
            assert decision.outcome == "allow" and decision.policy_ids == ("bench.noop",), decision
        everything = flat.slice_for("*")
        sliced = bundle.slice_for(bench_agents.NOOP)
        entities = bundle.entities
        results[size] = {
            "evaluate_sliced": _stats(_sample(lambda: evaluate(bundle, agent, request, now=now), iterations, warmup)),
            "evaluate_unsliced": _stats(_sample(lambda: evaluate(flat, agent, request, now=now), iterations, warmup)),
            "cedar_sliced": _stats(_sample(lambda: cedarpy.is_authorized(cedar_request, sliced, entities),
                                           iterations, warmup)),
            "cedar_unsliced": _stats(_sample(lambda: cedarpy.is_authorized(cedar_request, everything, entities),
                                             iterations, warmup)),
        }
    return results
