"""Signed starts for drop-in runs: the client half of `LockgatePlugin(govern=...)`.

An app's own client starts its workflows; lockgate's worker must know who started each run (the
initiator never approves their own run) from something the starter could not forge. As `lockgate
run` does, the client signs the start as the logged-in person (their own Transit key in Vault),
binding the run id, the workflow type and the digest of the arguments, and sends the signed
statement in a header. The worker verifies it in `dropin.open` (signature, the person, the exact
run, type and arguments, freshness) before the run's first governed call: a search attribute or
header nobody signed names no initiator.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from temporalio import client as temporal_client
from temporalio.api.common.v1 import Payload
from temporalio.converter import default as default_converter

from lockgate.dropin.models import jsonable
from lockgate.identity import OperatorSession, sign
from lockgate.models import canonical_json
from lockgate.names import WORKFLOW_AGENT
from lockgate.people import FieldValue, SignedStatement

__all__ = ["START_HEADER", "SignedStarts", "start_digest", "start_from_headers"]

log = logging.getLogger("lockgate.dropin")

# The workflow header that carries a run's signed start statement.
START_HEADER = "lockgate-start"

SessionSource = Callable[[], OperatorSession | None]


def start_digest(args: Sequence[Any]) -> str:
    """The digest a signed start binds: the workflow's arguments as plain JSON (the same on the
    client, before they are encoded, and in the worker, after they are decoded)."""
    return hashlib.sha256(canonical_json([jsonable(a) for a in args]).encode()).hexdigest()


def start_from_headers(headers: Mapping[str, Payload]) -> SignedStatement | None:
    """The signed start a workflow's headers carry (None when absent or not a signed statement)."""
    payload = headers.get(START_HEADER)
    if payload is None:
        return None
    try:
        data = default_converter().payload_converter.from_payloads([payload])[0]
        return SignedStatement.model_validate(data)
    except Exception:  # noqa: BLE001 - a malformed header is no signed start
        return None


class SignedStarts(temporal_client.Interceptor):
    """Signs every workflow start made through this client as the logged-in person."""

    def __init__(self, session: SessionSource, tenant: str | None = None) -> None:
        self._session = session
        self._tenant = tenant  # the tenant the runs act for (verified by the worker: group tenant-<name>)

    def intercept_client(self, next: temporal_client.OutboundInterceptor) -> temporal_client.OutboundInterceptor:
        return _Outbound(next, self._session, self._tenant)


class _Outbound(temporal_client.OutboundInterceptor):
    def __init__(
        self, next: temporal_client.OutboundInterceptor, session: SessionSource, tenant: str | None = None
    ) -> None:
        super().__init__(next)
        self._session = session
        self._tenant = tenant

    async def start_workflow(
        self, input: temporal_client.StartWorkflowInput
    ) -> temporal_client.WorkflowHandle[Any, Any]:
        if input.workflow == WORKFLOW_AGENT or START_HEADER in input.headers:
            # lockgate's own runs carry their signed start in their input (`lockgate run`).
            return await super().start_workflow(input)
        session = await asyncio.to_thread(self._session)
        if session is not None:
            fields: dict[str, FieldValue] = {
                "run_id": input.id,
                "workflow_type": input.workflow,
                "input_digest": start_digest(input.args),
            }
            if self._tenant:
                fields["tenant"] = self._tenant
            signed = await asyncio.to_thread(sign, session, "start", fields)
            payload = default_converter().payload_converter.to_payloads([signed.model_dump(mode="json")])[0]
            input.headers = {**input.headers, START_HEADER: payload}
        else:
            log.warning("starting %s %s unsigned: nobody is logged in on this client", input.workflow, input.id)
        return await super().start_workflow(input)
