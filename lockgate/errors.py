"""One error vocabulary (STYLE.md 6).

Denials are final: as Temporal failures they are non-retryable `ApplicationError`s whose `type` is one
of the constants below. Infrastructure errors (Vault down, database unreachable) stay retryable.
"""

from __future__ import annotations

__all__ = [
    "APPROVAL_EXPIRED",
    "APPROVAL_REJECTED",
    "BAD_INPUT",
    "LEASE_FORBIDDEN",
    "TOOL_DENIED",
    "TOOL_FAILED",
    "LockgateError",
    "PolicyError",
    "UserError",
]

# Stable ApplicationError types; the audit, the CLI and the tests match on these strings.
TOOL_DENIED = "ToolDenied"
TOOL_FAILED = "ToolFailed"
LEASE_FORBIDDEN = "LeaseForbidden"
BAD_INPUT = "BadInput"
APPROVAL_REJECTED = "ApprovalRejected"
APPROVAL_EXPIRED = "ApprovalExpired"


class LockgateError(Exception):
    """Root of lockgate's own errors."""


class UserError(LockgateError):
    """Bad input or a refused operation: the CLI prints it on one line and exits 2."""


class PolicyError(LockgateError):
    """A policy bundle that cannot be used; `problems` are `file:line: message` strings."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
