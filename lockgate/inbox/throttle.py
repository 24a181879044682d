"""Sign-in throttling: stop password guessing here, before OpenBao locks the person out.

OpenBao (and Vault) lock a userpass, LDAP or AppRole account after `lockout_threshold` failed logins
(5 by default) until `lockout_duration` (15 min) has passed, and forget failures after
`lockout_counter_reset` (15 min) without one. A few wrong passwords posted to the inbox would then
lock an approver out of every lockgate tool at once. So the inbox counts failures itself, per account
and per client address, and refuses further attempts (with the wait) before the account's count can
reach OpenBao's threshold: the right password still works once the wait is over.

Each attempt is counted as a failure *before* the password goes to Vault (so concurrent attempts
cannot slip past the limit) and forgiven when it succeeds. A count is forgotten after `window`
seconds without a failure, like OpenBao's counter. State lives behind `ThrottleStore` (in memory for
one inbox process; a shared store, e.g. PostgreSQL, for several).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["MemoryThrottleStore", "SignInThrottle", "ThrottleStore", "Throttled"]

# OpenBao's defaults (https://openbao.org/docs/configuration/user-lockout/): 5 failures lock the
# account; the failure count resets after 15 minutes without a failed login.
OPENBAO_LOCKOUT_THRESHOLD = 5
OPENBAO_COUNTER_RESET = 15 * 60.0


class ThrottleStore(Protocol):
    """Failure counts by key, each with the time of its last failure. Implementations make `hit`
    atomic (one process: a lock; several: one row per key, updated in one statement)."""

    def hit(self, key: str, limit: int, window: float, now: float) -> float | None:
        """Counts one attempt for `key` unless it already has `limit` failures within `window` of its
        last one: returns None when counted, else the seconds left until the count is forgotten."""
        ...

    def undo(self, key: str) -> None:
        """Takes back one counted attempt (it succeeded)."""
        ...

    def clear(self, key: str) -> None:
        """Forgets `key`'s failures (the account signed in: OpenBao resets its counter too)."""
        ...


@dataclass
class MemoryThrottleStore:
    """The throttle's state in this process."""

    _counts: dict[str, tuple[int, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, key: str, limit: int, window: float, now: float) -> float | None:
        with self._lock:
            count, last = self._counts.get(key, (0, now))
            if now - last >= window:
                count = 0
            if count >= limit:
                return last + window - now
            self._counts[key] = (count + 1, now)
            if len(self._counts) > 100_000:  # bounded: drop what is forgotten anyway
                for stale in [k for k, (_, t) in self._counts.items() if now - t >= window]:
                    del self._counts[stale]
            return None

    def undo(self, key: str) -> None:
        with self._lock:
            count, last = self._counts.get(key, (0, 0.0))
            if count <= 1:
                self._counts.pop(key, None)
            else:
                self._counts[key] = (count - 1, last)

    def clear(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)


class Throttled(Exception):
    """A sign-in attempt refused before it reached Vault.

    Attributes:
        seconds: how long to wait (whole seconds, at least 1).
        message: for people, naming the wait.
    """

    def __init__(self, seconds: float, message: str) -> None:
        super().__init__(message)
        self.seconds = max(1, math.ceil(seconds))
        self.message = message


def _wait_text(seconds: float) -> str:
    s = max(1, math.ceil(seconds))
    minutes, secs = divmod(s, 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


@dataclass
class SignInThrottle:
    """Counts failed sign-ins per account and per client address.

    Args:
        store: where counts live.
        max_per_account: failures an account may have within `window` (default 3, below OpenBao's
            default lockout threshold of 5, leaving room for a CLI login or two).
        max_per_address: failures one client address may have within `window`, whatever accounts
            it tries (password spraying).
        window: seconds without a failure after which a count is forgotten: OpenBao's lockout
            counter reset (15 minutes by default), so lockgate never lets the count that OpenBao
            keeps reach its threshold.
        clock: seconds, monotonic.
    """

    store: ThrottleStore = field(default_factory=MemoryThrottleStore)
    max_per_account: int = OPENBAO_LOCKOUT_THRESHOLD - 2
    max_per_address: int = 10
    window: float = OPENBAO_COUNTER_RESET
    clock: Callable[[], float] = time.monotonic

    @staticmethod
    def _keys(account: str, address: str | None) -> tuple[str, str]:
        # userpass lowercases usernames: Alice and alice are one account to OpenBao.
        return f"account:{account.strip().lower()}", f"address:{address or '-'}"

    def begin(self, account: str, address: str | None) -> None:
        """Counts this attempt (as a failure until `succeeded`), or refuses it.

        Raises:
            Throttled: the address or the account has had too many failed sign-ins; with the wait.
        """
        now = self.clock()
        by_account, by_address = self._keys(account, address)
        wait = self.store.hit(by_address, self.max_per_address, self.window, now)
        if wait is not None:
            raise Throttled(
                wait, f"too many failed sign-ins from your address: wait {_wait_text(wait)} before trying again"
            )
        wait = self.store.hit(by_account, self.max_per_account, self.window, now)
        if wait is not None:
            self.store.undo(by_address)
            raise Throttled(
                wait,
                f"too many failed sign-ins for {account}: wait {_wait_text(wait)} before trying again "
                "(the inbox stops here so that OpenBao does not lock the account)",
            )

    def succeeded(self, account: str, address: str | None) -> None:
        """The attempt signed in: the account's count is forgotten, the address's attempt taken back."""
        by_account, by_address = self._keys(account, address)
        self.store.clear(by_account)
        self.store.undo(by_address)
