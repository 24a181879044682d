"""Drop-in runs have a verified initiator (SCENARIOS 20, 22): the app's client signs each start as
the logged-in person (`LockgatePlugin(start_as=...)`), and the worker takes the signer, never a
search attribute, as the run's initiator. An unsigned start and a start signed for another run are
refused at the run's first governed call: nothing runs, nothing is leased, the refusal is recorded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
from temporalio import client as temporal_client
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.converter import default as default_converter
from temporalio.plugin import SimplePlugin
from temporalio.worker import Worker

from examples import pydantic_ai_agent as bank
from lockgate.config import Settings
from lockgate.dropin.start import START_HEADER, start_digest
from lockgate.identity import OperatorSession, sign
from lockgate.names import SA_INITIATOR
from lockgate.plugin import LockgatePlugin
from tests.support.dropin import app_client, app_deps, approve, db, ledger, pending_of
from tests.support.stack import person


@pytest.fixture(scope="module")
def deps(settings: Settings) -> Any:
    return app_deps(settings)


def _plugins(deps: Any, start_as: Callable[[], OperatorSession | None], *extra: Any) -> list[Any]:
    plugin = LockgatePlugin(deps=deps, services=False, govern=[bank.GOVERNANCE], start_as=start_as)
    return [PydanticAIPlugin(), plugin, *extra]


@pytest.fixture(scope="module")
async def queue(settings: Settings, deps: Any) -> AsyncIterator[str]:
    """The bank app's worker (its client signs nothing it starts itself)."""
    client = await app_client(settings, plugins=_plugins(deps, lambda: None))
    task_queue = f"bank-starts-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=task_queue, workflows=[bank.BankSupportWorkflow], plugins=[AgentPlugin(bank.support_agent)]
    ):
        yield task_queue


@pytest.fixture(autouse=True)
def fresh_cards(settings: Settings) -> None:
    with db(settings, "bank") as conn:
        conn.execute("UPDATE cards SET blocked = false")


class _ForgedStart(temporal_client.Interceptor):
    """A starter that sends erin's genuine signed start of *another* run in this run's header."""

    def intercept_client(self, next: temporal_client.OutboundInterceptor) -> temporal_client.OutboundInterceptor:
        class Outbound(temporal_client.OutboundInterceptor):
            async def start_workflow(self, input: temporal_client.StartWorkflowInput) -> Any:
                fields = {
                    "run_id": "another-run",
                    "workflow_type": input.workflow,
                    "input_digest": start_digest(input.args),
                }
                signed = sign(person("erin"), "start", dict(fields))
                payload = default_converter().payload_converter.to_payloads([signed.model_dump(mode="json")])[0]
                input.headers = {**input.headers, START_HEADER: payload}
                return await super().start_workflow(input)

        return Outbound(next)


class _MalformedStart(temporal_client.Interceptor):
    """A starter that sends something that is no signed statement in the start header."""

    def intercept_client(self, next: temporal_client.OutboundInterceptor) -> temporal_client.OutboundInterceptor:
        class Outbound(temporal_client.OutboundInterceptor):
            async def start_workflow(self, input: temporal_client.StartWorkflowInput) -> Any:
                payload = default_converter().payload_converter.to_payloads([{"person": "erin", "signature": "x"}])[0]
                input.headers = {**input.headers, START_HEADER: payload}
                return await super().start_workflow(input)

        return Outbound(next)


async def _start(client: Client, queue: str, prompt: str, *, named: str | None = None) -> Any:
    return await client.start_workflow(
        bank.BankSupportWorkflow.run,
        bank.SupportRequest(customer_id=123, customer_name="John", prompt=prompt),
        id=f"bank-{uuid.uuid4().hex[:10]}",
        task_queue=queue,
        search_attributes=TypedSearchAttributes([SearchAttributePair(SA_INITIATOR, named)]) if named else None,
    )


async def test_the_signer_is_the_initiator_whatever_the_starter_names(
    settings: Settings, deps: Any, queue: str
) -> None:
    """carol starts a run and names dave as its initiator, hoping to approve it herself."""
    carol = await app_client(settings, plugins=_plugins(deps, lambda: person("carol")))
    handle = await _start(carol, queue, "There is fraud on my card!", named="dave")
    request = await pending_of(handle)
    own = await approve(carol, handle, request, "carol")
    assert not own.accepted and "separation of duties" in own.reason, own
    other = await approve(carol, handle, request, "dave")
    assert other.accepted, other
    output = await handle.result()
    assert output.block_card
    opened = [e for e in ledger(deps, handle.id) if e["kind"] == "run.opened"]
    assert [o["initiator"] for o in opened] == ["carol"] and "initiator_verified" not in opened[0]


@pytest.mark.parametrize("how", ["unsigned", "signed for another run", "malformed"])
async def test_a_start_nobody_signed_for_this_run_is_refused(
    settings: Settings, deps: Any, queue: str, how: str
) -> None:
    forger = {"signed for another run": _ForgedStart(), "malformed": _MalformedStart()}.get(how)
    plugins = (
        _plugins(deps, lambda: None)
        if forger is None
        else _plugins(deps, lambda: None, SimplePlugin("forger", interceptors=[forger]))
    )
    starter = await app_client(settings, plugins=plugins)
    handle = await _start(starter, queue, "What is my balance?", named="erin")
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), timeout=120)  # a header that breaks the worker would hang it
    events = ledger(deps, handle.id)
    kinds = [e["kind"] for e in events]
    assert "run.opened" not in kinds and "decision" not in kinds and "lease.issued" not in kinds, kinds
    refused = [e["reason"] for e in events if e["kind"] == "run.refused"]
    assert refused, kinds
    expected = "start:" if how == "signed for another run" else "not signed by a person"
    assert expected in refused[0], refused


async def test_a_signed_start_by_someone_no_policy_lets_start_it_is_refused(
    settings: Settings, deps: Any, queue: str
) -> None:
    """mallory's drop-in start is genuinely signed (authenticated), but no start policy names her
    (issue 27): refused where the run opens, like a lockgate agent's start."""
    mallory = await app_client(settings, plugins=_plugins(deps, lambda: person("mallory")))
    handle = await _start(mallory, queue, "There is fraud on my card!")
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    events = ledger(deps, handle.id)
    kinds = [e["kind"] for e in events]
    assert "run.opened" not in kinds and "decision" not in kinds and "lease.issued" not in kinds, kinds
    (decision,) = [e for e in events if e["kind"] == "start.decision"]
    assert (decision["person"], decision["agent"], decision["outcome"]) == ("mallory", "support-agent", "deny")
    refused = [e["reason"] for e in events if e["kind"] == "run.refused"]
    assert refused and "mallory (groups: none) may not start support-agent" in refused[0], refused


async def test_a_start_for_a_tenant_the_person_is_not_in_is_refused(settings: Settings, deps: Any, queue: str) -> None:
    """A client signs the tenant its runs act for into each start (`SignedStarts(tenant=...)`); the
    worker counts it only for a member of Vault group `tenant-<name>`. erin, in no such group,
    starting runs for one is refused where the run opens: nothing decided, nothing leased."""
    from lockgate.dropin.start import SignedStarts

    tenant = f"tenant-of-nobody-{uuid.uuid4().hex[:6]}"
    signs = SimplePlugin("tenant-starts", interceptors=[SignedStarts(lambda: person("erin"), tenant=tenant)])
    erin = await app_client(settings, plugins=_plugins(deps, lambda: None, signs))
    handle = await _start(erin, queue, "What is my balance?")
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), timeout=120)
    events = ledger(deps, handle.id)
    kinds = [e["kind"] for e in events]
    assert "run.opened" not in kinds and "decision" not in kinds and "lease.issued" not in kinds, kinds
    refused = [e["reason"] for e in events if e["kind"] == "run.refused"]
    assert refused and f"erin may not act for tenant {tenant!r}" in refused[0], refused


async def test_no_approval_counts_for_a_run_whose_start_nobody_signed(settings: Settings, deps: Any) -> None:
    """An app that declared `unsigned_starts` opens a run nobody signed the start of, as the
    initiator its starter named (unverified). Anyone may have started it, so no approver can be
    shown to be someone else: dave's genuine approval of its card block is refused, nothing runs."""
    unsigned = bank.GOVERNANCE.model_copy(update={"unsigned_starts": True})
    plugins = [PydanticAIPlugin(), LockgatePlugin(deps=deps, services=False, govern=[unsigned], start_as=lambda: None)]
    client = await app_client(settings, plugins=plugins)
    task_queue = f"bank-unsigned-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=task_queue, workflows=[bank.BankSupportWorkflow], plugins=[AgentPlugin(bank.support_agent)]
    ):
        handle = await _start(client, task_queue, "There is fraud on my card!", named="zed")
        try:
            request = await pending_of(handle)
            attempt = await approve(client, handle, request, "dave")
            assert not attempt.accepted and "the run's start is not signed" in attempt.reason, attempt
        finally:
            await handle.terminate("test over")
    with db(settings, "bank") as conn:
        blocked = conn.execute("SELECT count(*) FROM cards WHERE blocked").fetchone()
    assert blocked == (0,)
