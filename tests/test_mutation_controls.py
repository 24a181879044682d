"""Pure tests that each hold one control in isolation (found by `make mutation`: a mutant that
switched the control off survived every test that was meant to guard it). Each docstring names
the control."""

from __future__ import annotations

import pytest

from lockgate.ids import InvalidRunId, check_run_id, is_run_id


@pytest.mark.parametrize("good", ["r", "run-1_A", "a" * 80, "run.1", "run.1.22.333.4444"])
def test_run_ids_in_the_syntax_pass(good: str) -> None:
    """Control: run-id syntax (lockgate/ids.py) accepts every well-formed id, returned as is."""
    assert is_run_id(good)
    assert check_run_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "-r", "a" * 81, "a/b", "a..b", "a.0", "a.1.2.3.4.5", "a b", "a\n", "a.b", 7, None, "ü"]
)
def test_run_ids_outside_the_syntax_are_refused(bad: object) -> None:
    """Control: run-id syntax refuses aliases (separators, dots, whitespace, overlong, non-strings)."""
    assert not is_run_id(bad)
    with pytest.raises(InvalidRunId):
        check_run_id(bad)
