"""Figure 3: gate decision latency in-process (gates.engine.evaluate; no Temporal, no I/O).

Bundles of 10, 100 and 1,000 policies: for the action under test, its permit and a guard that reads
the call's args (as real policies do, e.g. refunds' amount limits); the repo's one open-scope policy
(`egress.after-regulated-read`, which applies to every action and so is in every slice); and
generated policies scoped to as many other actions, each with an `@id` and a condition.

Three ways through the same gate, each at every size:
- sliced: the gate as it is; the bundle sliced by action uid, Cedar given only the slice's
  (pre-parsed) policies and the context they read. Every timed call has its own args (`i`), which
  the guard reads, so each one misses the answer cache: the cost of a decision, not of a lookup;
- unsliced: the same, but every decision evaluates one pre-parsed set of all the policies;
- cached: the repeated request, answered from the slice's cache.
and cedarpy alone, sliced and unsliced, with the whole context. The variants take turns call by
call, so the machine's load weighs on all alike.

Measured here (2 shared cores), p50: at 10 policies sliced and unsliced are the same within noise
(95 vs 97 us: the slice is built once per action, so slicing costs a call nothing); from 100 up
slicing wins (100 vs 160 us; 140-180 vs 800-980 us at 1,000). So the gate always slices: there is
no size at which the unsliced path pays.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import cedarpy

import bench.agents as bench_agents
from bench.harness import ROOT, percentile
from lockgate.gates.bundle import EntityUid, PolicyBundle, PolicySlice
from lockgate.gates.engine import cedar_context, evaluate, tool_entities
from lockgate.models import GateRequest, GateState, ToolCall
from lockgate.spec import load_agents

__all__ = ["build_bundle", "measure"]

RELEVANT = f"""@id("bench.noop")
permit (principal == Agent::"{bench_agents.AGENT_NAME}", action == Action::"{bench_agents.NOOP}", resource);

@id("bench.noop.guard")
forbid (principal, action == Action::"{bench_agents.NOOP}", resource)
when {{ context.args.i > 1000000000 }};
"""

OPEN_SCOPE = """@id("egress.after-regulated-read")
@approval("support-leads")
forbid (principal, action, resource)
when { resource.egress && context.run.tainted }
unless { context.run.approved_groups.contains("support-leads") };
"""


class UnslicedBundle(PolicyBundle):
    """The same bundle, but every decision evaluates every policy (no slicing by action)."""

    def slice_for(self, action: EntityUid | str, *, without_approval: bool = False) -> PolicySlice:
        key = (("*", "*"), without_approval)
        if key not in self._slices:
            self._slices[key] = PolicySlice.of(
                [s for s in self.statements if not (without_approval and s.approval_group)]
            )
        return self._slices[key]


def _generated(i: int) -> tuple[str, str]:
    """Policy i and its schema action: permits and approval-forbids on other agents' actions."""
    action = f"gen.tool{i:04d}"
    if i % 3 == 0:
        text = (
            f'@id("gen.{i:04d}")\n@approval("finance")\nforbid (principal, action == Action::"{action}", resource)\n'
            f'when {{ context.args.amount > {1000 + i} }}\nunless {{ context.run.approved_groups.contains("finance") }};\n'
        )
    else:
        text = (
            f'@id("gen.{i:04d}")\npermit (principal == Agent::"gen-agent-{i % 37}", action == Action::"{action}", '
            f"resource)\nwhen {{ context.args.amount <= {100 * i} && !context.run.tainted }};\n"
        )
    schema = (
        f'action "{action}" appliesTo {{ principal: Agent, resource: Tool, '
        f"context: {{ run: Run, args: {{ amount: Long }} }} }};\n"
    )
    return text, schema


def build_bundle(total: int) -> PolicyBundle:
    """A validated bundle of exactly `total` policies (schema-checked, like a real policy dir)."""
    texts, schemas = [RELEVANT, OPEN_SCOPE], []
    for i in range(total - 3):
        text, schema = _generated(i)
        texts.append(text)
        schemas.append(schema)
    schema_text = (ROOT / "policies" / "schema.cedarschema").read_text() + bench_agents.SCHEMA + "".join(schemas)
    bundle = PolicyBundle.build(
        {"bench.cedar": "\n".join(texts)},
        schema_text=schema_text,
        entities_json=(ROOT / "policies" / "entities.json").read_text(),
    )
    assert len(bundle.statements) == total, (len(bundle.statements), total)
    # The agents a bench worker runs (bench/harness.py AGENT_MODULES): their tools as Cedar entities.
    agents = load_agents("lockgate.demo.shop,lockgate.demo.incident,bench.agents", entry_points=False)
    return bundle.with_entities(tool_entities(agents.agents()))


def _unsliced(bundle: PolicyBundle) -> UnslicedBundle:
    return UnslicedBundle(
        statements=bundle.statements,
        entities_json=bundle.entities_json,
        schema_text=bundle.schema_text,
        hash=bundle.hash,
        sources=bundle.sources,
        extra_entities=bundle.extra_entities,
    )


def _interleaved(fns: dict[str, Callable[[int], Any]], iterations: int, warmup: int) -> dict[str, list[float]]:
    """Per-call latencies in microseconds of each fn(k), k = warmup..warmup+iterations-1 (every
    call its own k). The variants take turns call by call, in rotating order, so that a change in
    the machine's load (2 cores, shared) weighs on all of them alike. GC stays on: a collection is
    part of real latency."""
    names = list(fns)
    for k in range(warmup):
        for name in names:
            fns[name](k)
    gc.collect()
    out: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {f"{name}_cpu": [] for name in names}
    clock, thread_clock = time.perf_counter_ns, time.thread_time_ns
    for k in range(warmup, warmup + iterations):
        turn = k % len(names)
        for name in names[turn:] + names[:turn]:
            fn = fns[name]
            c0 = thread_clock()
            t0 = clock()
            fn(k)
            t1 = clock()
            out[name].append((t1 - t0) / 1000)
            cpu[f"{name}_cpu"].append((thread_clock() - c0) / 1000)
    # The same calls in this thread's CPU time: what the gate itself costs, without the time the
    # machine's other work took the core away mid-call (wall p99 on a shared machine is mostly that).
    return {**out, **cpu}


def _stats(samples: list[float]) -> dict[str, float]:
    return {
        "p50_us": percentile(samples, 50),
        "p99_us": percentile(samples, 99),
        "mean_us": sum(samples) / len(samples),
        "n": len(samples),
    }


def measure(sizes: tuple[int, ...], iterations: int, warmup: int = 200) -> dict[int, dict[str, dict[str, float]]]:
    agent = bench_agents.AGENT
    now = datetime.now(UTC)
    # Built before timing: the request is the gate's input, not part of its cost.
    requests = [
        GateRequest(
            decision_id=f"bench/{k}/1",
            run_id="bench",
            agent=agent.name,
            initiator=bench_agents.INITIATOR,
            step=k + 1,
            call=ToolCall(tool=bench_agents.NOOP, args={"i": k}),
            state=GateState(steps_taken=k, deadline_at=now + timedelta(hours=1)),
        )
        for k in range(warmup + iterations)
    ]
    cedar_requests = [
        {
            "principal": {"type": "Agent", "id": agent.name},
            "action": {"type": "Action", "id": bench_agents.NOOP},
            "resource": {"type": "Tool", "id": bench_agents.NOOP},
            "context": cedar_context(agent, r),
        }
        for r in requests
    ]
    # Every size in ONE interleaved loop: the ratios between sizes (flat in bundle size) and to
    # cedarpy are then measured under the same load, call by call.
    fns: dict[str, Callable[[int], Any]] = {}
    for size in sizes:
        bundle = build_bundle(size)
        flat = _unsliced(bundle)
        for b in (bundle, flat):  # the same decision either way, or the comparison means nothing
            decision = evaluate(b, agent, requests[0], now=now)
            assert decision.outcome == "allow" and decision.policy_ids == ("bench.noop",), decision
        everything = flat.slice_for(("*", "*")).policies
        sliced = bundle.slice_for(bench_agents.NOOP).policies
        entities = bundle.entities
        hot = build_bundle(size)  # its own verdict cache, warmed by the repeated request
        fns.update(
            {
                f"{size}/evaluate_sliced": lambda k, b=bundle: evaluate(b, agent, requests[k], now=now),
                f"{size}/evaluate_sliced_cached": lambda k, b=hot: evaluate(b, agent, requests[0], now=now),
                f"{size}/evaluate_unsliced": lambda k, b=flat: evaluate(b, agent, requests[k], now=now),
                # The anchor: cedarpy alone over the same pre-parsed policies (the slice the gate
                # evaluates) and entities, given the request as the gate's caller has it.
                f"{size}/cedar_sliced": lambda k, p=sliced, e=entities: cedarpy.is_authorized(cedar_requests[k], p, e),
                f"{size}/cedar_unsliced": lambda k, p=everything, e=entities: cedarpy.is_authorized(
                    cedar_requests[k], p, e
                ),
            }
        )
    samples = _interleaved(fns, iterations, warmup)
    results: dict[int, dict[str, dict[str, float]]] = {}
    for name, values in samples.items():
        size, _, variant = name.partition("/")
        results.setdefault(int(size), {})[variant] = _stats(values)
    return results
