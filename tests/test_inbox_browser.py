"""The inbox in a real browser (Playwright driving Debian's Chromium) on the session's stack: sign
in, find the request in the live queue, approve it with the keyboard, watch the run complete; a
refused attempt shows the run's reason; screenshots at desktop and phone width."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
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
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
REFUND = {"order_id": "A-1002", "amount_cents": 25000, "reason": "<script>alert('card')</script> damaged parcel"}


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


async def _sign_in(page: Page, base: str, name: str) -> None:
    await page.goto(f"{base}/")
    await expect(page).to_have_url(f"{base}/login?next=%2F")
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
        await _sign_in(page, base, "alice")
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

        # `a` approves (the keyboard shortcut); the run's answer is shown.
        await page.get_by_label("Reason").fill("customer sent photos")
        await page.locator("body").click(position={"x": 5, "y": 5})
        await page.keyboard.press("a")
        await expect(page.get_by_test_id("result")).to_contain_text("Your approval was recorded")
        assert await finish(handle) is None
        await page.goto(f"{base}/runs/{handle.id}")
        await expect(page.get_by_test_id("run-state")).to_have_text("completed")
        await expect(page.get_by_test_id("timeline")).to_contain_text("approve by alice accepted")
        await page.screenshot(path=str(ARTIFACTS / "inbox-run-desktop.png"), full_page=True)
        assert dialogs == []  # no agent-supplied script ever ran
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
        await page.get_by_role("button", name="Approve").click()
        result = page.get_by_test_id("result")
        await expect(result).to_contain_text("Refused:")
        await expect(result).to_contain_text("alice initiated or owns this run (separation of duties)")
        await page.screenshot(path=str(ARTIFACTS / "inbox-refused-phone.png"), full_page=True)
        # Rejecting with the keyboard needs a reason first: `r` moves to the reason field.
        await page.locator("body").click(position={"x": 5, "y": 5})
        await page.keyboard.press("r")
        await expect(page.get_by_label("Reason")).to_be_focused()
        await context.close()
    assert (await pending_request(handle)).approvals == ()
    await handle.cancel()
