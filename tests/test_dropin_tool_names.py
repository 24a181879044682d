"""`Governance` tool names are checked against the framework's agents at worker start (issue 33.6):
a typo fails the worker's start with one line naming it, instead of every call being "outside the
task boundary" at run time."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
from temporalio.worker import Worker

from examples import openai_agents_agent as airline
from examples import pydantic_ai_agent as bank
from examples.openai_agents_agent import faq_lookup_tool, update_seat  # noqa: F401 - the app's tools, found here
from examples.pydantic_ai_agent import support_agent  # noqa: F401 - the app's agent, found here
from lockgate.config import Settings
from lockgate.dropin import Govern, Governance
from lockgate.dropin.check import check_tool_names, framework_tool_names
from lockgate.errors import UserError
from lockgate.plugin import LockgatePlugin
from tests.support.dropin import app_client, app_deps


def test_the_examples_declare_only_tools_their_agents_have() -> None:
    check_tool_names(bank.GOVERNANCE)
    check_tool_names(airline.GOVERNANCE)
    assert {"customer_balance", "block_card"} <= framework_tool_names(bank.GOVERNANCE)
    assert {"faq_lookup_tool", "update_seat"} <= framework_tool_names(airline.GOVERNANCE)


@pytest.mark.parametrize(
    ("agents", "tools", "typo", "meant"),
    [
        ("support_agent", ("custmer_balance", "block_card"), "custmer_balance", "customer_balance"),
        (["Seat Booking Agent", "FAQ Agent"], ("faq_lookup_tool", "update_set"), "update_set", "update_seat"),
    ],
)
def test_a_typo_is_named_in_one_line(agents: Any, tools: tuple[str, ...], typo: str, meant: str) -> None:
    gov = Governance(agents, owner="team", tools={t: Govern() for t in tools})
    with pytest.raises(UserError) as err:
        check_tool_names(gov)
    message = str(err.value)
    assert "\n" not in message and f"'{typo}'" in message and f"did you mean '{meant}'" in message, message


async def test_the_worker_does_not_start_with_a_typo(settings: Settings) -> None:
    deps = app_deps(settings)
    typo = Governance(
        "support_agent", owner="support-platform", tools={"customer_balance": Govern(), "blok_card": Govern()}
    )
    client = await app_client(settings, plugins=[PydanticAIPlugin()])
    with pytest.raises(UserError, match="'blok_card' \\(did you mean 'block_card'\\?\\)"):
        Worker(
            client,
            task_queue=f"typo-{uuid.uuid4().hex[:8]}",
            workflows=[bank.BankSupportWorkflow],
            plugins=[AgentPlugin(bank.support_agent), LockgatePlugin(deps=deps, services=False, govern=[typo])],
        )
    deps.ledger.dispose()
