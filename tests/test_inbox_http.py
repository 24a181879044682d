"""The inbox over HTTP on the session's real stack: sign-in, sessions, CSRF, escaping, verdicts,
halt, kill switch and webhook notifications (the browser test drives the same pages in Chromium)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import hvac
import pytest
from markupsafe import escape
from temporalio.client import Client

from lockgate.config import Settings
from lockgate.ops import send_verdict
from tests.support.inbox import (
    csrf_of,
    free_port,
    login_csrf_of,
    receiver,
    served_inbox,
    sign_in,
    until,
)
from tests.support.stack import ROOT, finish, pending_request, person, start, status_of
from tests.support.vault import read_data

REFUND = {"order_id": "A-1002", "amount_cents": 25000}
HOSTILE = "<script>alert('pwned')</script><img src=x onerror=alert(1)>"


def _sid(http: httpx.AsyncClient) -> str:
    """The value of the session cookie the client holds."""
    value = next(c for c in http.cookies.jar if c.name == "lockgate_sid").value
    assert value is not None
    return value


def _http(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=30)


async def test_unauthenticated_requests_go_to_sign_in(settings: Settings, client: Client) -> None:
    async with served_inbox(settings, client) as (base, _inbox), _http(base) as http:
        for path in ("/", "/runs/some-run", "/runs/some-run/requests/1.1", "/freeze"):
            resp = await http.get(path)
            assert resp.status_code == 303, path
            assert resp.headers["location"].startswith("/login?next=%2F"), resp.headers["location"]
        posted = await http.post("/runs/some-run/requests/1.1", data={"decision": "approve"})
        assert posted.status_code == 303 and posted.headers["location"].startswith("/login")
        assert (await http.get("/queue")).status_code == 401
        login = await http.get("/login")
        assert "default-src 'none'" in login.headers["content-security-policy"]
        assert login.headers["x-frame-options"] == "DENY"


async def test_sign_in_keeps_the_vault_token_server_side(settings: Settings, client: Client) -> None:
    async with served_inbox(settings, client) as (base, inbox), _http(base) as http:
        page = await http.get("/login")
        wrong = await http.post(
            "/login", data={"csrf": login_csrf_of(page.text), "username": "alice", "password": "not-it", "next": "/"}
        )
        assert wrong.status_code == 401 and "login failed for alice" in wrong.text
        no_csrf = await http.post("/login", data={"username": "alice", "password": "x"})
        assert no_csrf.status_code == 403

        await sign_in(http, "alice")
        cookie = next(c for c in http.cookies.jar if c.name == "lockgate_sid")
        assert cookie.value is not None
        web = inbox.sessions[cookie.value]
        assert web.person.name == "alice" and "finance" in web.person.groups
        assert web.person.token not in cookie.value
        raw = (await http.get("/?view=all")).text
        assert web.person.token not in raw and "alice" in raw

        # The cookie's attributes, as the server set them.
        page = await http.get("/login")
        resp = await http.post(
            "/login",
            data={"csrf": login_csrf_of(page.text), "username": "alice", "password": inbox_password(), "next": "/"},
        )
        set_cookie = resp.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
        # Signing in again replaced the first session: it is gone and its token revoked.
        assert cookie.value not in inbox.sessions
        assert not hvac.Client(url=settings.vault_addr, token=web.person.token).is_authenticated()

        # Logout revokes the person's Vault token and ends the session.
        second = inbox.sessions[_sid(http)]
        token = second.person.token
        assert hvac.Client(url=settings.vault_addr, token=token).is_authenticated()
        csrf = csrf_of((await http.get("/")).text)
        out = await http.post("/logout", data={"csrf": csrf})
        assert out.status_code == 303
        assert second.sid not in inbox.sessions
        assert not hvac.Client(url=settings.vault_addr, token=token).is_authenticated()
        assert (await http.get("/")).status_code == 303


async def test_a_sign_in_needs_its_own_csrf_pair_and_leads_only_to_this_site(
    settings: Settings, client: Client
) -> None:
    async with served_inbox(settings, client) as (base, _inbox), _http(base) as http:
        creds = {"username": "alice", "password": inbox_password(), "next": "/"}
        token = login_csrf_of((await http.get("/login")).text)
        # The form's token without the cookie it came with (posted from another browser)...
        async with _http(base) as other:
            assert (await other.post("/login", data={**creds, "csrf": token})).status_code == 403
        # ...the cookie without the token, and a token that is not the cookie's.
        assert (await http.post("/login", data=creds)).status_code == 403
        assert (await http.post("/login", data={**creds, "csrf": token[::-1]})).status_code == 403

        # Where a sign-in may lead: a path on this site, nothing a browser reads as another host.
        hostile = (
            "https://evil.example/",
            "//evil.example/x",
            "/\\evil.example",
            "\\\\evil.example",
            "/ok//evil.example",
            "javascript:alert(1)",
            "evil.example",
        )
        for nxt in hostile:
            page = await http.get("/login")
            resp = await http.post("/login", data={**creds, "csrf": login_csrf_of(page.text), "next": nxt})
            assert resp.status_code == 303 and resp.headers["location"] == "/", (nxt, resp.headers.get("location"))
        page = await http.get("/login")
        resp = await http.post("/login", data={**creds, "csrf": login_csrf_of(page.text), "next": "/runs/r-1?view=all"})
        assert resp.status_code == 303 and resp.headers["location"] == "/runs/r-1?view=all"


async def test_stopping_the_inbox_signs_nobody_out(settings: Settings, client: Client) -> None:
    """Sessions live in the shared state (issue 29.2): a stopped (restarted, rolled) inbox forgets
    its cache but ends no session; sign-out does (tests/test_inbox_replicas.py covers replicas)."""
    async with served_inbox(settings, client) as (base, inbox), _http(base) as http:
        await sign_in(http, "bob")
        (web,) = inbox.sessions.values()
        token, cookie = web.person.token, web.sid
        assert hvac.Client(url=settings.vault_addr, token=token).is_authenticated()
    assert inbox.sessions == {}
    assert hvac.Client(url=settings.vault_addr, token=token).is_authenticated()
    async with served_inbox(settings, client) as (base, again), _http(base) as http:
        http.cookies.set("lockgate_sid", cookie, domain="127.0.0.1")
        page = await http.get("/?view=all")
        assert page.status_code == 200 and again.sessions[cookie].person.name == "bob"
        assert (await http.post("/logout", data={"csrf": csrf_of(page.text)})).status_code == 303
    assert not hvac.Client(url=settings.vault_addr, token=token).is_authenticated()


def inbox_password() -> str:
    from tests.support.stack import _STACK

    return _STACK["LOCKGATE_DEV_PASSWORD"]


async def test_a_session_ends_when_the_persons_vault_token_expires(settings: Settings, client: Client) -> None:
    """A signed-in page reads nothing with the person's own token (the queue comes from the inbox's
    Temporal client), so only the session's expiry check stops a browser whose person's Vault token
    has expired: bob's token is made short-lived in Vault itself; once Vault has expired it, his
    browser is sent to sign in again, the session is gone and the queue answers 401."""
    root = hvac.Client(url=settings.vault_addr, token=settings.vault_token)
    user = "auth/userpass/users/bob"
    ttl = 6
    root.write_data(user, data={"token_ttl": f"{ttl}s"})
    try:
        async with served_inbox(settings, client) as (base, inbox), _http(base) as http:
            await sign_in(http, "bob")
            sid = _sid(http)
            web = inbox.sessions[sid]
            assert web.person.expires_at is not None
            assert web.person.expires_at <= datetime.now(UTC) + timedelta(seconds=ttl)
            assert (await http.get("/?view=all")).status_code == 200
            assert (await http.get("/queue")).status_code == 200

            # A live queue opened before the expiry stops streaming once the token has expired
            # (its session was resolved when the stream opened; the stream checks it each round).
            async def live_until_closed() -> datetime:
                async with http.stream("GET", "/queue/events") as stream:
                    assert stream.status_code == 200
                    async for _chunk in stream.aiter_bytes():
                        pass
                return datetime.now(UTC)

            closed = await asyncio.wait_for(live_until_closed(), timeout=ttl + 20)
            assert closed >= web.person.expires_at
            await asyncio.sleep(max(0.0, (web.person.expires_at - datetime.now(UTC)).total_seconds()) + 1)
            assert not hvac.Client(url=settings.vault_addr, token=web.person.token).is_authenticated()
            for path in ("/?view=all", "/runs/some-run", "/freeze"):
                resp = await http.get(path)
                assert resp.status_code == 303 and resp.headers["location"].startswith("/login"), (path, resp)
            assert (await http.get("/queue")).status_code == 401
            assert sid not in inbox.sessions
    finally:
        root.write_data(user, data={"token_ttl": "1h"})
    assert read_data(root, user)["token_ttl"] == 3600


async def test_a_post_without_the_csrf_token_changes_nothing(
    settings: Settings, client: Client, worker_running: str
) -> None:
    handle = await start(client, worker_running, "refund-agent", REFUND)
    req = await pending_request(handle)
    async with served_inbox(settings, client) as (base, _inbox), _http(base) as http:
        await sign_in(http, "alice")
        url = f"/runs/{handle.id}/requests/{req.request_id}"
        for data in ({"decision": "approve"}, {"decision": "approve", "csrf": "forged"}):
            resp = await http.post(url, data=data)
            assert resp.status_code == 403 and "CSRF" in resp.text
        assert (await pending_request(handle)).approvals == ()
        await handle.cancel()


async def test_queue_views_and_filters(settings: Settings, client: Client, worker_running: str) -> None:
    handle = await start(client, worker_running, "refund-agent", REFUND)
    await pending_request(handle)
    async with served_inbox(settings, client) as (base, _inbox):
        views: dict[str, dict[str, bool]] = {}
        for name in ("alice", "erin", "carol"):
            async with _http(base) as http:
                await sign_in(http, name)
                views[name] = {
                    view: handle.id in (await http.get(f"/queue?view={view}")).text
                    for view in ("mine", "groups", "all")
                }
                if name == "alice":
                    only = (await http.get("/queue?view=all&agent=refund-agent&tool=refunds.issue")).text
                    other = (await http.get("/queue?view=all&tool=customer.notify")).text
                    assert handle.id in only and handle.id not in other
        assert views["alice"] == {"mine": True, "groups": True, "all": True}
        assert views["erin"] == {"mine": False, "groups": False, "all": True}  # her own run, no group
        assert views["carol"] == {"mine": False, "groups": False, "all": True}  # support-leads, not finance
    await handle.cancel()


async def test_hostile_text_is_escaped_and_a_refused_attempt_says_why(
    settings: Settings, client: Client, worker_running: str
) -> None:
    handle = await start(client, worker_running, "refund-agent", {**REFUND, "reason": HOSTILE})
    req = await pending_request(handle)
    url = f"/runs/{handle.id}/requests/{req.request_id}"
    async with served_inbox(settings, client) as (base, _inbox):
        async with _http(base) as http:
            await sign_in(http, "mallory")
            card = await http.get(url)
            assert card.status_code == 200
            assert HOSTILE not in card.text and "<script>alert" not in card.text
            # mallory may not read payloads: the arguments are withheld from her (issue 27).
            assert "pwned" not in card.text and "payload withheld: requires group auditors" in card.text
            assert req.args_digest in card.text and "refund-agent" in card.text
            # The card offers mallory no form (the run would refuse her); a crafted POST is refused by the run.
            assert 'id="approve"' not in card.text and "mallory is not in group finance" in card.text
            refused = await http.post(
                url,
                data={
                    "csrf": csrf_of(card.text),
                    "decision": "approve",
                    "args_digest": req.args_digest,
                    "reason": "r",
                    "confirm": "yes",
                },
            )
            assert refused.status_code == 303  # post/redirect/get: the answer is on the card
            refused = await http.get(refused.headers["location"])
            assert "Refused:" in refused.text and "mallory" in refused.text  # the run's own reason
        async with _http(base) as http:
            await sign_in(http, "bob")
            card = await http.get(url)
            assert HOSTILE not in card.text and "<script>alert" not in card.text
            # Shown to a reader, as text (markupsafe's escaping: &lt; &gt; &#39; &#34; &amp;).
            assert str(escape(HOSTILE)) in card.text and "&lt;script&gt;alert(&#39;pwned&#39;)" in card.text
            rejected = await http.post(
                url,
                data={
                    "csrf": csrf_of(card.text),
                    "decision": "reject",
                    "reason": HOSTILE,
                    "args_digest": req.args_digest,
                },
            )
            assert rejected.status_code == 303, rejected.text
            rejected = await http.get(rejected.headers["location"])
            assert "Your rejection was recorded" in rejected.text
            assert await finish(handle) is not None
            run = await http.get(f"/runs/{handle.id}")
            assert run.status_code == 200
            assert "<script>alert" not in run.text and "&lt;script&gt;" in run.text
            assert "REFUSED approve attempt by mallory" in run.text


async def test_approve_halt_and_kill_switch(settings: Settings, client: Client, worker_running: str) -> None:
    handle = await start(client, worker_running, "refund-agent", REFUND)
    req = await pending_request(handle)
    url = f"/runs/{handle.id}/requests/{req.request_id}"
    async with served_inbox(settings, client) as (base, _inbox):
        async with _http(base) as http:
            await sign_in(http, "alice")
            card = await http.get(url)
            assert "0 of 1 from finance" in card.text
            data = {"csrf": csrf_of(card.text), "decision": "approve", "reason": "ok", "args_digest": req.args_digest}
            # refunds.issue is a production action: approving it needs the confirmation and a reason.
            for missing in ({**data, "confirm": "no"}, {**data, "reason": " ", "confirm": "yes"}):
                assert (await http.post(url, data=missing)).status_code == 400
            assert (await pending_request(handle)).approvals == ()
            ok = await http.post(url, data={**data, "confirm": "yes"})
            assert ok.status_code == 303
            ok = await http.get(ok.headers["location"])
            assert ok.status_code == 200 and "Your approval was recorded" in ok.text
            assert await finish(handle) is None
            assert (await status_of(handle)).state == "completed"
            # A non-operator cannot halt or freeze.
            other = await start(client, worker_running, "refund-agent", REFUND)
            await pending_request(other)
            page = await http.get(f"/runs/{other.id}")
            assert 'id="halt"' not in page.text
            refused = await http.post(f"/runs/{other.id}/halt", data={"csrf": csrf_of(page.text)})
            assert refused.status_code == 403
            frz = await http.post(
                "/freeze", data={"csrf": csrf_of(page.text), "scope": "report-agent", "action": "freeze"}
            )
            assert frz.status_code == 403
        async with _http(base) as http:
            await sign_in(http, "carol")
            page = await http.get(f"/runs/{other.id}")
            assert 'id="halt"' in page.text
            # A halt needs a reason and the confirmation.
            for missing in ({"reason": "test"}, {"reason": "", "confirm": "yes"}):
                nope = await http.post(f"/runs/{other.id}/halt", data={"csrf": csrf_of(page.text), **missing})
                assert nope.status_code == 400 and "needs a reason" in nope.text
            assert (await status_of(other)).state == "awaiting_approval"
            halted = await http.post(
                f"/runs/{other.id}/halt", data={"csrf": csrf_of(page.text), "reason": "test", "confirm": "yes"}
            )
            assert halted.status_code == 303
            halted = await http.get(halted.headers["location"])
            assert halted.status_code == 200 and "halt sent by carol" in halted.text
            assert await finish(other) is not None
            assert (await status_of(other)).state == "halted"
            freeze_page = (await http.get("/freeze")).text
            assert '<option value="" selected disabled>' in freeze_page  # the scope has no default
            drill = {"csrf": csrf_of(page.text), "scope": "report-agent", "action": "freeze", "reason": "drill"}
            for missing in (drill, {**drill, "reason": "", "confirm": "yes"}, {**drill, "scope": "", "confirm": "yes"}):
                assert (await http.post("/freeze", data=missing)).status_code == 400
            assert "FROZEN" not in (await http.get("/freeze")).text
            frz = await http.post("/freeze", data={**drill, "confirm": "yes"})
            assert frz.status_code == 303
            frz = await http.get(frz.headers["location"])
            assert frz.status_code == 200 and "carol froze report-agent" in frz.text
            assert "FROZEN" in frz.text
            un = await http.post(
                "/freeze",
                data={
                    "csrf": csrf_of(page.text),
                    "scope": "report-agent",
                    "action": "unfreeze",
                    "reason": "drill over",
                    "confirm": "yes",
                },
            )
            assert un.status_code == 303
            un = await http.get(un.headers["location"])
            assert un.status_code == 200 and "carol unfroze report-agent" in un.text
            assert "FROZEN" not in un.text


async def test_webhooks_announce_open_and_close_and_failures_show(
    settings: Settings, client: Client, worker_running: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with receiver() as (good_url, good), receiver(fail=True) as (bad_url, bad):
        async with served_inbox(settings, client, webhooks=[good_url, f"slack:{good_url}", bad_url]) as (base, inbox):
            await until(lambda: _seeded(inbox), what="the notifier's first listing")
            handle = await start(client, worker_running, "refund-agent", {**REFUND, "reason": HOSTILE})
            req = await pending_request(handle)

            async def opened() -> list[dict[str, Any]]:
                return [p for p in good.posts if handle.id in p["text"] and "waits for approval" in p["text"]]

            posts = await until(opened, what="the opened notification")
            await until(lambda: _count(opened, 2), what="both formats")
            plain = next(p for p in posts if "event" in p)
            slack = next(p for p in posts if "event" not in p)
            link = f"{base}/runs/{handle.id}/requests/{req.request_id}"
            assert plain["event"]["event"] == "request.opened" and plain["event"]["link"] == link
            assert plain["event"]["request"]["args_digest"] == req.args_digest
            assert slack["blocks"][1]["elements"][0]["url"] == link and f"<{link}|" in slack["text"]
            assert "<script>" not in slack["text"]  # Slack mrkdwn: no links or mentions from agent text
            # The card's summary: key args as the tool declares them, risk labels, the deadline.
            summary = plain["event"]["summary"]
            assert summary["args"]["amount_cents"] == "250.00 EUR" and summary["risk"] == ["production"]
            assert summary["deadline"] == req.expires_at.isoformat() and summary["tool"] == "refunds.issue"
            assert "250.00 EUR" in slack["text"] and "[production]" in slack["text"]
            assert slack["blocks"][1]["elements"][0]["text"]["text"] == "Open the card to decide"

            await _verdict(base, "alice", handle.id, req.request_id, req.args_digest)
            assert await finish(handle) is None

            async def closed() -> list[dict[str, Any]]:
                return [p for p in good.posts if p.get("event", {}).get("event") == "request.approved"]

            (done,) = await until(closed, what="the approved notification")
            assert done["event"]["request"]["run_id"] == handle.id and done["event"]["by"] == ["alice"]
            assert "was approved by alice" in done["text"]

            # The broken receiver was tried with backoff, and the failure is visible in the inbox:
            # to operators, by host (a webhook's URL is its secret: never on a page or in a log).
            await until(lambda: _failed(inbox), timeout=30, what="the delivery failure")
            assert bad.tries >= 4
            bad_host = bad_url.split("://", 1)[1].split("/", 1)[0]
            assert any(
                r.name == "lockgate.inbox"
                and "failed after 4 tries" in r.getMessage()
                and f"to {bad_host} failed" in r.getMessage()
                and r.getMessage().endswith(": HTTP 500 Internal Server Error")
                for r in caplog.records
            )
            assert not [r.getMessage() for r in caplog.records if "/hook" in r.getMessage()]
            async with _http(base) as http:
                await sign_in(http, "alice")  # an approver, not an operator
                page = (await http.get("/queue?view=all")).text
                assert "Notification deliveries failed" not in page and "/hook" not in page
            async with _http(base) as http:
                await sign_in(http, "carol")  # an operator
                page = (await http.get("/queue?view=all")).text
                assert "Notification deliveries failed" in page and f"to {bad_host}: HTTP 500" in page
                assert "/hook" not in page


async def test_an_expired_request_is_announced_and_the_card_links_to_temporal(
    settings: Settings, client: Client, worker_running: str
) -> None:
    # script-agent's approval requests expire after 8 s; its owner is bob.
    steps = {"steps": [{"tool": "refunds.issue", "args": {"order_id": "A-1002", "amount_cents": 30000}}]}
    with_ui = settings.model_copy(update={"ui_address": "127.0.0.1:8233"})
    async with receiver() as (url, rec), served_inbox(with_ui, client, webhooks=[url]) as (base, inbox):
        await until(lambda: _seeded(inbox), what="the notifier's first listing")
        handle = await start(client, worker_running, "script-agent", steps)
        req = await pending_request(handle)
        async with _http(base) as http:
            await sign_in(http, "bob")
            card = (await http.get(f"/runs/{handle.id}/requests/{req.request_id}")).text
            link = f"http://127.0.0.1:8233/namespaces/{settings.namespace}/workflows/{handle.id}"
            assert f'href="{link}"' in card
            assert "owner bob" in card and "At expiry the step is refused" in card
            assert all(p in card for p in req.policy_ids)
            mine = (await http.get("/queue?view=mine")).text
            assert handle.id not in mine  # bob owns script-agent: never an approver of its runs
        assert await finish(handle) is not None

        async def expired() -> list[dict[str, Any]]:
            return [p for p in rec.posts if p["event"]["event"] == "request.expired"]

        (post,) = await until(expired, what="the expiry notification")
        assert post["event"]["request"]["run_id"] == handle.id and "expired without a decision" in post["text"]


async def test_quorum_progress_and_who_it_still_waits_on(
    settings: Settings, client: Client, worker_running: str
) -> None:
    # accounts.close needs 2 of support-leads; script-agent's requests expire after 8 s, so both
    # people are signed in before the run starts.
    steps = {"steps": [{"tool": "accounts.close", "args": {"customer_id": "C-501", "reason": "customer asked"}}]}
    async with served_inbox(settings, client) as (base, _inbox), _http(base) as carol, _http(base) as dave:
        await sign_in(carol, "carol")
        await sign_in(dave, "dave")
        handle = await start(client, worker_running, "script-agent", steps)
        req = await pending_request(handle)
        assert (req.group, req.quorum) == ("support-leads", 2)
        first = await send_verdict(client, handle.id, req.request_id, session=person("carol"), approve=True)
        assert first.accepted
        card = (await dave.get(f"/runs/{handle.id}/requests/{req.request_id}")).text
        assert "1 of 2 from support-leads: carol ✔" in card
        assert "irreversible" in card
        assert handle.id in (await dave.get("/queue?view=mine")).text
        assert handle.id not in (await carol.get("/queue?view=mine")).text  # her approval is in
        assert handle.id in (await carol.get("/queue?view=groups")).text
        assert await finish(handle) is not None  # nobody else approved: it expired


async def test_lockgate_inbox_serves_the_app(env: dict[str, str]) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lockgate.cli",
        "inbox",
        "--port",
        str(port),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with _http(f"http://127.0.0.1:{port}") as http:

            async def up() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(up, timeout=30, what="lockgate inbox to listen")
            assert (await http.get("/")).headers["location"] == "/login?next=%2F"
            await sign_in(http, "dave")
            assert "Nothing waiting on you" in (await http.get("/queue?view=mine&agent=no-such-agent")).text
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=15)


async def _seeded(inbox: Any) -> bool:
    return inbox.notifier._known is not None


async def _failed(inbox: Any) -> bool:
    return bool(inbox.notifier.failures)


async def _count(fn: Any, n: int) -> bool:
    return len(await fn()) >= n


async def _verdict(base: str, name: str, run_id: str, request_id: str, digest: str) -> None:
    async with _http(base) as http:
        await sign_in(http, name)
        url = f"/runs/{run_id}/requests/{request_id}"
        card = await http.get(url)
        data = {
            "csrf": csrf_of(card.text),
            "decision": "approve",
            "args_digest": digest,
            "reason": "ok",
            "confirm": "yes",
        }
        resp = await http.post(url, data=data)
        assert resp.status_code == 303, resp.text
        assert "Your approval was recorded" in (await http.get(resp.headers["location"])).text
