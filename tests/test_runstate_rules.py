"""The rules of activities/runstate.py on ledger events built the way lockgate's activities record
them (`decision` with the evaluated request, `tool.completed` with its decision id, `run.opened` with
a sub-agent's limits): pure functions, no servers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from lockgate.activities.runstate import MAX_DEPTH, Recorded, recorded_state, stricter
from lockgate.models import DELEGATE_TOOL, Chain, GateRequest, GateState, ToolCall, args_digest
from lockgate.spec import Agent, AgentRegistry, Tool

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
RUN = "teller-0123456789"


class PayArgs(BaseModel):
    account: str = ""
    amount: int = 0


class LookupArgs(BaseModel):
    customer: str = ""


class PingArgs(BaseModel):
    n: int = 0


class DelegateArgs(BaseModel):
    agent: str = ""


class Input(BaseModel):
    x: int = 0


PAY = Tool(name="pay.send", args=PayArgs, cost_arg="amount", resource="account", resource_type="Account")
LOOKUP = Tool(name="crm.lookup", args=LookupArgs, data_class="regulated")
PING = Tool(name="net.ping", args=PingArgs, data_class="public")

TELLER = Agent(
    name="teller",
    owner="qa",
    purpose="pays, looks up, pings",
    tools=(PAY, LOOKUP, PING),
    input_model=Input,
    planner=lambda _input, _steps: None,
    rate_limits={"net.ping": (3, timedelta(minutes=1))},
)
AGENTS = AgentRegistry([TELLER])


def _request(step: int, tool: str, args: dict[str, Any], *, compensation: bool = False, **state: Any) -> GateRequest:
    return GateRequest(
        decision_id=f"{RUN}/{step}/1",
        run_id=RUN,
        agent="teller",
        initiator="erin",
        step=step,
        call=ToolCall(tool=tool, args=args),
        state=GateState(**state),
        compensation=compensation,
    )


def decision(
    run_id: str,
    step: int,
    tool: str,
    args: dict[str, Any],
    *,
    outcome: str = "allow",
    agent: str = "teller",
    compensation: bool = False,
) -> dict[str, Any]:
    """A `decision` row as `record_decision` writes it (the evaluated request included)."""
    request = GateRequest(
        decision_id=f"{run_id}/{step}/1",
        run_id=run_id,
        agent=agent,
        initiator="erin",
        step=step,
        call=ToolCall(tool=tool, args=args),
        compensation=compensation,
    )
    return {
        "kind": "decision",
        "at": T0.isoformat(),
        "decision_id": request.decision_id,
        "step": step,
        "tool": tool,
        "args_digest": args_digest(args),
        "outcome": outcome,
        "agent": agent,
        "request": request.model_dump(mode="json"),
    }


def completed(
    run_id: str, step: int, tool: str, at: datetime = T0, *, compensates: str | None = None
) -> dict[str, Any]:
    """A `tool.completed` row as the tool activity writes it."""
    return {
        "kind": "tool.completed",
        "at": at.isoformat(),
        "tool": tool,
        "step": step,
        "idempotency_key": f"{run_id}:{step}",
        "decision_id": f"{run_id}/{step}/1",
        "compensates": compensates,
    }


def ran(run_id: str, step: int, tool: str, args: dict[str, Any], at: datetime = T0, **kw: Any) -> list[dict[str, Any]]:
    """An allowed decision and its completion."""
    return [decision(run_id, step, tool, args, **kw), completed(run_id, step, tool, at)]


def opened(*, expires_at: datetime | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "run.opened",
        "at": T0.isoformat(),
        "agent": "teller",
        "expires_at": expires_at.isoformat() if expires_at is not None else None,
        **extra,
    }


def ledger(runs: dict[str, list[dict[str, Any]]], asked: list[str] | None = None) -> Any:
    def events(run_id: str) -> list[dict[str, Any]]:
        if asked is not None:
            asked.append(run_id)
        return list(runs.get(run_id, []))

    return events


# -- recorded_state ------------------------------------------------------------------------------


def test_completed_calls_count_their_cost_chain_and_call_times() -> None:
    events = [
        *ran(RUN, 1, "pay.send", {"account": "ac-1", "amount": 300}, T0),
        *ran(RUN, 2, "net.ping", {"n": 1}, T0 + timedelta(seconds=5)),
        *ran(RUN, 3, "net.ping", {"n": 2}, T0 + timedelta(seconds=9)),
    ]
    rec = recorded_state(ledger({RUN: events}), AGENTS, RUN)
    assert rec.spent == 300
    assert rec.steps == {1, 2, 3}
    assert rec.tainted is False
    assert rec.call_times == {
        "pay.send": [T0],
        "net.ping": [T0 + timedelta(seconds=5), T0 + timedelta(seconds=9)],
    }
    assert rec.completed == {
        1: ("pay.send", args_digest({"account": "ac-1", "amount": 300})),
        2: ("net.ping", args_digest({"n": 1})),
        3: ("net.ping", args_digest({"n": 2})),
    }
    assert rec.chain.calls == {"pay.send": 1, "net.ping": 2}
    assert rec.chain.resources == (("Account", "ac-1"),)
    assert rec.chain.data_classes == ("internal", "public")


def test_an_empty_run_is_untainted_and_unlimited() -> None:
    rec = recorded_state(ledger({}), AGENTS, RUN)
    assert rec == Recorded()
    assert rec.tainted is False
    assert (rec.spent, rec.steps, rec.deadline_at, rec.boundary, rec.budget) == (0, set(), None, None, None)


def test_a_regulated_call_taints_the_run_and_an_internal_one_does_not() -> None:
    internal = recorded_state(ledger({RUN: ran(RUN, 1, "pay.send", {"amount": 1})}), AGENTS, RUN)
    assert internal.tainted is False
    regulated_first = [
        *ran(RUN, 1, "crm.lookup", {"customer": "c-1"}),
        *ran(RUN, 2, "pay.send", {"amount": 1}),
    ]
    assert recorded_state(ledger({RUN: regulated_first}), AGENTS, RUN).tainted is True
    regulated_last = [
        *ran(RUN, 1, "pay.send", {"amount": 1}),
        *ran(RUN, 2, "crm.lookup", {"customer": "c-1"}),
    ]
    assert recorded_state(ledger({RUN: regulated_last}), AGENTS, RUN).tainted is True


def test_a_completion_no_recorded_decision_allowed_counts_for_nothing() -> None:
    orphan = completed(RUN, 1, "pay.send")  # no decision row with its id
    events = [orphan, *ran(RUN, 2, "pay.send", {"amount": 40})]
    rec = recorded_state(ledger({RUN: events}), AGENTS, RUN)
    assert rec.spent == 40
    assert rec.completed == {2: ("pay.send", args_digest({"amount": 40}))}
    assert rec.chain.calls == {"pay.send": 1}


def test_a_call_of_an_unknown_agent_or_tool_is_skipped_but_later_calls_still_count() -> None:
    events = [
        *ran(RUN, 1, "pay.send", {"amount": 70}, agent="stranger"),  # an agent no one registered
        *ran(RUN, 2, "no.such-tool", {"amount": 80}),  # a tool the agent does not have
        *ran(RUN, 3, "pay.send", {"amount": 5}, T0 + timedelta(seconds=3)),
    ]
    rec = recorded_state(ledger({RUN: events}), AGENTS, RUN)
    assert rec.spent == 5
    assert rec.chain.calls == {"pay.send": 1}
    assert rec.call_times == {"pay.send": [T0 + timedelta(seconds=3)]}
    # What ran at each step is remembered all the same (for conflicts).
    assert rec.completed == {
        1: ("pay.send", args_digest({"amount": 70})),
        2: ("no.such-tool", args_digest({"amount": 80})),
        3: ("pay.send", args_digest({"amount": 5})),
    }


def test_compensations_count_neither_as_steps_nor_as_calls() -> None:
    events = [
        *ran(RUN, 1, "pay.send", {"amount": 10}),
        decision(RUN, 2, "pay.send", {"amount": 20}, compensation=True),
        completed(RUN, 2, "pay.send", compensates=f"{RUN}:1"),
        *ran(RUN, 3, "pay.send", {"amount": 30}),
    ]
    rec = recorded_state(ledger({RUN: events}), AGENTS, RUN)
    assert rec.steps == {1, 3}
    assert rec.spent == 40
    assert sorted(rec.completed) == [1, 3]
    assert rec.chain.calls == {"pay.send": 2}


def test_run_opened_gives_the_deadline_and_a_sub_agents_boundary_and_budget() -> None:
    deadline = T0 + timedelta(hours=1)
    events = [
        opened(expires_at=deadline, boundary=["pay.send", "net.ping"], budget=250),
        *ran(RUN, 1, "pay.send", {"amount": 10}),
    ]
    rec = recorded_state(ledger({RUN: events}), AGENTS, RUN)
    assert rec.deadline_at == deadline
    assert rec.boundary == ("pay.send", "net.ping")
    assert rec.budget == 250
    assert rec.spent == 10


def test_a_top_level_run_has_no_boundary_or_budget_of_its_own() -> None:
    deadline = T0 + timedelta(hours=1)
    rec = recorded_state(ledger({RUN: [opened(expires_at=deadline)]}), AGENTS, RUN)
    assert rec.deadline_at == deadline
    assert rec.boundary is None
    assert rec.budget is None


def test_an_allowed_delegation_folds_the_sub_agents_spend_taint_and_chain_in() -> None:
    child = f"{RUN}.2"
    runs = {
        RUN: [
            *ran(RUN, 1, "pay.send", {"account": "ac-1", "amount": 100}),
            decision(RUN, 2, DELEGATE_TOOL, {"agent": "teller"}),
        ],
        child: [
            *ran(child, 1, "crm.lookup", {"customer": "c-9"}),
            *ran(child, 2, "pay.send", {"account": "ac-2", "amount": 25}),
        ],
    }
    rec = recorded_state(ledger(runs), AGENTS, RUN)
    assert rec.spent == 125
    assert rec.tainted is True
    assert rec.chain.calls == {"pay.send": 2, "crm.lookup": 1}
    assert rec.chain.resources == (("Account", "ac-1"), ("Account", "ac-2"))
    # The parent's own steps and call times stay its own.
    assert rec.steps == {1, 2}
    assert rec.call_times == {"pay.send": [T0]}


def test_an_untainted_sub_agent_leaves_a_tainted_parent_tainted() -> None:
    child = f"{RUN}.2"
    runs = {
        RUN: [*ran(RUN, 1, "crm.lookup", {"customer": "c-1"}), decision(RUN, 2, DELEGATE_TOOL, {})],
        child: ran(child, 1, "pay.send", {"amount": 3}),
    }
    rec = recorded_state(ledger(runs), AGENTS, RUN)
    assert rec.tainted is True
    assert rec.spent == 3


@pytest.mark.parametrize(
    ("tool", "outcome"),
    [(DELEGATE_TOOL, "deny"), (DELEGATE_TOOL, "escalate"), ("pay.send", "allow"), ("pay.send", "deny")],
)
def test_only_an_allowed_delegation_folds_a_run_in(tool: str, outcome: str) -> None:
    child = f"{RUN}.2"
    runs = {
        RUN: [decision(RUN, 2, tool, {}, outcome=outcome)],
        child: ran(child, 1, "crm.lookup", {"customer": "c-1"}) + ran(child, 2, "pay.send", {"amount": 9}),
    }
    asked: list[str] = []
    rec = recorded_state(ledger(runs, asked), AGENTS, RUN)
    assert asked == [RUN]
    assert rec.spent == 0
    assert rec.tainted is False
    assert rec.chain == Chain()


def test_sub_agents_of_sub_agents_are_followed_down_to_max_depth_and_no_further() -> None:
    runs: dict[str, list[dict[str, Any]]] = {}
    ids = [RUN]
    for _ in range(MAX_DEPTH + 3):
        ids.append(f"{ids[-1]}.1")
    for run_id in ids:
        runs[run_id] = [decision(run_id, 1, DELEGATE_TOOL, {}), *ran(run_id, 2, "pay.send", {"amount": 1})]
    asked: list[str] = []
    rec = recorded_state(ledger(runs, asked), AGENTS, RUN)
    assert asked == ids[: MAX_DEPTH + 1]  # the run itself (depth 0) and MAX_DEPTH levels below it
    assert rec.spent == MAX_DEPTH + 1
    assert rec.chain.calls == {"pay.send": MAX_DEPTH + 1}


# -- stricter ------------------------------------------------------------------------------------


def test_spent_steps_and_taint_are_the_larger_of_claim_and_record() -> None:
    rec = Recorded(steps={1, 2, 3}, spent=50, tainted=True)
    low = stricter(_request(9, "pay.send", {}, steps_taken=1, spent=10), rec, None, T0)
    assert (low.steps_taken, low.spent, low.tainted) == (3, 50, True)
    high = stricter(_request(9, "pay.send", {}, steps_taken=7, spent=90, tainted=True), Recorded(steps={1}), None, T0)
    assert (high.steps_taken, high.spent, high.tainted) == (7, 90, True)
    clean = stricter(_request(9, "pay.send", {}), Recorded(steps={1}), None, T0)
    assert clean.tainted is False


def test_only_steps_before_the_requested_one_count_as_taken() -> None:
    rec = Recorded(steps={1, 2, 3, 4, 7})
    assert stricter(_request(3, "pay.send", {}), rec, None, T0).steps_taken == 2
    assert stricter(_request(4, "pay.send", {}), rec, None, T0).steps_taken == 3
    assert stricter(_request(8, "pay.send", {}), rec, None, T0).steps_taken == 5


def test_the_chain_is_the_ledgers_whatever_is_claimed(caplog: pytest.LogCaptureFixture) -> None:
    chain = Chain().after("pay.send", ("Account", "ac-1"), "internal", False)
    with caplog.at_level(logging.WARNING, logger="lockgate.gate"):
        forged = stricter(_request(2, "pay.send", {}, chain=Chain()), Recorded(chain=chain), None, T0)
    assert forged.chain == chain
    assert any("claimed chain differs" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_claimed_chain_that_matches_the_ledger_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    chain = Chain().after("pay.send", ("Account", "ac-1"), "internal", False)
    with caplog.at_level(logging.DEBUG, logger="lockgate.gate"):
        state = stricter(_request(2, "pay.send", {}, chain=chain), Recorded(chain=chain), None, T0)
    assert state.chain == chain
    assert not [r for r in caplog.records if "claimed chain differs" in r.getMessage()]


def test_a_step_that_already_ran_another_call_is_a_conflict() -> None:
    args = {"account": "ac-1", "amount": 5}
    rec = Recorded(completed={4: ("pay.send", args_digest(args))})
    # The same call again (a retry): no conflict.
    assert stricter(_request(4, "pay.send", args), rec, None, T0).conflict is None
    # Other args, or another tool with the same args: a conflict.
    other_args = stricter(_request(4, "pay.send", {"account": "ac-1", "amount": 6}), rec, None, T0).conflict
    assert other_args is not None and "step 4 already ran pay.send" in other_args
    other_tool = stricter(_request(4, "net.ping", args), rec, None, T0).conflict
    assert other_tool is not None and "step 4 already ran pay.send" in other_tool
    # Another step: nothing ran there.
    assert stricter(_request(5, "net.ping", {}), rec, None, T0).conflict is None
    # A compensation of the step is no conflict; a conflict already claimed is kept.
    assert stricter(_request(4, "net.ping", {}, compensation=True), rec, None, T0).conflict is None
    kept = stricter(_request(4, "net.ping", {}, conflict="earlier"), rec, None, T0).conflict
    assert kept == "earlier"


def test_recent_calls_are_the_records_within_the_window_when_longer_than_claimed() -> None:
    now = T0 + timedelta(minutes=10)
    times = [now - timedelta(seconds=90), now - timedelta(seconds=60), now - timedelta(seconds=59), now]
    rec = Recorded(call_times={"net.ping": times, "pay.send": [now, now]})
    state = stricter(_request(9, "net.ping", {}), rec, 60.0, now)
    # Exactly a window ago is outside it.
    assert state.recent_calls == (now - timedelta(seconds=59), now)


def test_a_claimed_list_of_recent_calls_as_long_as_the_records_is_kept() -> None:
    now = T0 + timedelta(minutes=10)
    claimed = (now - timedelta(seconds=1), now - timedelta(seconds=2))
    rec = Recorded(call_times={"net.ping": [now - timedelta(seconds=30), now - timedelta(seconds=20)]})
    assert stricter(_request(9, "net.ping", {}, recent_calls=claimed), rec, 60.0, now).recent_calls == claimed
    longer = (*claimed, now - timedelta(seconds=3))
    assert stricter(_request(9, "net.ping", {}, recent_calls=longer), rec, 60.0, now).recent_calls == longer


def test_recent_calls_of_a_tool_without_rate_limit_are_the_claims() -> None:
    now = T0 + timedelta(minutes=10)
    rec = Recorded(call_times={"net.ping": [now, now]})
    assert stricter(_request(9, "net.ping", {}), rec, None, now).recent_calls == ()


def test_the_deadline_is_the_earlier_of_claim_and_record() -> None:
    early, late = T0 + timedelta(minutes=5), T0 + timedelta(minutes=50)
    assert (
        stricter(_request(1, "net.ping", {}, deadline_at=late), Recorded(deadline_at=early), None, T0).deadline_at
        == early
    )
    assert (
        stricter(_request(1, "net.ping", {}, deadline_at=early), Recorded(deadline_at=late), None, T0).deadline_at
        == early
    )
    assert stricter(_request(1, "net.ping", {}), Recorded(deadline_at=late), None, T0).deadline_at == late
    assert stricter(_request(1, "net.ping", {}, deadline_at=late), Recorded(), None, T0).deadline_at == late
    assert stricter(_request(1, "net.ping", {}), Recorded(), None, T0).deadline_at is None


def test_the_budget_is_the_smaller_of_claim_and_record() -> None:
    assert stricter(_request(1, "net.ping", {}, budget=5), Recorded(budget=10), None, T0).budget == 5
    assert stricter(_request(1, "net.ping", {}, budget=10), Recorded(budget=5), None, T0).budget == 5
    assert stricter(_request(1, "net.ping", {}), Recorded(budget=10), None, T0).budget == 10
    assert stricter(_request(1, "net.ping", {}, budget=10), Recorded(), None, T0).budget == 10
    assert stricter(_request(1, "net.ping", {}, budget=0), Recorded(), None, T0).budget == 0
    assert stricter(_request(1, "net.ping", {}), Recorded(budget=0), None, T0).budget == 0
    assert stricter(_request(1, "net.ping", {}), Recorded(), None, T0).budget is None


def test_the_boundary_is_the_intersection_of_claim_and_record() -> None:
    rec = Recorded(boundary=("pay.send", "net.ping"))
    claimed = stricter(_request(1, "net.ping", {}, boundary=("crm.lookup", "net.ping")), rec, None, T0)
    assert claimed.boundary == ("net.ping",)
    assert stricter(_request(1, "net.ping", {}), rec, None, T0).boundary == ("pay.send", "net.ping")
    own = stricter(_request(1, "net.ping", {}, boundary=("crm.lookup",)), Recorded(), None, T0)
    assert own.boundary == ("crm.lookup",)
    assert stricter(_request(1, "net.ping", {}), Recorded(), None, T0).boundary is None
