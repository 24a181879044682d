"""Reviewing a changed MCP tool in the inbox (`/mcp`): the blocked tool with the diff the worker saw,
and an approve-pin action for group operators only, pinning exactly the reviewed definition.
The stack and servers are tests/test_mcp.py's."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from temporalio.client import WorkflowFailureError

from lockgate.mcp import pins
from lockgate.testing import LocalStack
from tests.support.inbox import csrf_of, login_csrf_of, served_inbox
from tests.test_mcp import STATE, cli, effects, mcp_stack, run  # noqa: F401 - mcp_stack: the module's stack


async def sign_in(stack: LocalStack, http: httpx.AsyncClient, name: str) -> str:
    page = await http.get("/login")
    password = stack.env()["LOCKGATE_DEV_PASSWORD"]
    resp = await http.post(
        "/login", data={"csrf": login_csrf_of(page.text), "username": name, "password": password, "next": "/"}
    )
    assert resp.status_code == 303, resp.text
    return csrf_of((await http.get("/mcp")).text)


async def test_a_blocked_tool_is_reviewed_and_pinned_in_the_inbox(mcp_stack: LocalStack) -> None:  # noqa: F811
    client = await mcp_stack.client()
    policy_dir = mcp_stack.policy_dir
    (STATE / "bank" / "variant").write_text("v2")
    try:
        async with mcp_stack.worker(client):
            blocked = await run(mcp_stack, client, [{"tool": "bank.lookup", "args": {"account": "A-1"}}])
            with pytest.raises(WorkflowFailureError):
                await asyncio.wait_for(blocked.result(), timeout=60)
        before = pins.load_pin(policy_dir, "bank")
        assert before is not None
        async with served_inbox(mcp_stack.settings(), client) as (base, _inbox):
            async with httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=30) as anonymous:
                assert (await anonymous.get("/mcp")).status_code == 303  # sign in first
            async with httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=30) as http:
                csrf = await sign_in(mcp_stack, http, "mallory")
                page = (await http.get("/mcp")).text
                # The diff the worker saw: the pinned description against the one the server now gives.
                assert "bank.lookup" in page and "attacker.example" in page and blocked.id in page
                assert "bank.transfer" not in page  # unchanged tools are not listed
                assert 'action="/mcp/pin"' not in page  # mallory is not an operator
                [row] = [r for r in _blocked(mcp_stack) if r["tool"] == "lookup"]
                form = {"csrf": csrf, "server": "bank", "tool": "lookup", "digest": row["live_digest"]}
                refused = await http.post("/mcp/pin", data=form)
                assert refused.status_code == 403 and "not in group operators" in refused.text
                assert (await http.post("/mcp/pin", data={**form, "csrf": "forged"})).status_code == 403
                assert pins.load_pin(policy_dir, "bank") == before
            async with httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=30) as http:
                csrf = await sign_in(mcp_stack, http, "carol")
                assert 'action="/mcp/pin"' in (await http.get("/mcp")).text
                # A digest other than the reviewed, recorded one (the server changed again): refused.
                stale = await http.post("/mcp/pin", data={**form, "csrf": csrf, "digest": "sha256:" + "0" * 64})
                assert stale.status_code == 409 and pins.load_pin(policy_dir, "bank") == before
                ok = await http.post("/mcp/pin", data={**form, "csrf": csrf})
                assert ok.status_code == 200 and "carol pinned bank.lookup" in ok.text
                assert "No MCP tool is blocked" in (await http.get("/mcp")).text
        after = pins.load_pin(policy_dir, "bank")
        assert after is not None and after["pinned_by"] == "carol (inbox)"
        assert after["tools"]["lookup"]["digest"] == row["live_digest"] != before["tools"]["lookup"]["digest"]
        assert after["tools"]["transfer"] == before["tools"]["transfer"]  # the other tools keep their pins
        assert "attacker.example" in json.dumps(after["tools"]["lookup"]["definition"])
        # The tool runs again, under the definition carol approved.
        done = len(effects("bank"))
        async with mcp_stack.worker(client):
            again = await run(mcp_stack, client, [{"tool": "bank.lookup", "args": {"account": "A-1"}}])
            await asyncio.wait_for(again.result(), timeout=60)
        assert [e["tool"] for e in effects("bank")[done:]] == ["lookup"]
    finally:
        (STATE / "bank" / "variant").write_text("v1")
        assert cli(mcp_stack, "mcp", "pin", "bank").returncode == 0


def _blocked(stack: LocalStack) -> list[dict[str, object]]:
    ledger = stack.deps.ledger
    return [e for r in ledger.run_ids_with("mcp.blocked") for e in ledger.events(r, kind="mcp.blocked")]
