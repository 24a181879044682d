"""Helpers for the drop-in tests: an app's own client and worker, approvals, history scans."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from temporalio.client import Client, WorkflowHandle

from lockgate.config import Settings
from lockgate.models import ApprovalAttempt, ApprovalRequest
from lockgate.ops import send_verdict


async def approve(
    client: Client, handle: WorkflowHandle[Any, Any], request: ApprovalRequest, approver: str, *, approve: bool = True
) -> ApprovalAttempt:
    """`approver` approves (or rejects) as `lockgate approve` and the inbox do: logged in, a Transit-
    signed statement bound to the run, request, decision and args digest, sent as an update."""
    from tests.support.stack import person

    return await send_verdict(client, handle.id, request.request_id, session=person(approver), approve=approve)


async def pending_of(handle: WorkflowHandle[Any, Any], timeout: float = 30) -> ApprovalRequest:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        pending = await handle.query("pending_approvals", result_type=list[ApprovalRequest])
        if pending:
            return pending[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{handle.id} did not ask for approval")


@contextmanager
def issued_secrets(deps: Any) -> Iterator[list[dict[str, Any]]]:
    """Every secret Vault issues meanwhile (the real broker, spied on), to look for in histories."""
    seen: list[dict[str, Any]] = []
    vault = deps.vault
    original = vault.issue

    def issue(run_id: str, path: str) -> Any:
        lease, secret = original(run_id, path)
        seen.append(dict(secret))
        return lease, secret

    vault.issue = issue
    try:
        yield seen
    finally:
        vault.issue = original


def _decoded(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        data = value.get("data")
        if isinstance(data, str):
            try:
                out.append(base64.b64decode(data).decode("utf-8", "replace"))
            except ValueError:
                pass
        for item in value.values():
            _decoded(item, out)
    elif isinstance(value, list):
        for item in value:
            _decoded(item, out)


async def assert_no_secret_in_history(handle: WorkflowHandle[Any, Any], secrets: list[dict[str, Any]]) -> None:
    """Decodes every payload of the run's history and looks for each issued secret value."""
    history = await handle.fetch_history()
    raw = history.to_json()
    texts: list[str] = [raw]
    _decoded(json.loads(raw), texts)
    for secret in secrets:
        for key in ("password", "username"):
            value = secret.get(key)
            if value:
                assert all(str(value) not in t for t in texts), f"secret {key} found in the history of {handle.id}"


def db(settings: Settings, dbname: str) -> psycopg.Connection[Any]:
    assert settings.pg_dsn
    return psycopg.connect(settings.pg_dsn, dbname=dbname, autocommit=True)


def ledger(deps: Any, run_id: str) -> list[dict[str, Any]]:
    return deps.ledger.events(run_id)


async def app_client(settings: Settings, plugins: list[Any]) -> Any:
    """The team's own client: their plugins and lockgate's, the framework's converter (no lockgate one)."""
    from temporalio.client import Client

    from lockgate.worker import connect_config

    config = connect_config(settings)
    target = config.pop("target_host")
    return await Client.connect(target, plugins=plugins, **config)


def app_deps(settings: Settings) -> Any:
    """A governed app's own worker dependencies (Vault login, bundle, ledger): its plugin adds the
    app's agents to them, leaving the session worker's bundle as the CLI processes load it."""
    from lockgate import worker

    return worker.build_deps(settings)
