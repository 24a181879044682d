"""Run ids: one strict syntax, checked at every entry point (CLI, client start, workflow, activities).

A run id names one run forever: the ledger, Vault's per-run record and the audit are keyed by it, so
an id must never alias another (no path separators, no dots outside the sub-agent suffix, no
whitespace or control characters). Sub-agents are `<parent id>.<step>`.
"""

from __future__ import annotations

import re

from lockgate.errors import LockgateError

__all__ = ["RUN_ID_PATTERN", "InvalidRunId", "check_run_id", "is_run_id"]

RUN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}(?:\.[1-9][0-9]{0,5}){0,4}"
_RUN_ID = re.compile(rf"\A{RUN_ID_PATTERN}\Z")


class InvalidRunId(LockgateError, ValueError):
    """A run id outside the syntax (never retried: it can never succeed)."""


def is_run_id(value: object) -> bool:
    return isinstance(value, str) and _RUN_ID.match(value) is not None


def check_run_id(value: object) -> str:
    """Returns `value` if it is a valid run id; raises InvalidRunId naming the rule otherwise."""
    if not is_run_id(value):
        shown = repr(value)[:60]
        raise InvalidRunId(
            f"invalid run id {shown}: letters, digits, '-' and '_' (at most 80, starting with a letter or "
            "digit), optionally followed by '.<step>' sub-agent suffixes"
        )
    return value  # type: ignore[return-value]  # checked just above
