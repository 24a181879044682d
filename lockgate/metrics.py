"""lockgate's own metrics, exported with temporalio's on one Prometheus endpoint.

With `LOCKGATE_METRICS_ADDRESS=host:port` the worker's Temporal runtime serves Prometheus metrics
there: the SDK's own (`temporal_*`: polls, task latencies, slots, sticky cache) and lockgate's,
recorded through the activity's metric meter so both share one endpoint and one registry:

- `lockgate_decisions` (counter; `outcome`, `gate`, `phase`): every gate decision.
- `lockgate_gate_latency` (histogram, ms; `outcome`): evaluating one gate request, ledger checks included.
- `lockgate_leases_issued` / `lockgate_leases_revoked` (counters; `tool`): just-in-time credentials.
- `lockgate_calls_refused` (counter; `activity`, `why`): calls refused before anything ran (a caller
  that is not a governed run, an invocation for another run or tool).
- `lockgate_approval_wait` (histogram, ms; `outcome`: approved, rejected, expired): how long an
  approval request waited for its verdict (recorded by the run's workflow, never during replay).

Cluster state, read where it is authoritative every `LOCKGATE_METRICS_INTERVAL` seconds by each
worker with a metrics endpoint (`StateGauges`; every worker reports the same value: take `max`):

- `lockgate_pending_approvals` (gauge): runs waiting for an approval (a Temporal visibility count).
- `lockgate_compensations_outstanding` (gauge): runs compensating right now (a visibility count).
- `lockgate_leases_outstanding` (gauge; `secret`): live leases under the agents' secret paths, as
  Vault counts them (issued and not yet revoked or expired, whichever worker issued them).
- `lockgate_state_scrape_errors` (counter; `source`): a source that did not answer.

The cluster's background passes (activities/background.py) set gauges:
`lockgate_reaper_backlog` (runs the reaper found needing work and left), `lockgate_open_runs`,
`lockgate_checkpoint_pending_chains` and `lockgate_checkpoint_lag_seconds`.

Outside an activity (the reaper, tests calling code directly) recording is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta
from typing import Any

from temporalio import activity

__all__ = ["COMPENSATING_QUERY", "PENDING_QUERY", "StateGauges", "approval_waited", "count", "decided", "gauge"]

log = logging.getLogger("lockgate.metrics")

PENDING_QUERY = 'LockgateState = "awaiting_approval" AND ExecutionStatus = "Running"'
COMPENSATING_QUERY = 'LockgateState = "compensating" AND ExecutionStatus = "Running"'


# Instruments with their attributes bound, by (root meter, namespace, task queue, activity type,
# kind, name, attributes): created once and reused (creating a meter, an instrument and an
# attribute set crosses into the SDK's native runtime each time; a call records several). The root
# meter is kept in the value so that its id cannot be reused by another while the entry lives.
_INSTRUMENTS: dict[tuple[Any, ...], tuple[Any, Any]] = {}
_LOCK = threading.Lock()
_LIMIT = 4096


def _instrument(kind: str, name: str, description: str, unit: str, attributes: dict[str, str]) -> Any | None:
    """The bound instrument (counter, float gauge or timedelta histogram) for the current activity, or None
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
    elif kind == "gauge":
        made = meter.create_gauge_float(name, description)
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


def approval_waited(outcome: str, waited: timedelta) -> None:
    """An approval request got its verdict (or expired) after `waited`: from workflow code (the
    workflow's meter records nothing while a history is replayed)."""
    from temporalio import workflow

    try:
        meter = workflow.metric_meter()
    except Exception:  # noqa: BLE001 - not in a workflow (a test calling code directly)
        return
    meter.create_histogram_timedelta(
        "lockgate_approval_wait", "time an approval request waited for its verdict", "ms"
    ).with_additional_attributes({"outcome": outcome}).record(max(waited, timedelta(0)))


class StateGauges:
    """Sets the cluster-state gauges on `meter` (a temporalio `MetricMeter`: the worker's
    `Runtime.metric_meter`): two visibility counts and one Vault LIST per secret path per pass,
    whatever the number of runs.

    Args:
        meter: where the gauges live (the worker's Prometheus endpoint).
        client: a Temporal client (visibility counts).
        vault: the worker's `VaultBroker` (live leases).
        secrets: the agents' secret paths.
    """

    def __init__(self, meter: Any, client: Any, vault: Any, secrets: list[str]) -> None:
        self.client = client
        self.vault = vault
        self.secrets = sorted(set(secrets))
        self._pending = meter.create_gauge("lockgate_pending_approvals", "runs waiting for an approval")
        self._compensating = meter.create_gauge("lockgate_compensations_outstanding", "runs compensating now")
        self._leases = meter.create_gauge("lockgate_leases_outstanding", "live leases under the agents' secrets")
        self._errors = meter.create_counter("lockgate_state_scrape_errors", "state gauge sources that failed")

    async def collect_once(self) -> dict[str, int]:
        """One pass; returns what it set (a source that fails keeps its last value)."""
        out: dict[str, int] = {}
        try:
            out["pending"] = (await self.client.count_workflows(PENDING_QUERY)).count
            self._pending.set(out["pending"])
            out["compensating"] = (await self.client.count_workflows(COMPENSATING_QUERY)).count
            self._compensating.set(out["compensating"])
        except Exception as err:  # noqa: BLE001 - Temporal away: try again next pass
            log.warning("metrics: visibility count failed: %s", err)
            self._errors.with_additional_attributes({"source": "temporal"}).add(1)
        for path in self.secrets:
            try:
                live = len(await asyncio.to_thread(self.vault.live_leases, path))
            except Exception as err:  # noqa: BLE001 - Vault away: try again next pass
                log.warning("metrics: live leases of %s failed: %s", path, err)
                self._errors.with_additional_attributes({"source": "vault"}).add(1)
                continue
            out[f"leases:{path}"] = live
            self._leases.with_additional_attributes({"secret": path}).set(live)
        return out

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Passes every `interval` seconds until `stop`."""
        while not stop.is_set():
            await self.collect_once()
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass


def gauge(name: str, description: str, value: float, **attributes: str) -> None:
    """Sets gauge `name` (with these attribute values) to `value`."""
    instrument = _instrument("gauge", name, description, "", attributes)
    if instrument is not None:
        instrument.set(float(value))
