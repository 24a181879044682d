"""Real-stack tests of run.open's checks, each in isolation (found by `make mutation`): the signed
start that names a run's initiator, and which ledger record makes a run id taken. Every refused
start here passes all other checks: the same start with the one thing right runs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.client import Client

from lockgate.identity import sign
from lockgate.models import RunInput, args_digest
from lockgate.people import FieldValue
from tests.support.hostile import raw_start, refund, refused_at_once
from tests.support.stack import Outside, finish, ledger_events, person
from tests.support.vault import read_data


async def _start(
    client: Client,
    queue: str,
    run_id: str,
    *,
    signer: str = "erin",
    wrong: str = "",
    unsigned: bool = False,
    tenant: FieldValue = None,
) -> Any:
    """erin starts refund-agent on `run_id`; `wrong` names the one bound start field signed wrong;
    `tenant`, the tenant the start names (none by default)."""
    data = refund()
    fields: dict[str, FieldValue] = {"run_id": run_id, "agent": "refund-agent", "input_digest": args_digest(data)}
    if tenant is not None:
        fields["tenant"] = tenant
    if wrong:
        fields[wrong] = "0" * 64 if wrong == "input_digest" else f"{fields[wrong]}-other"
    signed = None if unsigned else await asyncio.to_thread(sign, person(signer), "start", fields)
    return await raw_start(
        client, queue, RunInput(agent="refund-agent", input=data, initiator="erin", start=signed), run_id
    )


def _id() -> str:
    return f"refund-agent-{uuid.uuid4().hex[:10]}"


async def test_an_unsigned_start_is_refused(client: Client, worker_running: str, deps: Any) -> None:
    """Control: `_check_start` refuses a run whose start no person signed (the initiator would be a
    bare claim)."""
    run_id = _id()
    await refused_at_once(await _start(client, worker_running, run_id, unsigned=True), "not signed by a person")
    assert [e["reason"] for e in ledger_events(deps, run_id, "run.refused")] == [
        "the run's start is not signed by a person"
    ]


async def test_a_start_signed_by_another_person_than_the_initiator_named_is_refused(
    client: Client, worker_running: str
) -> None:
    """Control: `_check_start` requires the signer to be the initiator the input names (alice signs a
    start that says erin started it; every bound field is right)."""
    handle = await _start(client, worker_running, _id(), signer="alice")
    await refused_at_once(handle, "start signed by alice, not the initiator named")


@pytest.mark.parametrize("field", ["run_id", "agent", "input_digest"])
async def test_a_start_binding_one_wrong_field_is_refused(client: Client, worker_running: str, field: str) -> None:
    """Control: `_check_start` compares each field the start binds (run id, agent, input digest)."""
    await refused_at_once(await _start(client, worker_running, _id(), wrong=field), field)


async def test_a_refused_attempts_record_does_not_take_the_run_id(client: Client, worker_running: str) -> None:
    """Control: only a `run.opened` record makes an id an earlier run's (`open_run` looks for that
    kind): an attempt refused before it opened leaves a `run.refused` record, and a correct start
    on the same id then runs."""
    run_id = _id()
    await refused_at_once(await _start(client, worker_running, run_id, unsigned=True), "not signed by a person")
    assert await asyncio.wait_for(finish(await _start(client, worker_running, run_id)), timeout=60) is None


async def test_a_start_acts_only_for_a_tenant_whose_group_the_person_is_in(
    client: Client, worker_running: str, deps: Any, outside: Outside
) -> None:
    """Control: `_check_start` lets a signed start name a tenant only for a member of Vault group
    `tenant-<name>`. erin's start naming her neighbour's tenant (a group alice is in, erin is not),
    or a tenant that is not a name, is refused before anything opens; the same start naming erin's
    own tenant runs, acting for that tenant."""
    mine, theirs = f"t{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    groups = {mine: "erin", theirs: "alice"}
    for tenant, who in groups.items():
        member = read_data(outside.vault, f"identity/entity/name/{who}")["id"]
        outside.vault.write_data(f"identity/group/name/tenant-{tenant}", data={"member_entity_ids": [member]})
    try:
        for other in (theirs, 7):
            run_id = _id()
            await refused_at_once(
                await _start(client, worker_running, run_id, tenant=other), f"erin may not act for tenant {other!r}"
            )
            assert ledger_events(deps, run_id, "run.opened") == []
            assert deps.vault.read_run(run_id) is None
        run_id = _id()
        handle = await _start(client, worker_running, run_id, tenant=mine)
        assert await asyncio.wait_for(finish(handle), timeout=60) is None
        (opened,) = ledger_events(deps, run_id, "run.opened")
        assert opened["tenant"] == mine
    finally:
        for tenant in groups:
            outside.vault.delete(f"identity/group/name/tenant-{tenant}")
