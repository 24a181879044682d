"""The approval card shows everything that is signed, and offers only acts the run would take: a
planner's text past character 120 is on the card and the digest the approver signs is the digest of
exactly what was shown; reload never repeats a decision; people the run would refuse see why; closed
requests keep who decided; unknown ids are 404 pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from pydantic import BaseModel, Field
from temporalio.client import Client

from lockgate.config import Settings
from lockgate.inbox.card import digest_shown, shown_args
from lockgate.models import ApprovalRequest, args_digest, redact_args
from lockgate.spec import field_display, secret_fields, shown, tool
from tests.support.inbox import csrf_of, served_inbox, sign_in
from tests.support.stack import finish, pending_request, start

# What matters comes after character 120 (a preview would have cut it).
HIDDEN = "x" * 130 + " AND ALSO CLOSE ACCOUNT C-9 " + "y" * 40
REFUND = {"order_id": "A-1002", "amount_cents": 25000, "reason": HIDDEN}


def _http(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=30)


class _Args(BaseModel):
    amount_cents: int = Field(json_schema_extra=shown(money="EUR"))
    api_token: str = Field(json_schema_extra=shown(secret="operators"))
    order_id: str = Field(json_schema_extra=shown(id_of="order", link="https://shop.example/orders/{}"))
    note: str = ""


@tool("qa.card-preview")
def _card_tool(_ctx: object, args: _Args) -> dict[str, str]:
    return {}


def _request(args: dict[str, object], withheld: dict[str, str] | None = None) -> ApprovalRequest:
    now = datetime.now(UTC)
    return ApprovalRequest(
        request_id="1.1",
        run_id="r",
        agent="a",
        step=1,
        tool="qa.card-preview",
        args_digest=args_digest(args),
        args_preview=redact_args(args),
        group="finance",
        quorum=1,
        requested_at=now,
        expires_at=now + timedelta(minutes=5),
        decision_id="d",
        args={k: v for k, v in args.items() if k not in (withheld or {})},
        withheld=withheld or {},
    )


def test_declared_fields_render_and_only_declared_secrets_are_withheld() -> None:
    assert secret_fields(_Args) == {"api_token": "operators"}
    assert field_display(_Args)["amount_cents"] == {"money": "EUR", "minor_units": 2}
    args = {"amount_cents": 123456, "api_token": "t0ps3cret", "order_id": "A-1/2", "note": HIDDEN}
    req = _request(args, withheld=secret_fields(_Args))
    rows = {r.name: r for r in shown_args(req, _card_tool)}
    assert rows["amount_cents"].rendered == "1,234.56 EUR" and rows["amount_cents"].text == "123456"
    assert rows["api_token"].withheld == "operators" and rows["api_token"].text == ""
    assert rows["order_id"].link == "https://shop.example/orders/A-1%2F2" and rows["order_id"].id_of == "order"
    assert rows["note"].text == HIDDEN and rows["note"].folded  # the whole value, folded, never cut
    assert digest_shown(req) is None  # a withheld value: the card cannot check, and says so
    plain = _request({"note": HIDDEN})
    assert digest_shown(plain) is True
    # A request whose shown args differ from what its digest covers cannot pass as checked.
    forged = plain.model_copy(update={"args": {"note": HIDDEN[:120]}})
    assert digest_shown(forged) is False
    # A secret-looking but undeclared key is still masked in the short listing preview only.
    assert redact_args({"password": "p", "note": "n"}, secret=["note"]) == {"password": "***", "note": "***"}


async def test_the_card_shows_past_character_120_and_signs_only_what_it_shows(
    settings: Settings, client: Client, worker_running: str
) -> None:
    handle = await start(client, worker_running, "refund-agent", REFUND)
    req = await pending_request(handle)
    assert req.args["reason"] == HIDDEN and req.args_preview["reason"] != HIDDEN  # the preview is cut
    url = f"/runs/{handle.id}/requests/{req.request_id}"
    async with served_inbox(settings, client) as (base, _inbox), _http(base) as http:
        await sign_in(http, "alice")
        card = (await http.get(url)).text
        assert HIDDEN in card  # in full, in the page (folded in an expandable element)
        assert "<details" in card and f"({len(HIDDEN)} characters: show all)" in card
        assert "250.00 EUR" in card and "order id" in card  # the tool's declared rendering
        assert req.args_digest == args_digest(req.args)
        assert f'data-testid="digest">{req.args_digest}<' in card
        assert "the sha256 of exactly the arguments above" in card
        # Why and what next: the deciding policy's explanation, the run's request, what the run
        # already did to this order, and one line per outcome.
        assert "Refunds above 100.00 move real money out of the shop" in card
        assert "order_id=A-1002" in card and 'data-testid="run-request"' in card
        assert "orders.lookup</code> on Order A-1002" in card
        assert "<strong>Reject</strong>: the step is refused" in card and "At expiry the step is refused" in card
        # A rejection says why, from the button too.
        data = {"csrf": csrf_of(card), "args_digest": req.args_digest}
        assert (await http.post(url, data={**data, "decision": "reject", "reason": "  "})).status_code == 400
        # Approving a digest other than the one shown is refused by the run.
        other = await http.post(
            url, data={**data, "decision": "approve", "reason": "ok", "confirm": "yes", "args_digest": "0" * 64}
        )
        assert other.status_code == 303
        assert "Refused:" in (await http.get(other.headers["location"])).text
        assert (await pending_request(handle)).approvals == ()
        ok = await http.post(url, data={**data, "decision": "approve", "reason": "read it all", "confirm": "yes"})
        assert ok.status_code == 303 and ok.headers["location"].startswith(f"{url}?attempt=")
        assert await finish(handle) is None
        # Reloading the page the browser was sent to shows the answer and sends nothing again.
        first = await http.get(ok.headers["location"])
        again = await http.get(ok.headers["location"])
        assert "Your approval was recorded" in first.text and "Your approval was recorded" in again.text
        # The closed request keeps its context: who decided, when and why.
        assert 'data-testid="closed"' in again.text and "approved by alice" in again.text
        assert "read it all" in again.text
        # Someone else's attempt id shows bob nothing.
    async with served_inbox(settings, client) as (base, _inbox), _http(base) as http:
        await sign_in(http, "bob")
        page = (await http.get(ok.headers["location"])).text
        assert "Your approval was recorded" not in page and "approved by alice" in page


async def test_people_the_run_would_refuse_see_why_and_unknown_ids_are_404(
    settings: Settings, client: Client, worker_running: str
) -> None:
    handle = await start(client, worker_running, "refund-agent", REFUND, initiator="alice")
    req = await pending_request(handle)
    url = f"/runs/{handle.id}/requests/{req.request_id}"
    async with served_inbox(settings, client) as (base, _inbox):
        async with _http(base) as http:
            await sign_in(http, "alice")  # the initiator
            card = (await http.get(url)).text
            assert 'id="approve"' not in card and 'id="reject"' not in card
            assert "alice initiated or owns this run (separation of duties)" in card
            for path in (
                f"/runs/{handle.id}/requests/9.9",
                "/runs/no-such-run/requests/1.1",
                "/runs/bad id!/requests/1",
            ):
                resp = await http.get(path)
                assert resp.status_code == 404 and 'data-testid="error-page"' in resp.text, path
        async with _http(base) as http:
            await sign_in(http, "bob")
            card = (await http.get(url)).text
            assert 'id="approve"' in card and 'id="confirm"' in card  # production: confirmation asked
    await handle.cancel()


async def test_a_halt_closes_the_request_and_the_webhook_says_by_whom(
    settings: Settings, client: Client, worker_running: str
) -> None:
    from typing import Any

    from lockgate.ops import halt_run
    from tests.support.inbox import receiver, until
    from tests.support.stack import person

    async with receiver() as (url, rec), served_inbox(settings, client, webhooks=[url]) as (_base, inbox):

        async def seeded() -> bool:
            return inbox.notifier._known is not None  # pyright: ignore[reportPrivateUsage]

        await until(seeded, what="the notifier's first listing")
        handle = await start(client, worker_running, "refund-agent", REFUND)
        await pending_request(handle)

        async def announced() -> bool:
            return any(
                p["event"]["request"]["run_id"] == handle.id and p["event"]["event"] == "request.opened"
                for p in rec.posts
            )

        # The notifier learns of requests from the visibility listing each poll: a request opened and
        # halted between two polls was never announced, so nothing announces its close either. A
        # person halts what they were told about.
        await until(announced, what="the opening notification")
        await halt_run(client, handle.id, "wrong order", session=person("carol"))
        assert await finish(handle) is not None

        async def halted() -> list[dict[str, Any]]:
            return [
                p
                for p in rec.posts
                if p["event"]["request"]["run_id"] == handle.id and p["event"]["event"] != "request.opened"
            ]

        (post,) = await until(halted, what="the closing notification")
        assert (
            post["event"]["event"] == "request.halted"
            and post["event"]["by"] == ["carol"]
            and "the run was halted by carol" in post["text"]
        )
        assert post["event"]["request"]["run_id"] == handle.id
