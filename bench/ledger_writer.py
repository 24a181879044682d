"""A writer process of the append figure: imports only the two ledgers (spawned 16 times)."""

from __future__ import annotations

import time
import uuid
from typing import Any

__all__ = ["writer"]

_LEDGERS: dict[str, Any] = {}


def _open(design: str, url: str) -> Any:
    if url not in _LEDGERS:
        if design == "chains":
            from lockgate.activities.ledger import Ledger

            _LEDGERS[url] = Ledger(url, checkpoint_interval=None)
        else:
            from bench.ledger_single_lock import SingleLockLedger

            _LEDGERS[url] = SingleLockLedger(url)
    return _LEDGERS[url]


def writer(design: str, url: str, run_id: str, start_at: float, seconds: float) -> int:
    """Appends to its own run from `start_at` for `seconds`; returns how many appends it made."""
    ledger = _open(design, url)
    ledger.append(f"warm:{run_id}:{uuid.uuid4().hex}", f"warm-{run_id}", "warm", {})  # connection up
    while time.time() < start_at:
        time.sleep(0.001)
    n = 0
    data = {"step": 0, "tool": "bench.noop", "outcome": "allow", "policy_ids": ["bench.allow"], "reasons": []}
    end = start_at + seconds
    while time.time() < end:
        data["step"] = n
        ledger.append(f"{run_id}:{n}", run_id, "decision", data)
        n += 1
    return n
