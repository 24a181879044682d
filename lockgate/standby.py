"""A worker that loses Vault or the ledger stops polling until they are back.

Without this, a host cut off from OpenBao or PostgreSQL keeps taking tasks it cannot do: each tool
attempt it takes waits out the heartbeat timeout, and an idle broken worker polls fastest, so it
attracts the retries too until a step's attempts run out (tests/test_chaos_hosts.py showed it). The
worker checks its dependencies every second; after `after` failures in a row it shuts its Temporal
worker down (polling stops at once, running activities get the drain period) and stands by; once
the checks pass again it polls with a new one. Other hosts' workers take the work meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Check", "serve"]

log = logging.getLogger("lockgate.standby")


@dataclass(frozen=True)
class Check:
    """A dependency the worker cannot work without: `probe` raises (or hangs past `timeout`) when
    it is unreachable."""

    name: str
    probe: Callable[[], Any]
    timeout: float = 3.0


async def _failing(checks: Sequence[Check]) -> str | None:
    """The first failing check and why, else None (probes run in threads: they block)."""
    for check in checks:
        try:
            await asyncio.wait_for(asyncio.to_thread(check.probe), check.timeout)
        except Exception as err:  # noqa: BLE001 - any failure means unreachable
            return f"{check.name}: {type(err).__name__}: {err}"
    return None


async def _until(
    stop: asyncio.Event, checks: Sequence[Check], healthy: bool, times: int, interval: float
) -> str | None:
    """Waits until the checks are `healthy` (or not) `times` probes in a row, or stop is set.
    Returns the last failure seen (None when healthy)."""
    streak, last = 0, None
    while not stop.is_set():
        last = await _failing(checks)
        streak = streak + 1 if (last is None) == healthy else 0
        if not healthy and last is not None:
            log.warning("dependency check failed (%d of %d): %s", streak, times, last)
        if streak >= times:
            return last
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
    return last


async def serve(
    make_worker: Callable[[], Any],
    checks: Sequence[Check],
    stop: asyncio.Event,
    *,
    interval: float = 1.0,
    after: int = 3,
    on_standby: Callable[[], None] = lambda: None,
) -> None:
    """Runs workers from `make_worker` (a temporalio Worker each) until `stop` is set, none while a
    check has failed `after` times in a row (`on_standby` is told when one has stopped for that)."""
    while not stop.is_set():
        async with make_worker():
            problem = await _until(stop, checks, healthy=False, times=after, interval=interval)
        if stop.is_set():
            return
        on_standby()
        log.warning("standing by: %s; polling stopped until it is back", problem)
        await _until(stop, checks, healthy=True, times=2, interval=interval)
        if not stop.is_set():
            log.info("dependencies back: polling again")
