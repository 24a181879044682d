"""lockgate's LLM planner after a regulated MCP read: the next model request is egress. Without a
policy approving the model endpoint, the regulated result reaches the (fake, local) model redacted;
with one, as it is. Both decisions are in the ledger. The stack and servers are tests/test_mcp.py's."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import hvac
import pytest

from lockgate.gates.egress import REDACTED
from lockgate.testing import LocalStack
from tests.test_mcp import mcp_stack  # noqa: F401 - the module's stack (tests/test_mcp.py's fixture)


class FakeModel:
    """A chat-completions endpoint: asks for `bankhttp.lookup`, then answers; keeps every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.url = ""

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        if not any(m.get("role") == "tool" for m in body["messages"]):
            account = json.loads(body["messages"][1]["content"])["account"]
            call = {"name": "bankhttp__lookup", "arguments": json.dumps({"account": account, "confidence": 0.9})}
            return {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": call}],
            }
        return {"role": "assistant", "content": "done"}


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch, mcp_stack: LocalStack) -> Iterator[FakeModel]:  # noqa: F811
    fake = FakeModel()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append(body)
            payload = json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [{"index": 0, "message": fake.reply(body), "finish_reason": "stop"}],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    monkeypatch.setenv("LOCKGATE_LLM_BASE_URL", fake.url)
    settings = mcp_stack.settings()
    hvac.Client(url=settings.vault_addr, token=settings.vault_token).secrets.kv.v1.create_or_update_secret(
        path="worker/llm-test", secret={"api_key": "sk-test"}, mount_point="lockgate"
    )
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


async def ask(stack: LocalStack, account: str) -> dict[str, Any]:
    client = await stack.client()
    async with stack.worker(client):
        handle = await stack.start(client, "mcp-llm-teller", {"account": account}, run_id=f"llm-{uuid.uuid4().hex[:8]}")
        result = await asyncio.wait_for(handle.result(), timeout=90)
    return {"id": handle.id, "result": result}


def tool_messages(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m.get("role") == "tool"]


async def test_a_regulated_read_reaches_an_unapproved_model_redacted(mcp_stack: LocalStack, model: FakeModel) -> None:  # noqa: F811
    run = await ask(mcp_stack, "A-21")
    assert run["result"]["tainted"] is True
    assert len(model.requests) == 2
    [sent] = tool_messages(model.requests[1])
    assert REDACTED in sent
    assert "1000" not in sent and "balance of A-21" not in sent  # neither the text nor the structured value
    # What it is stays (server and tool), so the model can still finish.
    assert json.loads(sent)["tool"] == "lookup"
    egress = [e for e in mcp_stack.deps.ledger.events(run["id"]) if e["kind"] == "model.egress"]
    assert [(e["endpoint"], e["allowed"], e["redacted_steps"]) for e in egress] == [(model.url, False, [1])]


async def test_a_policy_approved_endpoint_gets_the_result(mcp_stack: LocalStack, model: FakeModel) -> None:  # noqa: F811
    approval = mcp_stack.policy_dir / "model.cedar"
    approval.write_text(
        '@id("model.approved-llm")\n'
        'permit (principal == Agent::"mcp-llm-teller", action == lockgate::Action::"model.send", '
        f'resource == Model::"{model.url}");\n'
    )
    try:
        assert mcp_stack.deps.reload_policies() == []
        run = await ask(mcp_stack, "A-22")
    finally:
        approval.unlink()
        assert mcp_stack.deps.reload_policies() == []
    [sent] = tool_messages(model.requests[1])
    assert "balance of A-22: 1000" in sent and REDACTED not in sent
    egress = [e for e in mcp_stack.deps.ledger.events(run["id"]) if e["kind"] == "model.egress"]
    assert [(e["allowed"], e["policy_ids"]) for e in egress] == [(True, ["model.approved-llm"])]
