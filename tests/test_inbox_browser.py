"""The inbox in a real browser (Playwright driving Debian's Chromium) on the session's stack: sign
in, find the request in the live queue (server-sent events), read every signed argument on the card
(expanding a long one), approve it with the keyboard alone, watch the run complete; people the run
would refuse see why; axe-core finds no violation on any page; screenshots at desktop and phone
width in tests/artifacts/screens/."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect
from temporalio.client import Client

from lockgate.config import Settings
from tests.support.inbox import served_inbox
from tests.support.stack import _STACK, ROOT, finish, pending_request, start, status_of

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
SCREENS = ARTIFACTS / "screens"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
REFUND = {"order_id": "A-1002", "amount_cents": 25000, "reason": "<script>alert('card')</script> damaged parcel"}
# A planner's text that matters only after character 120.
TAIL = "AND ALSO WIRE THE REST TO ACCOUNT 99"
LONG = {**REFUND, "reason": "damaged parcel; " + "." * 120 + " " + TAIL}
AXE = Axe()


async def _accessible(page: Page, name: str) -> None:
    """axe-core (bundled in axe-playwright-python) finds no violation; a screenshot at both widths."""
    results = await AXE.run(page)
    assert results.violations_count == 0, results.generate_report()
    SCREENS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        await page.set_viewport_size(viewport)
        await page.screenshot(path=str(SCREENS / f"{name}-{label}.png"), full_page=True)
    if size:
        await page.set_viewport_size(size)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


async def _sign_in(page: Page, base: str, name: str, *, check: bool = False) -> None:
    await page.goto(f"{base}/")
    await expect(page).to_have_url(f"{base}/login?next=%2F")
    if check:
        await _accessible(page, "login")
    await page.get_by_label("User").fill(name)
    await page.get_by_label("Password").fill(_STACK["LOCKGATE_DEV_PASSWORD"])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_test_id("who")).to_contain_text(name)


async def test_alice_approves_in_the_browser_and_the_run_completes(
    settings: Settings, client: Client, worker_running: str, browser: Browser
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    dialogs: list[Any] = []
    async with served_inbox(settings, client) as (base, _inbox):
        context = await browser.new_context(viewport=DESKTOP)
        page = await context.new_page()

        def on_dialog(dialog: Any) -> None:  # an alert() from agent text would land here
            dialogs.append(dialog)

        page.on("dialog", on_dialog)
        errors: list[Any] = []

        def on_error(err: Any) -> None:  # the inbox's own script must not fail
            errors.append(err)

        page.on("pageerror", on_error)
        await _sign_in(page, base, "alice", check=True)
        # The run starts while alice looks at her queue: the page's poll brings the request in.
        await expect(page.get_by_test_id("empty")).to_be_visible()
        handle = await start(client, worker_running, "refund-agent", REFUND)
        req = await pending_request(handle)
        row = page.locator(f'li.row[data-run="{handle.id}"]')
        await expect(row).to_be_visible(timeout=15_000)
        await expect(row).to_contain_text("refunds.issue")
        await row.locator("a").click()

        card = page.get_by_test_id("card")
        await expect(card).to_contain_text("refund-agent")
        await expect(card).to_contain_text("production")
        await expect(page.get_by_test_id("quorum")).to_have_text("0 of 1 from finance")
        await expect(page.get_by_test_id("args")).to_contain_text("<script>alert('card')</script> damaged parcel")
        await expect(page.get_by_test_id("args")).to_contain_text(req.args_digest)
        await page.screenshot(path=str(ARTIFACTS / "inbox-card-desktop.png"), full_page=True)
        readme_shot = ROOT / "docs" / "inbox-card.png"
        if os.environ.get("LOCKGATE_UPDATE_SCREENSHOTS") or not readme_shot.exists():
            # Only on request: the README's screenshot is tracked, a test run should not dirty the tree.
            shutil.copy(ARTIFACTS / "inbox-card-desktop.png", readme_shot)
        await page.set_viewport_size(PHONE)
        await page.screenshot(path=str(ARTIFACTS / "inbox-card-phone.png"), full_page=True)
        await page.set_viewport_size(DESKTOP)

        # No single key acts: `a` on the page does nothing.
        await page.locator("body").click(position={"x": 5, "y": 5})
        await page.keyboard.press("a")
        await page.wait_for_timeout(300)
        assert (await pending_request(handle)).approvals == ()
        await _accessible(page, "card")
        # Keyboard only: reason, the confirmation box (a production action), then Approve.
        await page.get_by_label("Reason").focus()
        await page.keyboard.type("customer sent photos")
        await page.keyboard.press("Tab")
        await expect(page.locator("#confirm")).to_be_focused()
        await page.keyboard.press("Space")
        await page.keyboard.press("Tab")
        await page.keyboard.press("Tab")  # past the (hidden) error line to Approve
        if not await page.locator("#approve").evaluate("b => b === document.activeElement"):
            await page.locator("#approve").focus()
        await expect(page.locator("#approve")).to_be_focused()
        await page.keyboard.press("Enter")
        await expect(page.get_by_test_id("result")).to_contain_text("Your approval was recorded")
        # Post/redirect/get: a reload shows the answer and sends nothing again.
        await page.reload()
        await expect(page.get_by_test_id("result")).to_contain_text("Your approval was recorded")
        assert await finish(handle) is None
        await page.goto(f"{base}/runs/{handle.id}")
        await expect(page.get_by_test_id("run-state")).to_have_text("completed")
        await expect(page.get_by_test_id("timeline")).to_contain_text("approve by alice accepted")
        await page.screenshot(path=str(ARTIFACTS / "inbox-run-desktop.png"), full_page=True)
        await _accessible(page, "run")
        await page.goto(f"{base}/")
        await _accessible(page, "queue")
        await page.goto(f"{base}/runs/{handle.id}/requests/{req.request_id}")
        await expect(page.get_by_test_id("closed")).to_contain_text("approved by alice")
        await _accessible(page, "card-closed")
        await page.goto(f"{base}/runs/{handle.id}/requests/77.1")
        await expect(page.get_by_test_id("error-page")).to_be_visible()
        await _accessible(page, "not-found")
        assert dialogs == []  # no agent-supplied script ever ran
        assert errors == []
        await context.close()
    assert (await status_of(handle)).state == "completed"


async def test_a_refused_attempt_shows_why_in_the_browser(
    settings: Settings, client: Client, worker_running: str, browser: Browser
) -> None:
    # alice started this run herself: separation of duties refuses her approval of it.
    handle = await start(client, worker_running, "refund-agent", REFUND, initiator="alice")
    req = await pending_request(handle)
    async with served_inbox(settings, client) as (base, _inbox):
        context = await browser.new_context(viewport=PHONE)
        page = await context.new_page()
        await _sign_in(page, base, "alice")
        await page.goto(f"{base}/?view=mine")
        await expect(page.locator(f'li.row[data-run="{handle.id}"]')).to_have_count(0)  # not waiting on her
        await page.goto(f"{base}/runs/{handle.id}/requests/{req.request_id}")
        # The run would refuse her: the card says why instead of offering buttons.
        await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
        await expect(page.get_by_test_id("why-not")).to_contain_text(
            "alice initiated or owns this run (separation of duties)"
        )
        await page.screenshot(path=str(ARTIFACTS / "inbox-refused-phone.png"), full_page=True)
        await _accessible(page, "card-refused")
        await context.close()
    assert (await pending_request(handle)).approvals == ()
    await handle.cancel()


async def test_the_approver_reads_past_character_120_and_rejects_with_a_reason(
    settings: Settings, client: Client, worker_running: str, browser: Browser
) -> None:
    handle = await start(client, worker_running, "refund-agent", LONG)
    req = await pending_request(handle)
    async with served_inbox(settings, client) as (base, _inbox):
        context = await browser.new_context(viewport=PHONE)
        page = await context.new_page()
        await _sign_in(page, base, "bob")
        await page.goto(f"{base}/runs/{handle.id}/requests/{req.request_id}")
        row = page.locator('tr[data-arg="reason"]')
        full = row.locator("pre.full")
        await expect(full).to_be_hidden()
        await row.locator("summary").click()  # expand: the whole value the digest covers
        await expect(full).to_be_visible()
        await expect(full).to_have_text(LONG["reason"])
        await expect(full).to_contain_text(TAIL)
        await expect(page.get_by_test_id("digest")).to_have_text(req.args_digest)
        await expect(page.get_by_test_id("digest-check")).to_contain_text("exactly the arguments above")
        await expect(page.locator('tr[data-arg="amount_cents"]')).to_contain_text("250.00 EUR")
        await _accessible(page, "card-long")
        # Reject from the button with no reason: refused in the page, focus on the reason, nothing sent.
        await page.get_by_role("button", name="Reject").click()
        await expect(page.locator("#reason")).to_be_focused()
        await expect(page.locator("#form-error")).to_contain_text("A rejection says why")
        assert (await pending_request(handle)).request_id == req.request_id
        await page.locator("#reason").fill("the tail asks for more than a refund")
        await page.get_by_role("button", name="Reject").click()
        await expect(page.get_by_test_id("result")).to_contain_text("Your rejection was recorded")
        await context.close()
    assert await finish(handle) is not None


async def test_the_card_goes_live_when_another_approver_votes(
    settings: Settings, client: Client, worker_running: str, browser: Browser
) -> None:
    from lockgate.ops import send_verdict
    from tests.support.stack import person

    steps = {"steps": [{"tool": "accounts.close", "args": {"customer_id": "C-502", "reason": "customer asked"}}]}
    async with served_inbox(settings, client) as (base, _inbox):
        context = await browser.new_context(viewport=DESKTOP)
        page = await context.new_page()
        await _sign_in(page, base, "dave")
        handle = await start(client, worker_running, "script-agent", steps)
        req = await pending_request(handle)
        await page.goto(f"{base}/runs/{handle.id}/requests/{req.request_id}")
        await expect(page.get_by_test_id("quorum")).to_have_text("0 of 2 from support-leads")
        await page.get_by_label("Reason").fill("typing while carol votes")
        await page.get_by_label("Reason").focus()
        first = await send_verdict(client, handle.id, req.request_id, session=person("carol"), approve=True)
        assert first.accepted
        # The quorum updates in place; the focused reason keeps its text and focus.
        await expect(page.get_by_test_id("quorum")).to_have_text("1 of 2 from support-leads: carol ✔", timeout=10_000)
        await expect(page.get_by_test_id("live")).to_contain_text("1 of 2")
        await expect(page.get_by_label("Reason")).to_be_focused()
        await expect(page.get_by_label("Reason")).to_have_value("typing while carol votes")
        await handle.cancel()
        await expect(page.get_by_test_id("closed-live")).to_be_visible(timeout=10_000)
        await context.close()


async def _approve_from_card(page: Page, reason: str) -> None:
    """What an approver does on the card alone: read, give a reason, confirm when asked, approve."""
    await page.get_by_label("Reason").fill(reason)
    if await page.locator("#confirm").count():
        await page.locator("#confirm").check()
    await page.get_by_role("button", name="Approve").click()
    await expect(page.get_by_test_id("result")).to_contain_text("was recorded")


SCENARIOS = [
    # (name, agent, input, approvers, tool, what the card must say, viewport)
    (
        "notify-after-pii",
        "refund-agent",
        {"order_id": "A-1001", "amount_cents": 500, "reason": "late", "notify": True},
        ["carol"],
        "customer.notify",
        ["egress", "has read customer PII", "customers.profile"],
        PHONE,
    ),
    (
        "quarantine",
        "incident-agent",
        {"host_id": "web-1"},
        ["frank"],
        "host.quarantine",
        ["production", "contain a high-severity alert", "an on-call engineer decides"],
        DESKTOP,
    ),
    (
        "close-account",
        "chain-agent",
        {"steps": [{"tool": "accounts.close", "args": {"customer_id": "C-503", "reason": "customer asked"}}]},
        ["carol", "dave"],
        "accounts.close",
        ["irreversible", "two different support leads", "customer id"],
        PHONE,
    ),
]


@pytest.mark.parametrize(("name", "agent", "data", "approvers", "tool", "says", "viewport"), SCENARIOS)
async def test_an_approver_decides_each_demo_scenario_from_the_card_alone(
    settings: Settings,
    client: Client,
    worker_running: str,
    browser: Browser,
    name: str,
    agent: str,
    data: dict[str, Any],
    approvers: list[str],
    tool: str,
    says: list[str],
    viewport: ViewportSize,
) -> None:
    handle = await start(client, worker_running, agent, data)
    req = await pending_request(handle)
    assert req.tool == tool
    async with served_inbox(settings, client) as (base, _inbox):
        for i, approver in enumerate(approvers):
            context = await browser.new_context(viewport=viewport)
            page = await context.new_page()
            await _sign_in(page, base, approver)
            await page.goto(f"{base}/?view=mine")
            await page.locator(f'li.row[data-run="{handle.id}"] a').click()
            card = page.get_by_test_id("card")
            for text in says:
                await expect(card).to_contain_text(text)
            await expect(page.get_by_test_id("quorum")).to_contain_text(f"{i} of {req.quorum}")
            await expect(page.get_by_test_id("digest")).to_have_text(req.args_digest)
            if i == 0:
                await _accessible(page, f"scenario-{name}")
            await _approve_from_card(page, f"{approver} read the card")
            await context.close()
    assert await finish(handle) is None
    assert (await status_of(handle)).state == "completed"


async def test_a_session_about_to_end_warns_and_keeps_the_typed_reason(
    settings: Settings, client: Client, worker_running: str, browser: Browser
) -> None:
    import hvac

    # bob's Vault token lives 125 s: the warning shows 2 minutes before its end, so at once.
    root = hvac.Client(url=settings.vault_addr, token=settings.vault_token)
    root.write_data("auth/userpass/users/bob", data={"token_ttl": "125s"})
    handle = await start(client, worker_running, "refund-agent", REFUND)
    req = await pending_request(handle)
    try:
        async with served_inbox(settings, client) as (base, _inbox):
            context = await browser.new_context(viewport=PHONE)
            page = await context.new_page()
            await _sign_in(page, base, "bob")
            await page.goto(f"{base}/runs/{handle.id}/requests/{req.request_id}")
            await page.get_by_label("Reason").fill("half-typed reason")
            await expect(page.locator("#session-warning")).to_be_visible(timeout=10_000)
            await expect(page.locator("#session-warning")).to_contain_text("Sign in again in a new tab")
            await expect(page.locator("time[data-local] + .local").first).to_contain_text("your time:")
            await page.reload()  # what a return from signing in again looks like: the reason is back
            await expect(page.get_by_label("Reason")).to_have_value("half-typed reason")
            await _accessible(page, "session-warning")
            await context.close()
    finally:
        root.write_data("auth/userpass/users/bob", data={"token_ttl": "1h"})
        await handle.cancel()


async def test_the_kill_switch_has_no_default_scope_and_asks_for_a_reason(
    settings: Settings, client: Client, browser: Browser
) -> None:
    async with served_inbox(settings, client) as (base, _inbox):
        context = await browser.new_context(viewport=DESKTOP)
        page = await context.new_page()
        await _sign_in(page, base, "carol")
        await page.goto(f"{base}/freeze")
        await expect(page.locator("#scope")).to_have_value("")
        await _accessible(page, "freeze")
        # Freeze with nothing chosen: the browser keeps the form (scope, reason, confirmation required).
        await page.get_by_role("button", name="Freeze", exact=True).click()
        await expect(page).to_have_url(f"{base}/freeze")
        assert await page.locator("#scope").evaluate("s => !s.validity.valid")
        await expect(page.get_by_test_id("freezes")).not_to_contain_text("FROZEN")
        await page.locator("#scope").select_option("report-agent")
        await page.get_by_label("Reason").fill("browser drill")
        await page.locator("#freeze-confirm").check()
        await page.get_by_role("button", name="Freeze", exact=True).click()
        await expect(page.get_by_test_id("message")).to_contain_text("carol froze report-agent")
        await page.locator("#scope").select_option("report-agent")
        await page.get_by_label("Reason").fill("drill over")
        await page.locator("#freeze-confirm").check()
        await page.get_by_role("button", name="Unfreeze").click()
        await expect(page.get_by_test_id("message")).to_contain_text("carol unfroze report-agent")
        await context.close()
