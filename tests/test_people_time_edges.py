"""Real-stack tests of `PeopleDirectory.verify`'s time checks at their exact edges (found by `make
mutation`): a statement exactly `max_age` old, or exactly the allowed clock skew ahead, is accepted."""

from __future__ import annotations

from typing import Any

import pytest

from lockgate.activities.identity import CLOCK_SKEW, LedgerKeyArchive, PeopleDirectory, Refused
from lockgate.config import Settings
from lockgate.identity import login_userpass, sign
from tests.support.people import FIELDS, MAX_AGE


@pytest.fixture(scope="module")
def directory(deps: Any) -> PeopleDirectory:
    return PeopleDirectory(deps.vault, archive=LedgerKeyArchive(deps.ledger))


def test_time_checks_hold_at_their_exact_edges(
    settings: Settings, env: dict[str, str], directory: PeopleDirectory
) -> None:
    """Control: "too old" is strictly older than `max_age`, "from the future" strictly more than
    the clock skew ahead (verified at chosen instants around one genuine statement)."""
    alice = login_userpass(settings.vault_addr, "alice", env["LOCKGATE_DEV_PASSWORD"])
    signed = sign(alice, "approve", FIELDS)
    at = signed.statement.at
    options: dict[str, Any] = {"act": "approve", "expect": FIELDS, "max_age": MAX_AGE}
    assert directory.verify(signed, now=at + MAX_AGE, **options).person == "alice"
    with pytest.raises(Refused, match="too old"):
        directory.verify(signed, now=at + MAX_AGE + MAX_AGE / 600, **options)
    assert directory.verify(signed, now=at - CLOCK_SKEW, **options).person == "alice"
    with pytest.raises(Refused, match="from the future"):
        directory.verify(signed, now=at - CLOCK_SKEW - MAX_AGE / 600, **options)
