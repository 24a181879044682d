"""Webhook notifications: a request opened (with the card's summary), approved, rejected, expired or
halted (and by whom).

The notifier watches the same listing the queue shows (`ops.list_pending`) and posts each change to
every configured webhook (`LOCKGATE_INBOX_WEBHOOKS`, comma-separated). A URL prefixed `slack:` gets
Slack's `{"text", "blocks"}` only; any other URL gets that plus the plain `event` object, so Slack-
compatible receivers and plain JSON consumers read the same post. Deliveries retry with backoff; a
delivery that still fails is logged and kept for the inbox to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from lockgate.text import host_of, safe

__all__ = ["DeliveryFailure", "MemoryNotificationStore", "NotificationStore", "Notifier", "webhooks_from_env"]

log = logging.getLogger("lockgate.inbox")

# Four tries over about three seconds: a receiver that blips recovers, a dead one is reported soon.
ATTEMPTS = 4
BACKOFF = wait_exponential(multiplier=0.25, max=4)
POST_TIMEOUT = 5.0


def webhooks_from_env(env: dict[str, str]) -> list[str]:
    return [u.strip() for u in env.get("LOCKGATE_INBOX_WEBHOOKS", "").split(",") if u.strip()]


@dataclass(frozen=True)
class DeliveryFailure:
    """A delivery that failed. Only the webhook's host is kept: its path and query (a Slack hook's
    URL *is* its credential) never reach a page or a log."""

    host: str
    event: str
    run_id: str
    request_id: str
    error: str
    at: datetime


def _failure_text(err: httpx.HTTPError) -> str:
    """What went wrong, without the URL httpx puts in its messages (the hook's secret)."""
    if isinstance(err, httpx.HTTPStatusError):
        return f"HTTP {err.response.status_code} {err.response.reason_phrase}".strip()
    return f"{type(err).__name__}: {_URL.sub('<url>', str(err))}"


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


class _HideWebhooks(logging.Filter):
    """Rewrites any log line naming a webhook URL to name only its host."""

    def __init__(self, targets: list[str]) -> None:
        super().__init__()
        self._targets = sorted(set(targets), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(t in message for t in self._targets):
            for target in self._targets:
                message = message.replace(target, f"<webhook at {host_of(target)}>")
            record.msg, record.args = message, ()
        return True


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reads <...> as links and mentions: agent-supplied text must not become either.
    return safe(text, 500).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _key(req: dict[str, Any]) -> tuple[str, str]:
    return (req["run_id"], req["request_id"])


class NotificationStore(Protocol):
    """What was announced: one claim per request and event ("opened", "ended"), made before sending,
    so that of several inbox replicas exactly one announces each (lockgate/inbox/state.py)."""

    shared: bool

    def claim(self, key: tuple[str, str], event: str, status: str, request: dict[str, Any]) -> bool:
        """True when this caller is the first to claim `event` of `key` (it then announces it)."""
        ...

    def finish(self, key: tuple[str, str], event: str, status: str, detail: str) -> None: ...

    def announced_open(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Requests announced open and not yet ended (their end is still to be announced)."""
        ...

    def failed(self, limit: int) -> list[DeliveryFailure]:
        """The newest deliveries that failed (on any replica)."""
        ...

    def any(self) -> bool:
        """Whether anything was ever recorded."""
        ...


@dataclass
class MemoryNotificationStore:
    """One process's memory (a single inbox)."""

    shared: bool = False
    claims: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def claim(self, key: tuple[str, str], event: str, status: str, request: dict[str, Any]) -> bool:
        if (*key, event) in self.claims:
            return False
        self.claims[(*key, event)] = status
        return True

    def finish(self, key: tuple[str, str], event: str, status: str, detail: str) -> None:
        self.claims[(*key, event)] = status

    def announced_open(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {}

    def failed(self, limit: int) -> list[DeliveryFailure]:
        return []  # this process's own failures are in Notifier.failures already

    def any(self) -> bool:
        return bool(self.claims)


class Notifier:
    """Diffs the pending listing every `interval` seconds and posts opened/closed events."""

    def __init__(
        self,
        urls: list[str],
        *,
        base_url: str,
        list_pending: Callable[[], Awaitable[list[dict[str, Any]]]],
        interval: float = 2.0,
        store: NotificationStore | None = None,
        summarize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        closing: Callable[[dict[str, Any]], Awaitable[tuple[str, list[str]]]] | None = None,
    ) -> None:
        self.urls = urls
        self.store: NotificationStore = store if store is not None else MemoryNotificationStore()
        self.base_url = base_url.rstrip("/")
        self._list_pending = list_pending
        self.interval = interval
        # The card's summary of a request (tool, agent, key args rendered, risk, deadline), and how
        # a closed request ended and by whom (from the run's ledger).
        self._summarize = summarize or (lambda _req: {})
        self._closing = closing
        self.failures: deque[DeliveryFailure] = deque(maxlen=50)
        self.delivered = 0
        self._known: dict[tuple[str, str], dict[str, Any]] | None = None
        self._tasks: set[asyncio.Task[bool]] = set()
        if urls:
            # httpx logs every request with its URL at INFO: a webhook's URL is its secret.
            logging.getLogger("httpx").addFilter(_HideWebhooks([u.removeprefix("slack:") for u in urls]))

    def link(self, run_id: str, request_id: str) -> str:
        return f"{self.base_url}/runs/{run_id}/requests/{request_id}"

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - Temporal away: try again next round
                log.warning("inbox notifier: cannot list pending requests: %s", safe(err))
            await asyncio.sleep(self.interval)

    async def poll(self) -> None:
        current = {_key(r): r for r in await self._list_pending()}
        if self._known is None:
            # What other replicas (or this one before a restart) announced open and not ended yet.
            known = await asyncio.to_thread(self.store.announced_open)
            if not await asyncio.to_thread(self.store.any):
                # The very first start: requests already open were announced by whatever ran before.
                for key, req in current.items():
                    await asyncio.to_thread(self.store.claim, key, "opened", "skipped", req)
                known = dict(current)
            self._known = known
        for key, req in current.items():
            if key not in self._known:
                await self._announce("opened", key, req)
        now = datetime.now(UTC)
        for key, req in self._known.items():
            if key not in current:
                expired = datetime.fromisoformat(str(req["expires_at"])) <= now
                await self._announce("expired" if expired else "closed", key, req)
        self._known = current

    async def _announce(self, event: str, key: tuple[str, str], req: dict[str, Any]) -> None:
        # Claimed before it is sent: of several replicas exactly one announces each event (at most
        # once: a replica that dies between its claim and its posts loses that announcement).
        claim = "opened" if event == "opened" else "ended"
        if await asyncio.to_thread(self.store.claim, key, claim, "sending", req):
            self._emit(event, key, req)

    def _emit(self, event: str, key: tuple[str, str], req: dict[str, Any]) -> None:
        async def send() -> bool:
            nonlocal event, req
            if event != "opened" and self._closing is not None:
                # How it ended and by whom, once the run's ledger says (in this task: the listing
                # goes on meanwhile); the ledger away: it still says the request closed.
                by: list[str] = []
                with contextlib.suppress(Exception):
                    event, by = await self._closing(req)
                req = {**req, "closed_by": by}
            results = await asyncio.gather(*(self.deliver(url, event, req) for url in self.urls))
            mine = (key[0], key[1], event)
            failed = [f for f in self.failures if (f.run_id, f.request_id, f.event) == mine]
            status = "delivered" if all(results) else "failed"
            # What failed (host and error only: a webhook's URL is its secret), for every replica's page.
            detail = json.dumps([{**dataclasses.asdict(f), "at": f.at.isoformat()} for f in failed])
            claim = "opened" if event == "opened" else "ended"
            await asyncio.to_thread(self.store.finish, key, claim, status, detail)
            return all(results)

        task = asyncio.create_task(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def payload(self, url: str, event: str, req: dict[str, Any]) -> dict[str, Any]:
        link = self.link(req["run_id"], req["request_id"])
        by = [str(b) for b in req.get("closed_by") or []]
        who = f" by {_slack_escape(', '.join(by))}" if by else ""
        what = {
            "opened": "waits for approval",
            "approved": f"was approved{who}",
            "rejected": f"was rejected{who}",
            "halted": f"ended: the run was halted{who}",
            "closed": "is no longer waiting",
            "expired": "expired without a decision",
        }[event]
        summary = self._summarize(req)
        risk = ", ".join(summary.get("risk") or [])
        args = ", ".join(f"{k}={v}" for k, v in (summary.get("args") or {}).items())
        labels = f" [{_slack_escape(risk)}]" if risk else ""
        details = ""
        deadline = req.get("expires_at")
        if event == "opened":
            details = (f" Args: {_slack_escape(args)}." if args else "") + (
                f" Decide by {_slack_escape(str(deadline)[:19])} UTC." if deadline else ""
            )
        text = (
            f"lockgate: {_slack_escape(req['agent'])} step {req['step']} {_slack_escape(req['tool'])}{labels} "
            f"(run {_slack_escape(req['run_id'])}) {what}; group {_slack_escape(req['group'])}, "
            f"quorum {req['quorum']}.{details} <{link}|Open the card>"
        )
        button = "Open the card to decide" if event == "opened" else "Open the card"
        body: dict[str, Any] = {
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                {
                    "type": "actions",
                    "elements": [
                        # Only a link: the decision itself is made, and signed, on the card.
                        {"type": "button", "text": {"type": "plain_text", "text": button}, "url": link}
                    ],
                },
            ],
        }
        if not url.startswith("slack:"):
            body["event"] = {
                "event": f"request.{event}",
                "link": link,
                "request": req,
                "summary": {**summary, "deadline": deadline},
                "by": by,
            }
        return body

    async def deliver(self, url: str, event: str, req: dict[str, Any]) -> bool:
        target = url.removeprefix("slack:")
        body = self.payload(url, event, req)
        try:
            async with httpx.AsyncClient(timeout=POST_TIMEOUT) as http:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(ATTEMPTS),
                    wait=BACKOFF,
                    retry=retry_if_exception_type(httpx.HTTPError),
                    reraise=True,
                ):
                    with attempt:
                        resp = await http.post(target, json=body)
                        resp.raise_for_status()
        except httpx.HTTPError as err:
            failure = DeliveryFailure(
                host=host_of(target),
                event=event,
                run_id=req["run_id"],
                request_id=req["request_id"],
                error=safe(_failure_text(err), 300),
                at=datetime.now(UTC),
            )
            self.failures.appendleft(failure)
            log.warning(
                "inbox notifier: %s of %s/%s to %s failed after %d tries: %s",
                event,
                safe(req["run_id"]),
                safe(req["request_id"]),
                failure.host,
                ATTEMPTS,
                failure.error,
            )
            return False
        self.delivered += 1
        return True

    async def recent_failures(self, limit: int = 10) -> list[DeliveryFailure]:
        """Failed deliveries, newest first: this process's and, with a shared store, every replica's."""
        shared = await asyncio.to_thread(self.store.failed, limit) if self.store.shared else []
        seen: set[tuple[str, str, str, str, str]] = set()
        out = []
        for f in sorted([*self.failures, *shared], key=lambda f: f.at, reverse=True):
            mark = (f.host, f.event, f.run_id, f.request_id, f.error)
            if mark not in seen:
                seen.add(mark)
                out.append(f)
        return out[:limit]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
