"""lockgate's own metrics, exported with temporalio's on one Prometheus endpoint.

With `LOCKGATE_METRICS_ADDRESS=host:port` the worker's Temporal runtime serves Prometheus metrics
there: the SDK's own (`temporal_*`: polls, task latencies, slots, sticky cache) and lockgate's,
recorded through the activity's metric meter so both share one endpoint and one registry:

- `lockgate_decisions` (counter; `outcome`, `gate`, `phase`): every gate decision.
- `lockgate_gate_latency` (histogram, ms; `outcome`): evaluating one gate request, ledger checks included.
- `lockgate_leases_issued` / `lockgate_leases_revoked` (counters; `tool`): just-in-time credentials.
- `lockgate_calls_refused` (counter; `activity`, `why`): calls refused before anything ran (a caller
  that is not a governed run, an invocation for another run or tool).

Outside an activity (the reaper, tests calling code directly) recording is a no-op.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from temporalio import activity

__all__ = ["count", "decided"]

# Instruments with their attributes bound, by (root meter, namespace, task queue, activity type,
# kind, name, attributes): created once and reused (creating a meter, an instrument and an
# attribute set crosses into the SDK's native runtime each time; a call records several). The root
# meter is kept in the value so that its id cannot be reused by another while the entry lives.
_INSTRUMENTS: dict[tuple[Any, ...], tuple[Any, Any]] = {}
_LOCK = threading.Lock()
_LIMIT = 4096


def _instrument(kind: str, name: str, description: str, unit: str, attributes: dict[str, str]) -> Any | None:
    """The bound instrument (counter or timedelta histogram) for the current activity, or None
    outside an activity (or where it has no metric meter)."""
    try:
        if not activity.in_activity():
            return None
        root = activity._Context.current().runtime_metric_meter
        info = activity.info()
    except (RuntimeError, AttributeError):
        return None
    if root is None:
        return None
    key = (id(root), info.namespace, info.task_queue, info.activity_type, kind, name, *sorted(attributes.items()))
    hit = _INSTRUMENTS.get(key)
    if hit is not None:
        return hit[1]
    # As activity.metric_meter() builds it: the runtime's meter with the activity's attributes.
    meter = root.with_additional_attributes(
        {"namespace": info.namespace, "task_queue": info.task_queue, "activity_type": info.activity_type}
    )
    if kind == "counter":
        made = meter.create_counter(name, description)
    else:
        made = meter.create_histogram_timedelta(name, description, unit)
    bound = made.with_additional_attributes(attributes)
    with _LOCK:
        if len(_INSTRUMENTS) >= _LIMIT:
            _INSTRUMENTS.clear()  # a bound, not a cache policy
        _INSTRUMENTS[key] = (root, bound)
    return bound


def count(name: str, description: str, **attributes: str) -> None:
    """Adds one to counter `name` (with these attribute values)."""
    counter = _instrument("counter", name, description, "", attributes)
    if counter is not None:
        counter.add(1)


def decided(outcome: str, gate: str, phase: str, elapsed: timedelta) -> None:
    """One gate decision: counted by outcome, gate and phase; its latency observed."""
    counter = _instrument(
        "counter", "lockgate_decisions", "gate decisions", "", {"outcome": outcome, "gate": gate, "phase": phase}
    )
    if counter is None:
        return
    counter.add(1)
    histogram = _instrument(
        "histogram", "lockgate_gate_latency", "time to evaluate one gate request", "ms", {"outcome": outcome}
    )
    if histogram is not None:
        histogram.record(elapsed)
