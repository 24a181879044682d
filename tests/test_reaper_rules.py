"""The reaper's rules on a run's record, as pure functions of its ledger events: which steps still
need undoing (allowed, compensable, not undone), which recorded outstanding compensations are
proven by that record, and when a failed compensation may be tried again (15 s, doubling, at most an
hour). The real-stack behaviour is tests/test_reaper_proof.py's; these pin each rule's edges."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import tests.agents  # noqa: F401 - registers refund-agent and its tools
from lockgate.activities.reaper import backoff_due, failed_compensations, outstanding_compensations
from lockgate.spec import registry

RUN = "refund-agent-0123456789"
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _event(kind: str, **data: Any) -> dict[str, Any]:
    return {"run_id": RUN, "kind": kind, **data}


def _allowed(step: int, tool: str, outcome: str = "allow") -> dict[str, Any]:
    return _event("decision", step=step, tool=tool, outcome=outcome)


def _undone(step: int) -> dict[str, Any]:
    return _event("tool.completed", step=1000 + step, tool="refunds.reverse", compensates=f"{RUN}:{step}")


def _failure(step: int, after: float, ok: bool = False) -> dict[str, Any]:
    return _event("reaper.compensation", step=step, ok=ok, at=(T0 + timedelta(seconds=after)).isoformat())


def test_outstanding_are_allowed_compensable_steps_not_yet_undone_newest_first() -> None:
    assert registry.tool("refunds.issue").compensation == "refunds.reverse"  # type: ignore[union-attr]
    assert not registry.tool("orders.lookup").compensation  # type: ignore[union-attr]
    events = [
        _allowed(1, "orders.lookup"),  # nothing to undo
        _allowed(2, "refunds.issue"),
        _allowed(3, "refunds.issue"),
        _allowed(4, "refunds.issue", outcome="deny"),  # never ran
        _allowed(5, "refunds.issue"),
        _undone(3),
        _event("tool.completed", step=5, tool="refunds.issue"),  # a forward completion undoes nothing
    ]
    found = outstanding_compensations(events, registry)
    assert [(o["step"], o["tool"], o["compensation"], o["idempotency_key"]) for o in found] == [
        (5, "refunds.issue", "refunds.reverse", f"{RUN}:5"),
        (2, "refunds.issue", "refunds.reverse", f"{RUN}:2"),
    ]
    assert outstanding_compensations([], registry) == []


def test_a_recorded_outstanding_compensation_counts_only_on_proof_and_until_done() -> None:
    events = [
        _allowed(2, "refunds.issue"),
        _allowed(3, "refunds.issue"),
        _allowed(6, "refunds.issue"),
        _event("compensation.outstanding", step=2, tool="refunds.reverse"),
        _event("compensation.outstanding", step=6, tool="refunds.reverse"),
        _event("compensation.outstanding", step=3, tool="refunds.reverse"),
        _event("compensation.outstanding", step=7, tool="refunds.reverse"),  # a step that never ran
        _event("compensation.outstanding", step=6, tool="orders.lookup"),  # not step 6's compensation
        _undone(2),  # done since
    ]
    found = failed_compensations(events, registry)
    assert [(f["step"], f["tool"], f["compensation"], f["idempotency_key"]) for f in found] == [
        (6, "refunds.issue", "refunds.reverse", f"{RUN}:6"),
        (3, "refunds.issue", "refunds.reverse", f"{RUN}:3"),
    ]
    assert failed_compensations([], registry) == []


def test_failed_compensations_are_retried_after_15_s_doubling_up_to_an_hour() -> None:
    def due(events: list[dict[str, Any]], after: float, step: int = 2) -> bool:
        return backoff_due(events, step, (T0 + timedelta(seconds=after)).timestamp())

    assert due([], 0)
    once = [_failure(2, 0)]
    assert not due(once, 14.9) and due(once, 15)
    twice = [_failure(2, -100), _failure(2, 0)]  # measured from the last failure
    assert not due(twice, 29.9) and due(twice, 30)
    many = [_failure(2, -10_000 + i) for i in range(8)] + [_failure(2, 0)]  # 15 * 2**8 s: capped
    assert not due(many, 3599.9) and due(many, 3600)
    # Only this step's failures count, and a compensation that went through is no failure.
    assert due([_failure(3, 0), _failure(2, -20, ok=True)], 0)
    assert not due([_failure(2, 0), _failure(2, 1, ok=True)], 14.9)


def test_only_a_completed_compensation_settles_an_outstanding_one_and_settles_only_its_own_step() -> None:
    """A compensation done since drops its outstanding entry quietly, and only that one: an older
    step still owed is still returned. A recorded attempt that did not complete (a `tool.failed`
    naming what it compensates, as a workflow may record) settles nothing."""
    events = [
        _allowed(2, "refunds.issue"),
        _allowed(6, "refunds.issue"),
        _allowed(8, "refunds.issue"),
        _event("compensation.outstanding", step=2, tool="refunds.reverse"),
        _event("compensation.outstanding", step=6, tool="refunds.reverse"),
        _event("compensation.outstanding", step=8, tool="refunds.reverse"),
        _undone(8),  # the newest is done since: the older ones are still owed
        _event("tool.failed", step=1006, tool="refunds.reverse", error="timeout", compensates=f"{RUN}:6"),
    ]
    found = failed_compensations(events, registry)
    assert [(f["step"], f["idempotency_key"]) for f in found] == [(6, f"{RUN}:6"), (2, f"{RUN}:2")]


def test_a_compensation_done_since_is_no_alarm(caplog: pytest.LogCaptureFixture) -> None:
    """A done compensation is dropped as done, not reported as an outstanding entry without proof
    (that error is for forged or mistaken entries: an operator must not be told of one that is not)."""
    done = [
        _allowed(2, "refunds.issue"),
        _event("compensation.outstanding", step=2, tool="refunds.reverse"),
        _undone(2),
    ]
    with caplog.at_level(logging.ERROR, logger="lockgate.reaper"):
        assert failed_compensations(done, registry) == []
    assert not [r for r in caplog.records if "without proof" in r.getMessage()]
    # Control: an entry the record does not back is reported.
    with caplog.at_level(logging.ERROR, logger="lockgate.reaper"):
        assert (
            failed_compensations([_event("compensation.outstanding", step=9, tool="refunds.reverse")], registry) == []
        )
    assert [r for r in caplog.records if "without proof" in r.getMessage()]


def test_a_compensation_entry_without_a_step_is_no_steps_failure() -> None:
    """`reaper.compensation` entries name their step (the model's default is -1, no step): one
    without it delays no step's retry, step 1's included."""
    stepless = _event("reaper.compensation", ok=False, at=T0.isoformat())
    assert backoff_due([stepless], 1, T0.timestamp())
    assert not backoff_due([_failure(1, 0)], 1, T0.timestamp())  # control: step 1's own failure delays it
