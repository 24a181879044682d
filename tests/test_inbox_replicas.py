"""Two inbox replicas on one PostgreSQL behave as one inbox (issue 29.2): a session made on one is
served by the other, survives a restart and ends everywhere at sign-out; a notification goes out
once whatever the number of replicas; sign-in failures count across replicas. And a session row
written straight into the database by someone without the browser's cookie signs nobody in."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import hvac
import pytest
from sqlalchemy import text
from temporalio.client import Client

from lockgate.config import Settings
from lockgate.inbox.app import COOKIE, Inbox, create_app
from lockgate.inbox.state import SESSIONS, InboxState, seal_session, session_hash
from tests.support.inbox import _serve, csrf_of, free_port, login_csrf_of, receiver, sign_in, until
from tests.support.pgdb import fresh_database
from tests.support.stack import finish, pending_request, person, start

REFUND = {"order_id": "A-1002", "amount_cents": 25000}


@pytest.fixture
def shared(settings: Settings) -> Iterator[Settings]:
    """The session's settings with a ledger database of this test's own on PostgreSQL."""
    with fresh_database(settings, "inbox") as (_name, url):
        yield settings.model_copy(update={"ledger_url": url})


@contextlib.asynccontextmanager
async def replica(settings: Settings, client: Client, **kwargs: Any) -> AsyncIterator[tuple[str, Inbox]]:
    """One inbox process's worth of state (its own memory, its own engine) on `settings`' database."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    inbox = Inbox(settings, client, base_url=base, notify_interval=0.3, **kwargs)
    try:
        async with _serve(create_app(inbox), port):
            yield base, inbox
    finally:
        inbox.state.dispose()


def _http(base: str, cookie: str | None = None) -> httpx.AsyncClient:
    http = httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=30)
    if cookie:
        http.cookies.set(COOKIE, cookie, domain="127.0.0.1")
    return http


def _sid(http: httpx.AsyncClient) -> str:
    value = next(c for c in http.cookies.jar if c.name == COOKIE).value
    assert value is not None
    return value


async def _signs_in(base: str, cookie: str) -> bool:
    """Whether the inbox at `base` serves a page to the holder of `cookie` (else: sign in first)."""
    async with _http(base, cookie) as http:
        page = await http.get("/?view=all")
        if page.status_code == 303:
            assert page.headers["location"].startswith("/login")
            return False
        assert page.status_code == 200, page.text
        return True


async def test_a_session_made_on_one_replica_is_served_by_the_other_and_survives_a_restart(
    shared: Settings, client: Client
) -> None:
    async with replica(shared, client) as (base_a, a), replica(shared, client) as (base_b, b):
        async with _http(base_a) as http:
            await sign_in(http, "alice")
            cookie = _sid(http)
        assert cookie in a.sessions and cookie not in b.sessions  # separate memory
        async with _http(base_b, cookie) as http:
            page = await http.get("/?view=all")
            assert page.status_code == 200 and "alice" in page.text
            # The CSRF token B puts in its forms is the one A would accept: derived from the cookie.
            assert csrf_of(page.text) == a.sessions[cookie].csrf
        assert b.sessions[cookie].person.name == "alice"
        token = b.sessions[cookie].person.token
    # Both replicas stopped: nobody was signed out, the token is still alive.
    assert hvac.Client(url=shared.vault_addr, token=token).is_authenticated()
    async with replica(shared, client) as (base_c, _c), replica(shared, client) as (base_d, _d):
        async with _http(base_c, cookie) as http:
            page = await http.get("/?view=all")
            assert page.status_code == 200 and "alice" in page.text
            # Sign-out on C ends the session on D too, and revokes the token.
            out = await http.post("/logout", data={"csrf": csrf_of(page.text)})
            assert out.status_code == 303
        async with _http(base_d, cookie) as http:
            assert (await http.get("/?view=all")).status_code == 303
    assert not hvac.Client(url=shared.vault_addr, token=token).is_authenticated()


async def test_a_session_row_written_without_the_cookie_signs_nobody_in(shared: Settings, client: Client) -> None:
    """Attacked by someone who may write the inbox's tables but holds no one's cookie."""
    async with replica(shared, client) as (base, inbox):
        async with _http(base) as http:
            await sign_in(http, "alice")
            alice_cookie = _sid(http)
        state: InboxState = inbox.state
        alice_row = await asyncio.to_thread(state.session, session_hash(alice_cookie))
        assert alice_row is not None
        # The row holds no token and no cookie: only the cookie's hash and the sealed token.
        with state.engine.connect() as conn:
            stored = " ".join(str(v) for v in conn.execute(text("SELECT * FROM inbox_sessions")).first() or ())
        assert alice_cookie not in stored and person("alice").token not in stored
        assert inbox.sessions[alice_cookie].person.token not in stored

        def write(row: Any) -> None:
            with state.engine.begin() as conn:
                conn.execute(SESSIONS.insert().values(**row.__dict__, created_at=time.time()))

        # 1. Alice's sealed token copied under the attacker's own cookie: it does not open.
        mine = f"attacker-{uuid.uuid4().hex}"
        await asyncio.to_thread(write, alice_row.__class__(**{**alice_row.__dict__, "sid_hash": session_hash(mine)}))
        assert not await _signs_in(base, mine)
        # 2. The attacker's own (bob's) token sealed under alice's name: Vault says whose it is.
        bob = person("bob")
        forged = f"attacker-{uuid.uuid4().hex}"
        row = seal_session(
            forged,
            bob.token,
            person="alice",
            entity_id=alice_row.entity_id,
            method="userpass",
            expires_at=alice_row.expires_at,
        )
        await asyncio.to_thread(write, row)
        assert not await _signs_in(base, forged)
        # 3. A row with a made-up hash and garbage: nothing.
        junk = alice_row.__class__(**{**alice_row.__dict__, "sid_hash": session_hash("x"), "sealed": "AAAA"})
        await asyncio.to_thread(write, junk)
        assert not await _signs_in(base, "x")
        # 4. Alice's own row with its expiry pushed out: it no longer opens (the expiry is bound).
        with state.engine.begin() as conn:
            conn.execute(
                SESSIONS.update()
                .where(SESSIONS.c.sid_hash == alice_row.sid_hash)
                .values(expires_at=(alice_row.expires_at or 0) + 86400)
            )
        inbox.sessions.clear()  # a replica that never opened it
        assert not await _signs_in(base, alice_cookie)
    # A different cookie value, an unknown one, a hash used as the cookie: no session either.
    async with replica(shared, client) as (base2, _inbox2):
        assert not await _signs_in(base2, alice_row.sid_hash)


async def test_sign_in_failures_count_across_replicas(shared: Settings, client: Client) -> None:
    async with replica(shared, client) as (base_a, a), replica(shared, client) as (base_b, b):
        assert a.throttle.max_per_account == 3 and b.throttle.max_per_account == 3
        account = f"nobody-{uuid.uuid4().hex[:6]}"

        async def attempt(base: str) -> int:
            async with _http(base) as http:
                page = await http.get("/login")
                resp = await http.post(
                    "/login",
                    data={"csrf": login_csrf_of(page.text), "username": account, "password": "guess", "next": "/"},
                )
                return resp.status_code

        codes = [await attempt(base_a), await attempt(base_b), await attempt(base_a), await attempt(base_b)]
        assert codes == [401, 401, 401, 429], codes
        assert (await attempt(base_a)) == 429


async def test_a_notification_goes_out_once_with_two_replicas(
    shared: Settings, client: Client, worker_running: str
) -> None:
    async with receiver() as (url, rec), receiver(fail=True) as (bad_url, _bad):
        hooks = [url, bad_url]
        async with (
            replica(shared, client, webhooks=hooks) as (base_a, a),
            replica(shared, client, webhooks=hooks) as (base_b, b),
        ):

            async def seeded() -> bool:
                return a.notifier._known is not None and b.notifier._known is not None  # pyright: ignore[reportPrivateUsage]

            await until(seeded, what="both notifiers' first listing")
            handle = await start(client, worker_running, "refund-agent", REFUND)
            req = await pending_request(handle)

            def posts(event: str) -> list[dict[str, Any]]:
                return [
                    p
                    for p in rec.posts
                    if p["event"]["event"] == event
                    and p["event"]["link"].endswith(f"/runs/{handle.id}/requests/{req.request_id}")
                ]

            async def opened() -> bool:
                return bool(posts("request.opened"))

            await until(opened, what="the opened notification")
            from lockgate.ops import send_verdict

            await send_verdict(client, handle.id, req.request_id, session=person("alice"), approve=True, reason="ok")
            assert await finish(handle) is None

            async def closed() -> bool:
                return bool(posts("request.closed"))

            await until(closed, what="the closed notification")
            await asyncio.sleep(1.5)  # both replicas polled several times more
            assert len(posts("request.opened")) == 1 and len(posts("request.closed")) == 1, rec.posts
            assert a.notifier.delivered + b.notifier.delivered == 2
            bad_host = bad_url.split("://", 1)[1].split("/", 1)[0]

            async def recorded() -> list[dict[str, Any]]:
                rows = await asyncio.to_thread(a.state.notifications, handle.id)
                return rows if len(rows) == 2 and all(r["status"] == "failed" for r in rows) else []

            rows = await until(recorded, timeout=30, what="both deliveries recorded")
            assert sorted(r["event"] for r in rows) == ["ended", "opened"]
            assert all(bad_host in r["detail"] and "HTTP 500" in r["detail"] for r in rows), rows
            assert all("/hook" not in r["detail"] for r in rows)  # a webhook's URL is its secret
            # The failure shows to an operator on either replica, whichever one sent it.
            for base in (base_a, base_b):
                async with _http(base) as http:
                    await sign_in(http, "carol")
                    page = (await http.get("/queue?view=all")).text
                    assert "Notification deliveries failed" in page and f"to {bad_host}: HTTP 500" in page, base
                    assert "/hook" not in page


async def test_signing_out_ends_that_session_only(shared: Settings, client: Client) -> None:
    """A sign-out removes its own session row, on every replica, and nobody else's."""
    async with replica(shared, client) as (base_a, a), replica(shared, client) as (base_b, _b):
        async with _http(base_a) as alice, _http(base_a) as bob:
            await sign_in(alice, "alice")
            await sign_in(bob, "bob")
            alice_sid, bob_sid = _sid(alice), _sid(bob)
            csrf = csrf_of((await alice.get("/")).text)
            assert (await alice.post("/logout", data={"csrf": csrf})).status_code == 303
        assert not await _signs_in(base_b, alice_sid)
        assert a.state.session(session_hash(alice_sid)) is None  # the row is gone, not just its token
        assert a.state.session(session_hash(bob_sid)) is not None
        assert await _signs_in(base_b, bob_sid)
        assert await _signs_in(base_a, bob_sid)


def test_the_shared_throttle_counts_each_key_apart(shared: Settings) -> None:
    """Each account's and address's failures are counted, forgiven and forgotten by that key only,
    and a refused attempt waits out that key's own window."""
    from lockgate.inbox.state import SqlThrottleStore

    state = InboxState(shared.ledger_url)
    try:
        store = SqlThrottleStore(state)
        tag = uuid.uuid4().hex[:6]
        busy, old, other = f"busy-{tag}", f"old-{tag}", f"other-{tag}"
        now = time.time()
        assert store.hit(old, 3, 60, now - 50) is None  # another key, last failing 50 s ago
        for _ in range(3):
            assert store.hit(busy, 3, 60, now) is None
        wait = store.hit(busy, 3, 60, now + 10)
        assert wait is not None and abs(wait - 50) < 0.01, wait  # busy's own last failure, not old's
        assert store.hit(other, 3, 60, now) is None
        store.undo(other)  # that attempt succeeded: taken back, and only that one
        assert store.count(other) == 0 and store.count(busy) == 3 and store.count(old) == 1
        store.clear(old)  # old's account signed in: its failures forgotten, nobody else's
        assert store.count(old) == 0 and store.count(busy) == 3
        assert store.hit(busy, 3, 60, now + 20) is not None
        store.clear(busy)
        assert store.hit(busy, 3, 60, now + 20) is None
    finally:
        state.dispose()
