"""lockgate's own metrics, exported with temporalio's on one Prometheus endpoint.

With `LOCKGATE_METRICS_ADDRESS=host:port` the worker's Temporal runtime serves Prometheus metrics
there: the SDK's own (`temporal_*`: polls, task latencies, slots, sticky cache) and lockgate's,
recorded through the activity's metric meter so both share one endpoint and one registry:

- `lockgate_decisions` (counter; `outcome`, `gate`, `phase`): every gate decision.
- `lockgate_gate_latency` (histogram, ms; `outcome`): evaluating one gate request, ledger checks included.
- `lockgate_leases_issued` / `lockgate_leases_revoked` (counters; `tool`): just-in-time credentials.
- `lockgate_calls_refused` (counter; `activity`, `why`): calls refused before anything ran (a caller
  that is not a governed run, an invocation for another run or tool).

The cluster's background passes (activities/background.py) set gauges:
`lockgate_reaper_backlog` (runs the reaper found needing work and left), `lockgate_open_runs`,
`lockgate_checkpoint_pending_chains` and `lockgate_checkpoint_lag_seconds`.

Outside an activity (the reaper, tests calling code directly) recording is a no-op.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity

__all__ = ["count", "decided", "gauge"]


def _meter() -> object | None:
    try:
        return activity.metric_meter() if activity.in_activity() else None
    except RuntimeError:
        return None


def count(name: str, description: str, **attributes: str) -> None:
    """Adds one to counter `name` (with these attribute values)."""
    meter = _meter()
    if meter is None:
        return
    counter = meter.create_counter(name, description)  # type: ignore[attr-defined]
    counter.with_additional_attributes(attributes).add(1)


def decided(outcome: str, gate: str, phase: str, elapsed: timedelta) -> None:
    """One gate decision: counted by outcome, gate and phase; its latency observed."""
    meter = _meter()
    if meter is None:
        return
    attrs = {"outcome": outcome, "gate": gate, "phase": phase}
    meter.create_counter("lockgate_decisions", "gate decisions").with_additional_attributes(attrs).add(1)  # type: ignore[attr-defined]
    meter.create_histogram_timedelta(  # type: ignore[attr-defined]
        "lockgate_gate_latency", "time to evaluate one gate request", "ms"
    ).with_additional_attributes({"outcome": outcome}).record(elapsed)


def gauge(name: str, description: str, value: float, **attributes: str) -> None:
    """Sets gauge `name` (with these attribute values) to `value`."""
    meter = _meter()
    if meter is None:
        return
    meter.create_gauge_float(name, description).with_additional_attributes(attributes).set(float(value))  # type: ignore[attr-defined]
