"""Replay and evidence for drop-in runs (issue 33.1), with both frameworks' example apps: `lockgate
replay` replays the app's own workflow (declared on its `Governance`, found through
LOCKGATE_AGENT_MODULES) and re-checks each recorded decision; without the declaration it says it
skipped the run and why; the run's evidence bundle verifies and replays with every server stopped."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
from temporalio.client import Client, WorkflowHistory
from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
from temporalio.openai_agents.testing import TestModelProvider
from temporalio.worker import Worker

from examples import openai_agents_agent as airline
from examples import pydantic_ai_agent as bank
from lockgate.activities.codec import TransitCodec, decode_events
from lockgate.config import Settings
from lockgate.plugin import LockgatePlugin
from tests.support.dropin import app_client, app_deps, db
from tests.support.offline import offline
from tests.support.stack import AGENT_MODULES, cli, person


@pytest.fixture(scope="module")
def app_deps_(settings: Settings) -> Any:
    return app_deps(settings)


@pytest.fixture(scope="module")
async def bank_app(settings: Settings, app_deps_: Any) -> AsyncIterator[tuple[Client, str]]:
    client = await app_client(
        settings,
        plugins=[
            PydanticAIPlugin(),
            LockgatePlugin(deps=app_deps_, services=False, govern=[bank.GOVERNANCE], start_as=lambda: person("erin")),
        ],
    )
    queue = f"bank-replay-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[bank.BankSupportWorkflow], plugins=[AgentPlugin(bank.support_agent)]
    ):
        yield client, queue


@pytest.fixture(scope="module")
async def airline_app(settings: Settings, app_deps_: Any) -> AsyncIterator[tuple[Client, str]]:
    openai = OpenAIAgentsPlugin(
        model_params=ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30)),
        model_provider=TestModelProvider(airline.ScriptedModel()),
    )
    client = await app_client(
        settings,
        plugins=[
            openai,
            LockgatePlugin(
                deps=app_deps_, services=False, govern=[airline.GOVERNANCE], start_as=lambda: person("erin")
            ),
        ],
    )
    queue = f"airline-replay-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[airline.CustomerServiceWorkflow], activities=[airline.update_seat]
    ):
        yield client, queue


async def _bank_run(app: tuple[Client, str], settings: Settings) -> str:
    client, queue = app
    handle = await client.start_workflow(
        bank.BankSupportWorkflow.run,
        bank.SupportRequest(customer_id=123, customer_name="John", prompt="What is my balance?"),
        id=f"bank-{uuid.uuid4().hex[:10]}",
        task_queue=queue,
    )
    assert (await handle.result()).support_advice == "$123.45"
    return handle.id


async def _airline_run(app: tuple[Client, str], settings: Settings) -> str:
    with db(settings, "airline") as conn:
        conn.execute("UPDATE bookings SET seat = '22F' WHERE confirmation_number = 'ABC123'")
    client, queue = app
    handle = await client.start_workflow(
        airline.CustomerServiceWorkflow.run,
        ["How many seats are on the plane?", "Please move me to seat 12A for ABC123"],
        id=f"airline-{uuid.uuid4().hex[:10]}",
        task_queue=queue,
    )
    assert any("Updated seat to 12A" in line for line in await handle.result())
    return handle.id


async def _replays_and_exports(run_id: str, workflow_type: str, env: dict[str, str], tmp_path: Path) -> None:
    declared = {**env, "LOCKGATE_AGENT_MODULES": AGENT_MODULES}
    replayed = await cli(declared, "replay", run_id, "--json")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    (report,) = json.loads(replayed.stdout)
    assert report["ok"] and report["skipped"] is None and report["workflow_type"] == workflow_type
    assert report["histories"] == 1 and report["decisions"] >= 1

    # Without the app's declaration loaded: said, with the reason, and a named run fails.
    undeclared = await cli(env, "replay", run_id)
    assert undeclared.returncode == 1, undeclared.stdout + undeclared.stderr
    assert f"skipped  {run_id}: workflow type {workflow_type}" in undeclared.stdout
    assert "LOCKGATE_AGENT_MODULES" in undeclared.stdout

    # Evidence: exported (encrypted histories sealed for an auditor), verified and replayed offline.
    key = tmp_path / "auditor"
    assert (await cli(declared, "auditor-key", str(key))).returncode == 0
    bundle = tmp_path / "evidence.json"
    exported = await cli(declared, "audit", run_id, "--export", str(bundle), "--auditor-key", f"{key}.pub")
    assert exported.returncode == 0 and "verified" in exported.stderr, exported.stdout + exported.stderr
    keys = tmp_path / "keys.json"
    anchor = json.loads((Path(env["LOCKGATE_STATE_DIR"]) / "ledger-anchor.json").read_text())
    keys.write_text(json.dumps(anchor["keys"]))
    dead = {**offline(env, tmp_path), "LOCKGATE_AGENT_MODULES": AGENT_MODULES}
    verified = await cli(dead, "verify", "--bundle", str(bundle), "--keys", str(keys))
    assert verified.returncode == 0 and "bundle intact" in verified.stdout, verified.stdout
    offline_replay = await cli(dead, "replay", "--history", str(bundle), "--keys", str(keys), "--key", str(key), "--json")  # fmt: skip
    assert offline_replay.returncode == 0, offline_replay.stdout + offline_replay.stderr
    (report,) = json.loads(offline_replay.stdout)
    assert report["ok"] and report["decisions"] >= 1 and report["histories"] == 1


async def test_pydantic_ai_run_replays_and_its_evidence_verifies_offline(
    bank_app: tuple[Client, str], settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    run_id = await _bank_run(bank_app, settings)
    await _replays_and_exports(run_id, "BankSupportWorkflow", env, tmp_path)


async def test_openai_agents_run_replays_and_its_evidence_verifies_offline(
    airline_app: tuple[Client, str], settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    run_id = await _airline_run(airline_app, settings)
    await _replays_and_exports(run_id, "CustomerServiceWorkflow", env, tmp_path)


async def test_a_changed_decision_in_a_drop_in_history_is_a_mismatch(
    bank_app: tuple[Client, str], settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    """The replayer really runs the app's workflow: a history whose governed call is cut short no
    longer matches the code."""
    client, _ = bank_app
    run_id = await _bank_run(bank_app, settings)
    history = await client.get_workflow_handle(run_id).fetch_history()
    codec = client.data_converter.payload_codec
    if isinstance(codec, TransitCodec):  # exported decoded, as through the codec server
        history = WorkflowHistory(run_id, decode_events(history.events, codec))
    doc = json.loads(history.to_json())
    doc["events"] = [e for e in doc["events"] if "activityTaskCompletedEventAttributes" not in e][:14]
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(doc))
    declared = {**env, "LOCKGATE_AGENT_MODULES": AGENT_MODULES}
    result = await cli(declared, "replay", "--history", str(cut))
    assert result.returncode == 1 and "MISMATCH" in result.stdout, result.stdout + result.stderr
