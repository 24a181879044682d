"""A statement's bound fields and allowed age, as the people tests sign and verify them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

__all__ = ["FIELDS", "MAX_AGE"]

MAX_AGE = timedelta(minutes=10)
FIELDS: dict[str, Any] = {
    "run_id": "refund-agent-1",
    "temporal_run_id": "0193-abc",
    "request_id": "req-1",
    "tool": "refunds.issue",
    "args_digest": "ab" * 32,
    "reason": "customer called",
}
