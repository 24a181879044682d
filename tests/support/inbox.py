"""The inbox served in-process (uvicorn in a task of the session's loop) against the session's stack,
and a tiny webhook receiver, both on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.client import Client

from lockgate.config import Settings
from lockgate.inbox.app import Inbox, create_app
from tests.support.stack import _STACK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _serve(app: Any, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(
            # Live pages hold a stream open: a test that fails before closing its browser still stops.
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=3,
        )
    )
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.025)
    assert server.started, "the server did not start"
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


@contextlib.asynccontextmanager
async def served_inbox(
    settings: Settings, client: Client, *, webhooks: list[str] | None = None
) -> AsyncIterator[tuple[str, Inbox]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    inbox = Inbox(settings, client, webhooks=webhooks, base_url=base, notify_interval=0.3)
    async with _serve(create_app(inbox), port):
        yield base, inbox


class Receiver:
    """Collects webhook posts; `fail` answers 500 to everything (a broken receiver)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.tries = 0

    def app(self, *, fail: bool = False) -> Starlette:
        async def hook(request: Request) -> JSONResponse:
            self.tries += 1
            if fail:
                return JSONResponse({"ok": False}, status_code=500)
            self.posts.append(await request.json())
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@contextlib.asynccontextmanager
async def receiver(*, fail: bool = False) -> AsyncIterator[tuple[str, Receiver]]:
    port = free_port()
    rec = Receiver()
    async with _serve(rec.app(fail=fail), port):
        yield f"http://127.0.0.1:{port}/hook", rec


async def sign_in(http: httpx.AsyncClient, name: str) -> str:
    """Signs `name` in through the form (with the login CSRF token); returns the session's CSRF token."""
    page = await http.get("/login")
    token = login_csrf_of(page.text)
    resp = await http.post(
        "/login", data={"csrf": token, "username": name, "password": _STACK["LOCKGATE_DEV_PASSWORD"], "next": "/"}
    )
    assert resp.status_code == 303, resp.text
    home = await http.get("/?view=all")
    assert home.status_code == 200
    return csrf_of(home.text)


def login_csrf_of(html: str) -> str:
    """The sign-in form's own CSRF token (a signed-in page also has the session's, in its logout form)."""
    return csrf_of(html.split('action="/login"', 1)[1])


def csrf_of(html: str) -> str:
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


async def until(predicate: Any, timeout: float = 20, what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
