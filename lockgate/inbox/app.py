"""The approvers' inbox: a Starlette app with server-rendered pages over the operator API.

Every act is the same call the CLI makes (`lockgate.ops`), as the signed-in person: an approval here
is `send_verdict(..., session=person)` and carries the same Transit-signed evidence. People sign in
with their Vault identity; their token stays server-side, sealed in a session row in the ledger's
database that only the browser's HttpOnly, SameSite=Strict cookie opens (lockgate/inbox/state.py),
so every inbox replica serves the session and a restart signs nobody out; the token is revoked at
logout. Every POST carries the session's CSRF token. Every string an agent, tool or person supplied
is autoescaped by Jinja2.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import hvac.exceptions
import requests
from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from temporalio.client import Client
from temporalio.service import RPCError

from lockgate.activities.codec import WITHHELD
from lockgate.config import Settings
from lockgate.errors import UserError
from lockgate.identity import AccountLocked, OperatorSession, login_token, login_userpass
from lockgate.inbox.notify import Notifier
from lockgate.inbox.state import InboxState, SqlNotificationStore, SqlThrottleStore, seal_session, session_hash
from lockgate.inbox.throttle import SignInThrottle, Throttled
from lockgate.models import ApprovalRequest, RunStatus, approval_refusal
from lockgate.spec import AgentRegistry, load_agents
from lockgate.text import safe

__all__ = ["Inbox", "create_app"]

log = logging.getLogger("lockgate.inbox")

HERE = Path(__file__).parent
COOKIE = "lockgate_sid"
LOGIN_COOKIE = "lockgate_login"
OPERATORS = "operators"
VIEWS = ("mine", "groups", "all")
# Security headers on every page: scripts and styles only from this origin (no inline script can
# run even if escaping were ever bypassed), no framing (clickjacking an approve button).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class WebSession:
    """One signed-in browser: the person's Vault session lives here, never in the browser."""

    sid: str
    person: OperatorSession
    # Whether the person's own Vault identity may decrypt payloads (a role: see `may_read`).
    may_read: bool = False
    created: float = field(default_factory=time.time)
    # The stored row this was opened from (another replica's sign-in again replaces it).
    sealed: str = ""

    @property
    def csrf(self) -> str:
        # Derived from the cookie's secret: the same on every replica, never stored.
        return hmac.new(self.sid.encode(), b"lockgate inbox csrf", "sha256").hexdigest()

    def expired(self) -> bool:
        return self.person.expires_at is not None and self.person.expires_at <= datetime.now(UTC)


class Inbox:
    """The inbox's state: Temporal client, agent registry, sessions, notifier."""

    def __init__(
        self,
        settings: Settings,
        client: Client | None = None,
        *,
        agents: AgentRegistry | None = None,
        webhooks: list[str] | None = None,
        base_url: str = "http://127.0.0.1:8234",
        notify_interval: float = 2.0,
        secure_cookies: bool = False,
        throttle: SignInThrottle | None = None,
        state: InboxState | None = None,
    ) -> None:
        self.settings = settings
        self._client = client
        self.agents = agents if agents is not None else load_agents(settings.agent_modules)
        # Sessions, OIDC sign-ins under way, notifications and sign-in failures: shared by every
        # replica in the ledger's database.
        self.state = state or InboxState(settings.ledger_url, pgbouncer=settings.ledger_pgbouncer)
        # This process's cache of sessions it opened (cookie secret -> session); the rows decide.
        self.sessions: dict[str, WebSession] = {}
        self.secure_cookies = secure_cookies
        # Failed sign-ins per account and address, stopped before OpenBao's own lockout; counted in
        # the shared state with wall-clock time (replicas compare each other's timestamps).
        self.throttle = throttle or SignInThrottle(store=SqlThrottleStore(self.state), clock=time.time)
        self._initiators: dict[str, str] = {}
        self.base_url = base_url.rstrip("/")
        self.notifier = Notifier(
            webhooks or [],
            base_url=base_url,
            list_pending=self._pending_raw,
            interval=notify_interval,
            store=SqlNotificationStore(self.state),
            summarize=self.summary,
            closing=self.closing,
        )

    def summary(self, req: dict[str, Any]) -> dict[str, Any]:
        """A listed request as its card sums it up: tool, agent, key args as declared, risk labels."""
        from lockgate.inbox.card import render_value
        from lockgate.spec import field_display

        spec = self.agents.get(req["agent"])
        tool = spec.tool(req["tool"]) if spec else None
        display = field_display(tool.args if tool else None)
        args = {k: render_value(v, display.get(k, {})) for k, v in (req.get("args") or {}).items()}
        return {"tool": req["tool"], "agent": req["agent"], "args": args, "risk": _risk(tool)}

    async def closing(self, req: dict[str, Any]) -> tuple[str, list[str]]:
        """How a request that left the listing ended, and by whom, from the run's ledger (asked a
        few times: the run records the decision as it closes the request)."""
        run_id, request_id = req["run_id"], req["request_id"]
        for _ in range(20):
            events = await asyncio.to_thread(lambda: _ledger(self.settings).events(run_id))
            closed = _closed_request(events, request_id)
            acts = [a for a in (closed or {}).get("acts", []) if a["kind"] == "approval.accepted"]
            rejected = [str(a.get("approver")) for a in acts if a.get("verdict") == "reject"]
            approved = [str(a.get("approver")) for a in acts if a.get("verdict") == "approve"]
            if rejected:
                return "rejected", rejected
            if closed is not None and len(approved) >= closed["req"].quorum:
                return "approved", approved
            if closed is not None and closed["expired_at"]:
                return "expired", []
            halts = [str(e.get("person")) for e in events if e["kind"] == "halt.accepted"]
            if halts:
                return "halted", halts
            await asyncio.sleep(0.5)
        return "closed", []

    async def client(self) -> Client:
        if self._client is None:
            from lockgate.worker import connect

            self._client = await connect(self.settings)
        return self._client

    async def _pending_raw(self) -> list[dict[str, Any]]:
        from lockgate.ops import list_pending

        return await list_pending(await self.client())

    # -- sessions ------------------------------------------------------------------------------
    def session_of(self, request: Request) -> WebSession | None:
        """The request's session, as `_Sessions` resolved it before the handler ran."""
        web = request.scope.get("lockgate.session")
        if web is None or web.expired():
            return None
        return web

    async def resolve(self, sid: str | None) -> WebSession | None:
        """The session the cookie `sid` opens: its row must exist (a sign-out on any replica ends
        it), open with the cookie's secret, and hold a Vault token that Vault says is the row's
        person's and still valid."""
        if not sid:
            return None
        row = await asyncio.to_thread(self.state.session, session_hash(sid))
        if row is None:
            self.sessions.pop(sid, None)
            return None
        web = self.sessions.get(sid)
        if web is None or web.sealed != row.sealed:
            web = None
            token = row.open(sid)
            if token is None:
                log.warning("inbox: refused a session row that does not open with its cookie")
                return None
            try:
                method = "userpass" if row.method == "userpass" else "token"
                person = await asyncio.to_thread(login_token, self.settings.vault_addr, token, method=method)
            except UserError:
                person = None
            if person is None or person.entity_id != row.entity_id or person.name != row.person:
                await asyncio.to_thread(self.state.drop_session, row.sid_hash)
                return None
            web = WebSession(sid=sid, person=person, may_read=await may_read(self.settings, person), sealed=row.sealed)
            self.sessions[sid] = web
        if web.expired():
            self.sessions.pop(sid, None)
            await asyncio.to_thread(self.state.drop_session, row.sid_hash)
            return None
        return web

    async def end_session(self, web: WebSession) -> None:
        """Signs `web` out on every replica and revokes the person's token."""
        self.sessions.pop(web.sid, None)
        await asyncio.to_thread(self.state.drop_session, session_hash(web.sid))
        await asyncio.to_thread(_revoke, web.person)

    async def initiator(self, run_id: str) -> str:
        """Who started a run (it never changes, so it is asked once per run)."""
        if run_id not in self._initiators:
            from lockgate.ops import run_status

            try:
                status = await run_status(await self.client(), run_id)
            except UserError:
                return "?"
            if status.initiator == "?":
                return "?"  # the run did not answer yet: ask again next time
            self._initiators[run_id] = status.initiator
        return self._initiators[run_id]

    async def queue(
        self, web: WebSession, view: str, agent: str | None, tool: str | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The pending requests in `view` (mine / groups / all), filtered; and every request (for
        the filter choices)."""
        everything = await self._pending_raw()
        person = web.person
        rows = []
        for raw in everything:
            spec = self.agents.get(raw["agent"])
            req = {
                **raw,
                "initiator": await self.initiator(raw["run_id"]),
                "owner": spec.owner if spec else "?",
                "risk": _risk(spec.tool(raw["tool"]) if spec else None),
            }
            in_group = req["group"] in person.groups
            if view == "groups" and not in_group:
                continue
            if view == "mine" and not (
                in_group and person.name not in (req["initiator"], req["owner"]) and person.name not in req["approvals"]
            ):
                continue
            if agent and req["agent"] != agent:
                continue
            if tool and req["tool"] != tool:
                continue
            rows.append(req)
        return rows, everything


# -- helpers ---------------------------------------------------------------------------------
def _risk(tool: Any) -> list[str]:
    """The risk labels that stand out on a queue row."""
    if tool is None:
        return []
    found = [("production", tool.production), ("irreversible", not tool.reversible)]
    found += [("regulated data", tool.data_class == "regulated"), ("egress", tool.egress)]
    return [name for name, on in found if on]


def _left(expires_at: datetime | str, now: datetime | None = None) -> str:
    if isinstance(expires_at, str):
        expires_at = datetime.fromisoformat(expires_at)
    seconds = int((expires_at - (now or datetime.now(UTC))).total_seconds())
    if seconds <= 0:
        return "expired"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m left"
    return f"{minutes}m{secs:02d}s left"


def _templates() -> Jinja2Templates:
    # autoescape=True for every template, whatever its extension: agent text is hostile by default.
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    # `clean` neutralises control and bidi characters (which reorder what a reader sees); Jinja2's
    # autoescape then escapes HTML. Never mark agent text |safe.
    env.filters["clean"] = lambda v, limit=2000: safe("" if v is None else v, limit)
    env.filters["left"] = _left
    return Jinja2Templates(env=env)


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    inbox: Inbox = request.app.state.inbox
    web = inbox.session_of(request)
    context.setdefault("web", web)
    context.setdefault("me", web.person if web else None)
    context.setdefault("is_operator", bool(web and OPERATORS in web.person.groups))
    context.setdefault("may_read", bool(web and web.may_read))
    context.setdefault("withheld", WITHHELD)
    return request.app.state.templates.TemplateResponse(request, name, context, status_code=status_code)


def _login_redirect(request: Request) -> RedirectResponse:
    nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(nxt, safe='')}", status_code=303)


# A canonical path on this site: printable ASCII URL characters only. Browsers drop tabs and
# newlines and read `\\` as `/`, so `/\t/evil.example` or `/\\evil.example` would leave the site.
_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*")


def _local_path(nxt: str | None) -> str:
    # Only a path on this site: `//evil.example` or `https://...` would be an open redirect.
    if not nxt or not _LOCAL_PATH.fullmatch(nxt) or "//" in nxt.split("?", 1)[0]:
        return "/"
    parts = urlsplit(nxt)
    if parts.scheme or parts.netloc:
        return "/"
    return nxt


async def _authed_form(request: Request) -> tuple[WebSession | None, Any, Response | None]:
    """The session and form of a POST, or the response refusing it (no session, wrong CSRF)."""
    inbox: Inbox = request.app.state.inbox
    web = inbox.session_of(request)
    if web is None:
        return None, None, _login_redirect(request)
    form = await request.form()
    token = str(form.get("csrf", ""))
    if not token or not hmac.compare_digest(token, web.csrf):
        log.warning("inbox: refused a POST to %s without a valid CSRF token", safe(request.url.path))
        return None, None, PlainTextResponse("refused: missing or wrong CSRF token", status_code=403)
    return web, form, None


# -- pages -----------------------------------------------------------------------------------
async def login_page(request: Request) -> Response:
    token = secrets.token_urlsafe(32)
    resp = _render(request, "login.html", login_csrf=token, next=_local_path(request.query_params.get("next")))
    resp.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=request.app.state.inbox.secure_cookies
    )
    return resp


async def login(request: Request) -> Response:
    inbox: Inbox = request.app.state.inbox
    form = await request.form()
    token = str(form.get("csrf", ""))
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not token or not cookie or not hmac.compare_digest(token, cookie):
        return PlainTextResponse("refused: missing or wrong CSRF token", status_code=403)
    user, password = str(form.get("username", "")).strip(), str(form.get("password", ""))
    nxt = _local_path(str(form.get("next", "")))
    address = request.client.host if request.client else None
    try:
        inbox.throttle.begin(user, address)
    except Throttled as err:
        log.warning("inbox: sign-in of %s from %s throttled: %s", safe(user), safe(address or "-"), err.message)
        resp = _login_form(request, 429, nxt, err.message, user)
        resp.headers["Retry-After"] = str(err.seconds)
        return resp
    try:
        person = await asyncio.to_thread(login_userpass, inbox.settings.vault_addr, user, password)
    except UserError as err:
        return _login_form(request, 423 if isinstance(err, AccountLocked) else 401, nxt, str(err), user)
    inbox.throttle.succeeded(user, address)
    return await _start_session(request, person, nxt)


def _login_form(request: Request, status: int, nxt: str, error: str, user: str) -> Response:
    inbox: Inbox = request.app.state.inbox
    fresh = secrets.token_urlsafe(32)
    resp = _render(
        request, "login.html", status, login_csrf=fresh, next=nxt, error=error, username=user, locked=status == 423
    )
    resp.set_cookie(LOGIN_COOKIE, fresh, httponly=True, samesite="strict", secure=inbox.secure_cookies)
    return resp


async def _start_session(request: Request, person: OperatorSession, nxt: str, *, redirect: bool = True) -> Response:
    inbox: Inbox = request.app.state.inbox
    previous = inbox.session_of(request)
    if previous is not None:
        # Signing in again replaces the browser's session: the old one ends and its token is revoked.
        await inbox.end_session(previous)
    sid = secrets.token_urlsafe(32)
    row = seal_session(
        sid,
        person.token,
        person=person.name,
        entity_id=person.entity_id,
        method=person.method,
        expires_at=person.expires_at.timestamp() if person.expires_at else None,
    )
    await asyncio.to_thread(inbox.state.put_session, row)
    web = WebSession(sid=sid, person=person, may_read=await may_read(inbox.settings, person), sealed=row.sealed)
    inbox.sessions[web.sid] = web
    log.info("inbox: %s signed in (%s)", safe(person.name), person.method)
    if redirect:
        resp: Response = RedirectResponse(nxt, status_code=303)
    else:
        # After a cross-site redirect (the identity provider's), a SameSite=Strict cookie is not sent
        # on a further redirect; a page of our own that moves on is a same-site navigation.
        resp = _render(request, "signed_in.html", next=nxt, who=person.name)
    resp.set_cookie(COOKIE, web.sid, httponly=True, samesite="strict", secure=inbox.secure_cookies, path="/")
    resp.delete_cookie(LOGIN_COOKIE)
    return resp


async def may_read(settings: Settings, person: OperatorSession) -> bool:
    """Whether `person` may read payloads: their own token may decrypt with the payload key (the
    inbox decodes with its own identity, so it shows payload data only to those Vault lets read it)."""
    from lockgate.activities.codec import PayloadKeyError, VaultTransit

    if not settings.payload_key:
        return True  # nothing is encrypted: nothing more to withhold than Temporal shows anyone
    transit = VaultTransit.with_token(settings.vault_addr, person.token)
    try:
        return await asyncio.to_thread(transit.allowed, [f"decrypt/{settings.payload_key}"])
    except PayloadKeyError:
        return False


def _revoke(person: OperatorSession) -> None:
    with contextlib.suppress(hvac.exceptions.VaultError, requests.RequestException):
        person.client().auth.token.revoke_self()


OIDC_COOKIE = "lockgate_oidc"
OIDC_WINDOW = 600  # seconds a sign-in at the identity provider may take


async def oidc_start(request: Request) -> Response:
    from urllib.parse import parse_qs, urlparse

    from lockgate.inbox.oidc import auth_url

    inbox: Inbox = request.app.state.inbox
    nxt = _local_path(request.query_params.get("next"))
    try:
        url, nonce = await asyncio.to_thread(
            auth_url, inbox.settings.vault_addr, f"{inbox.base_url}/login/oidc/callback"
        )
    except UserError as err:
        return await _login_error(request, str(err), nxt)
    state = (parse_qs(urlparse(url).query).get("state") or [""])[0]
    if not state:
        return await _login_error(request, "OIDC sign-in is not available: no state in the authorization URL", nxt)
    binding = secrets.token_urlsafe(32)
    await asyncio.to_thread(inbox.state.put_oidc, state, binding, nonce, nxt)
    resp = RedirectResponse(url, status_code=303)
    # Lax, not Strict: it must come back on the provider's top-level redirect to the callback. It binds
    # the callback to the browser that started the sign-in (no signing someone in as someone else).
    resp.set_cookie(
        OIDC_COOKIE, binding, httponly=True, samesite="lax", secure=inbox.secure_cookies, max_age=OIDC_WINDOW
    )
    return resp


async def oidc_callback(request: Request) -> Response:
    from lockgate.inbox.oidc import callback_token

    inbox: Inbox = request.app.state.inbox
    state, code = request.query_params.get("state", ""), request.query_params.get("code", "")
    pending = await asyncio.to_thread(inbox.state.oidc, state) if state else None
    binding = request.cookies.get(OIDC_COOKIE, "")
    if pending is None or not binding or not hmac.compare_digest(session_hash(binding), pending[0]):
        return await _login_error(request, "OIDC sign-in refused: unknown or foreign sign-in (start again)", "/")
    if not await asyncio.to_thread(inbox.state.take_oidc, state):  # one callback per sign-in
        return await _login_error(request, "OIDC sign-in refused: unknown or foreign sign-in (start again)", "/")
    _binding, nonce, nxt, started = pending
    if time.time() - started > OIDC_WINDOW or not code:
        return await _login_error(request, "OIDC sign-in refused: it took too long or returned no code", nxt)
    try:
        token = await asyncio.to_thread(
            callback_token, inbox.settings.vault_addr, state=state, code=code, client_nonce=nonce
        )
        person = await asyncio.to_thread(login_token, inbox.settings.vault_addr, token)
    except UserError as err:
        return await _login_error(request, str(err), nxt)
    resp = await _start_session(request, person, nxt, redirect=False)
    resp.delete_cookie(OIDC_COOKIE)
    return resp


async def _login_error(request: Request, message: str, nxt: str) -> Response:
    inbox: Inbox = request.app.state.inbox
    fresh = secrets.token_urlsafe(32)
    resp = _render(request, "login.html", 401, login_csrf=fresh, next=nxt, error=message)
    resp.set_cookie(LOGIN_COOKIE, fresh, httponly=True, samesite="strict", secure=inbox.secure_cookies)
    return resp


async def logout(request: Request) -> Response:
    web, _form, refused = await _authed_form(request)
    if refused is not None:
        return refused
    assert web is not None
    await request.app.state.inbox.end_session(web)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


def _queue_args(request: Request) -> tuple[str, str | None, str | None]:
    view = request.query_params.get("view", "mine")
    view = view if view in VIEWS else "mine"
    return view, request.query_params.get("agent") or None, request.query_params.get("tool") or None


async def queue_page(request: Request, fragment: bool = False) -> Response:
    inbox: Inbox = request.app.state.inbox
    web = inbox.session_of(request)
    if web is None:
        return _login_redirect(request) if not fragment else PlainTextResponse("signed out", status_code=401)
    view, agent, tool = _queue_args(request)
    error = None
    try:
        rows, everything = await inbox.queue(web, view, agent, tool)
    except (UserError, RuntimeError, RPCError) as err:  # Temporal away: say so, keep polling
        rows, everything, error = [], [], f"cannot list requests: {err}"
    context = {
        "rows": rows,
        "view": view,
        "agent": agent,
        "tool": tool,
        "agents": sorted({r["agent"] for r in everything} | ({agent} if agent else set())),
        "tools": sorted({r["tool"] for r in everything} | ({tool} if tool else set())),
        "failures": await inbox.notifier.recent_failures(10),
        "error": error,
        "now": datetime.now(UTC),
        "query": request.url.query,
    }
    return _render(request, "_queue.html" if fragment else "queue.html", **context)


async def queue_fragment(request: Request) -> Response:
    return await queue_page(request, fragment=True)


async def _status(inbox: Inbox, run_id: str) -> RunStatus:
    from lockgate.ops import run_status

    return await run_status(await inbox.client(), run_id)


def _ui_link(inbox: Inbox, run_id: str) -> str | None:
    ui = inbox.settings.ui_address
    if not ui:
        return None
    ui = ui if ui.startswith(("http://", "https://")) else f"http://{ui}"
    namespace = quote(inbox.settings.namespace or "default", safe="")
    return f"{ui.rstrip('/')}/namespaces/{namespace}/workflows/{quote(run_id, safe='')}"


_BUNDLE: dict[str, Any] = {}
BUNDLE_FOR = 30.0  # seconds a loaded policy bundle is reused for explanations


def _explanations(inbox: Inbox, policy_ids: tuple[str, ...]) -> list[tuple[str, str]]:
    """Each deciding policy's `@explanation("...")` annotation, from the policies in force now."""
    from lockgate.errors import PolicyError
    from lockgate.policies import load_bundle

    loaded = _BUNDLE.get("bundle")
    if loaded is None or time.monotonic() - _BUNDLE.get("at", 0.0) > BUNDLE_FOR:
        try:
            loaded = load_bundle(Path(inbox.settings.policy_dir), inbox.agents)
        except (PolicyError, OSError):
            loaded = None
        _BUNDLE.update(bundle=loaded, at=time.monotonic())
    out = []
    for pid in policy_ids:
        statement = loaded.by_id(pid) if loaded is not None else None
        if statement is not None and statement.annotations.get("explanation"):
            out.append((pid, statement.annotations["explanation"]))
    return out


def _closed_request(events: list[dict[str, Any]], request_id: str) -> dict[str, Any] | None:
    """A request that is no longer waiting, from the run's ledger: what was asked and who decided,
    when and why (None: the run never asked it)."""
    asked = next(
        (e for e in events if e["kind"] == "approval.requested" and str(e.get("request_id")) == request_id), None
    )
    if asked is None:
        return None
    try:
        req = ApprovalRequest.model_validate({k: v for k, v in asked.items() if k in ApprovalRequest.model_fields})
    except ValueError:
        return None
    acts = [
        e
        for e in events
        if e["kind"] in ("approval.accepted", "approval.refused") and str(e.get("request_id")) == request_id
    ]
    expired = next(
        (e for e in events if e["kind"] == "approval.expired" and str(e.get("request_id")) == request_id), None
    )
    accepted = [a for a in acts if a["kind"] == "approval.accepted"]
    rejected = next((a for a in accepted if a.get("verdict") == "reject"), None)
    approvals = [a for a in accepted if a.get("verdict") == "approve"]
    if rejected is not None:
        outcome = f"rejected by {rejected.get('approver')}"
    elif len(approvals) >= req.quorum:
        outcome = "approved by " + ", ".join(str(a.get("approver")) for a in approvals)
    elif expired is not None:
        outcome = "expired without a decision"
    else:
        outcome = "closed without a decision (the run ended)"
    return {"req": req, "acts": acts, "outcome": outcome, "expired_at": expired["at"] if expired else None}


async def card_page(request: Request) -> Response:
    """One request's card. A decision is POSTed, then the browser is sent back here with
    `?attempt=ID` (post/redirect/get): reloading shows the run's answer again, never re-sends it."""
    from lockgate.inbox.card import digest_shown, earlier_effects, shown_args
    from lockgate.ops import approval_attempt

    inbox: Inbox = request.app.state.inbox
    web = inbox.session_of(request)
    if web is None:
        return _login_redirect(request)
    run_id, request_id = request.path_params["run_id"], request.path_params["request_id"]
    if not _valid_run_id(run_id):
        return _render(request, "error.html", 404, message=f"unknown run {run_id!r}")
    try:
        status = await _status(inbox, run_id)
    except UserError as err:
        return _render(request, "error.html", 404, message=str(err))
    req = next((r for r in status.pending_approvals if r.request_id == request_id), None)
    closed = None
    events = await asyncio.to_thread(lambda: _ledger(inbox.settings).events(run_id))
    if req is None:
        closed = _closed_request(events, request_id)
        if closed is None:
            return _render(request, "error.html", 404, message=f"run {run_id} has no approval request {request_id!r}")
    agent = inbox.agents.get(status.agent)
    shown = req or (closed["req"] if closed else None)
    tool = agent.tool(shown.tool) if (agent and shown) else None
    now = datetime.now(UTC)
    result = None
    attempt_id = request.query_params.get("attempt")
    if attempt_id:
        with contextlib.suppress(UserError, RPCError, RuntimeError):
            attempt = await approval_attempt(await inbox.client(), run_id, attempt_id)
            # Only the viewer's own attempt: a link cannot show anyone a result they did not cause.
            mine = (web.person.name, f"{web.person.name} (unverified)")
            if attempt is not None and attempt.approver in mine and attempt.request_id == request_id:
                result = {"accepted": attempt.accepted, "verdict": attempt.verdict, "reason": attempt.reason}
    refusal = None
    digest_ok: bool | None = None
    if req is not None:
        digest_ok = digest_shown(req)
        refusal = approval_refusal(
            web.person.name,
            web.person.groups,
            req,
            initiator=status.initiator,
            owner=agent.owner if agent else status.owner,
            now=now,
        )
        if refusal is None and digest_ok is False:
            refusal = "the arguments shown do not hash to the request's digest: nothing here can be approved"
    resource, effects = earlier_effects(events, tool, req.args, inbox.agents.tool) if req else (None, [])
    return _render(
        request,
        "card.html",
        resource=resource,
        effects=effects,
        explanations=_explanations(inbox, shown.policy_ids if shown else ()),
        run_id=run_id,
        request_id=request_id,
        status=status,
        req=req,
        closed=closed,
        args=shown_args(req, tool) if req else [],
        digest_ok=digest_ok,
        agent=agent,
        tool=tool,
        ui_link=_ui_link(inbox, run_id),
        result=result,
        now=now,
        refusal=refusal,
        may_decide=req is not None and refusal is None,
        confirm=bool(tool and (tool.production or not tool.reversible)),
    )


async def verdict(request: Request) -> Response:
    from lockgate.ops import send_verdict

    inbox: Inbox = request.app.state.inbox
    web, form, refused = await _authed_form(request)
    if refused is not None:
        return refused
    assert web is not None
    decision = str(form.get("decision", ""))
    if decision not in ("approve", "reject"):
        return PlainTextResponse("decision must be approve or reject", status_code=400)
    run_id, request_id = request.path_params["run_id"], request.path_params["request_id"]
    reason = str(form.get("reason", "")).strip()[:500]
    # The digest the person saw on the card: they approve exactly those arguments, or nothing.
    digest = str(form.get("args_digest", "")) or None
    card = f"/runs/{quote(run_id, safe='')}/requests/{quote(request_id, safe='')}"
    if decision == "reject" and not reason:
        return PlainTextResponse("refused: a rejection says why (give a reason)", status_code=400)
    if decision == "approve" and await _needs_confirmation(inbox, run_id, request_id):
        if not reason or form.get("confirm") != "yes":
            return PlainTextResponse(
                "refused: a production or irreversible action is approved only with a reason and the "
                "confirmation box ticked",
                status_code=400,
            )
    try:
        attempt = await send_verdict(
            await inbox.client(),
            run_id,
            request_id,
            session=web.person,
            approve=decision == "approve",
            reason=reason,
            args_digest=digest,
        )
    except UserError as err:
        return await _card_refused(request, str(err), decision)
    log.info(
        "inbox: %s %s %s/%s: %s",
        safe(web.person.name),
        decision,
        safe(run_id),
        safe(request_id),
        "accepted" if attempt.accepted else f"refused ({safe(attempt.reason)})",
    )
    return RedirectResponse(f"{card}?attempt={quote(attempt.attempt_id, safe='')}", status_code=303)


async def _needs_confirmation(inbox: Inbox, run_id: str, request_id: str) -> bool:
    """Whether the request's tool is production or irreversible (then approving asks more)."""
    try:
        status = await _status(inbox, run_id)
    except UserError:
        return False  # the run is gone: send_verdict says so
    req = next((r for r in status.pending_approvals if r.request_id == request_id), None)
    agent = inbox.agents.get(status.agent)
    tool = agent.tool(req.tool) if (agent and req) else None
    return tool is None or tool.production or not tool.reversible


async def _card_refused(request: Request, message: str, decision: str) -> Response:
    """A verdict the run never received (it is not running, the request is unknown): nothing changed."""
    return _render(
        request, "error.html", 409, message=f"Refused: your {decision} was not sent: {message}", title="Not sent"
    )


def _sse(event: str, data: Any) -> str:
    """One server-sent event (JSON data on one line)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


# How often the live streams look again, and how long one stream lasts (the browser reconnects).
LIVE_EVERY = 1.0
LIVE_FOR = 600.0


async def card_events(request: Request) -> Response:
    """The card's live state as server-sent events: quorum, run state, and closing (once)."""
    inbox: Inbox = request.app.state.inbox
    if inbox.session_of(request) is None:
        return PlainTextResponse("signed out", status_code=401)
    run_id, request_id = request.path_params["run_id"], request.path_params["request_id"]
    if not _valid_run_id(run_id):
        return PlainTextResponse("unknown run", status_code=404)

    async def stream() -> AsyncIterator[str]:
        last: dict[str, Any] | None = None
        deadline = time.monotonic() + LIVE_FOR
        while time.monotonic() < deadline and inbox.session_of(request) is not None:
            try:
                status = await _status(inbox, run_id)
            except (UserError, RPCError, RuntimeError):
                status = None
            if status is not None:
                req = next((r for r in status.pending_approvals if r.request_id == request_id), None)
                now: dict[str, Any] = {"state": status.state}
                if req is not None:
                    who = ", ".join(f"{a} ✔" for a in req.approvals)
                    now["quorum"] = f"{len(req.approvals)} of {req.quorum} from {req.group}" + (
                        f": {who}" if who else ""
                    )
                else:
                    now["closed"] = "the run is " + status.state
                if now != last:
                    last = now
                    yield _sse("card", now)
                if req is None:
                    return
            await asyncio.sleep(LIVE_EVERY)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


async def queue_events(request: Request) -> Response:
    """The queue's rows as server-sent events (each row rendered by the server once, when new)."""
    inbox: Inbox = request.app.state.inbox
    if inbox.session_of(request) is None:
        return PlainTextResponse("signed out", status_code=401)
    view, agent, tool = _queue_args(request)
    row = request.app.state.templates.get_template("_row.html")

    async def stream() -> AsyncIterator[str]:
        last: list[Any] | None = None
        deadline = time.monotonic() + LIVE_FOR
        while time.monotonic() < deadline:
            web = inbox.session_of(request)
            if web is None:
                return
            try:
                rows, _everything = await inbox.queue(web, view, agent, tool)
            except (UserError, RuntimeError, RPCError):
                rows = None
            if rows is not None:
                now = datetime.now(UTC)
                out = [
                    {
                        "run_id": r["run_id"],
                        "request_id": r["request_id"],
                        "tool": safe(r["tool"]),
                        "agent": safe(r["agent"]),
                        "quorum": f"{safe(r['group'])} · {len(r['approvals'])} of {r['quorum']}",
                        "html": row.render(r=r, now=now).strip(),
                    }
                    for r in rows
                ]
                key = [(o["run_id"], o["request_id"], o["quorum"]) for o in out]
                if key != last:
                    last = key
                    yield _sse("queue", {"rows": out})
            await asyncio.sleep(LIVE_EVERY * 2)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


async def _timeline(inbox: Inbox, run_id: str) -> tuple[RunStatus | None, dict[str, Any]]:
    from lockgate import worker
    from lockgate.audit import history_entries, timeline

    client = await inbox.client()
    status: RunStatus | None = None
    history: list[dict[str, Any]] = []
    try:
        status = await _status(inbox, run_id)
        async for wf in client.list_workflows(f'WorkflowId = "{run_id}"'):
            events = (await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()).events
            history += history_entries(events, worker.DATA_CONVERTER)
    except UserError:
        status = None
    ledger = _ledger(inbox.settings)
    doc = await asyncio.to_thread(timeline, ledger, run_id, status.model_dump(mode="json") if status else None, history)
    return status, doc


async def run_page(request: Request, message: str | None = None, status_code: int = 200) -> Response:
    inbox: Inbox = request.app.state.inbox
    if inbox.session_of(request) is None:
        return _login_redirect(request)
    run_id = request.path_params["run_id"]
    if not _valid_run_id(run_id):
        return _render(request, "error.html", 404, message=f"unknown run {run_id!r}")
    status, doc = await _timeline(inbox, run_id)
    if status is None and not doc["entries"]:
        return _render(request, "error.html", 404, message=f"unknown run {run_id!r}")
    web = inbox.session_of(request)
    if message is None and request.query_params.get("halted") and web is not None:
        # After post/redirect/get: said from the run's own record, not from the link.
        halts = await asyncio.to_thread(lambda: _ledger(inbox.settings).events(run_id, kind="halt.accepted"))
        if any(e.get("person") == web.person.name for e in halts):
            message = f"halt sent by {web.person.name}: the run stops, compensates and revokes"
    return _render(
        request,
        "run.html",
        status_code,
        run_id=run_id,
        status=status,
        doc=doc,
        ui_link=_ui_link(inbox, run_id),
        message=message,
    )


def _valid_run_id(run_id: str) -> bool:
    from lockgate.ids import InvalidRunId, check_run_id

    try:
        check_run_id(run_id)
    except InvalidRunId:
        return False
    return True


async def halt(request: Request) -> Response:
    from lockgate.ops import halt_run

    inbox: Inbox = request.app.state.inbox
    web, form, refused = await _authed_form(request)
    if refused is not None:
        return refused
    assert web is not None
    run_id = request.path_params["run_id"]
    if OPERATORS not in web.person.groups:
        return await run_page(request, f"refused: {web.person.name} is not in group operators", 403)
    reason = str(form.get("reason", "")).strip()[:500]
    if not reason or form.get("confirm") != "yes":
        return await run_page(request, "refused: a halt needs a reason and the confirmation box ticked", 400)
    try:
        await halt_run(await inbox.client(), run_id, reason, session=web.person)
    except UserError as err:
        return await run_page(request, f"refused: {err}", 409)
    log.info("inbox: %s halted %s", safe(web.person.name), safe(run_id))
    # Post/redirect/get: the run page then shows the halt from the run's own record.
    return RedirectResponse(f"/runs/{quote(run_id, safe='')}?halted=1", status_code=303)


_LEDGERS: dict[str, Any] = {}


def _ledger(settings: Settings) -> Any:
    """The ledger, opened once per process: with its row key when the inbox may derive it (its
    rows then carry lockgate's MAC, its reads check them)."""
    from lockgate.verify import open_ledger

    if settings.ledger_url not in _LEDGERS:
        _LEDGERS[settings.ledger_url] = open_ledger(settings)
    return _LEDGERS[settings.ledger_url]


def _freeze_store(settings: Settings) -> Any:
    from lockgate.activities.freeze import FreezeStore

    return FreezeStore(_ledger(settings))


async def freeze_page(request: Request, message: str | None = None, status_code: int = 200) -> Response:
    inbox: Inbox = request.app.state.inbox
    if inbox.session_of(request) is None:
        return _login_redirect(request)
    rows = await asyncio.to_thread(lambda: _freeze_store(inbox.settings).state())
    web = inbox.session_of(request)
    done = request.query_params.get("done")
    if message is None and done in ("froze", "unfroze") and web is not None:
        # After post/redirect/get: said from the stored state, not from the link.
        mine = sorted((r for r in rows if r.by == web.person.name), key=lambda r: r.at)
        if mine and mine[-1].frozen == (done == "froze"):
            last = mine[-1]
            target = "every agent" if last.scope == "*" else last.scope
            note = "; no tool of it runs from the next gate on" if last.frozen else "; frozen runs were woken"
            message = f"{last.by} {done} {target}{note}"
    return _render(request, "freeze.html", status_code, rows=rows, agents=inbox.agents.names(), message=message)


async def freeze(request: Request) -> Response:
    # The same steps as `lockgate freeze/unfreeze`: a signed statement stored as the row's evidence
    # (workers lift a freeze only on a verified operator's unfreeze), then frozen runs are woken.
    from lockgate.activities.freeze import ALL
    from lockgate.ops import set_freeze, wake_frozen

    inbox: Inbox = request.app.state.inbox
    web, form, refused = await _authed_form(request)
    if refused is not None:
        return refused
    assert web is not None
    person = web.person
    if OPERATORS not in person.groups:
        return await freeze_page(request, f"refused: {person.name} is not in group operators", 403)
    scope = str(form.get("scope", ""))
    action = str(form.get("action", ""))
    if action not in ("freeze", "unfreeze") or (scope != ALL and inbox.agents.get(scope) is None):
        return await freeze_page(request, "refused: choose an agent (or every agent) and freeze or unfreeze", 400)
    reason = str(form.get("reason", "")).strip()[:500]
    frozen = action == "freeze"
    if not reason or form.get("confirm") != "yes":
        return await freeze_page(
            request, "refused: the kill switch needs a reason and the confirmation box ticked", 400
        )
    try:
        await asyncio.to_thread(set_freeze, _ledger(inbox.settings), person, scope, frozen, reason)
    except UserError as err:
        return await freeze_page(request, f"refused: {err}", 409)
    woken: list[str] = []
    if not frozen:
        with contextlib.suppress(UserError, RuntimeError):
            woken = await wake_frozen(await inbox.client(), None if scope == ALL else scope)
    target = "every agent" if scope == ALL else scope
    log.info("inbox: %s %s %s", safe(person.name), action, safe(target))
    del woken  # the page shows the stored state
    return RedirectResponse(f"/freeze?done={'froze' if frozen else 'unfroze'}", status_code=303)


async def healthz(_request: Request) -> Response:
    return PlainTextResponse("ok")


class _Sessions(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path != "/healthz" and not request.url.path.startswith("/static/"):
            inbox: Inbox = request.app.state.inbox
            request.scope["lockgate.session"] = await inbox.resolve(request.cookies.get(COOKIE))
        return await call_next(request)


class _SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def create_app(inbox: Inbox) -> Starlette:
    """The inbox app over `inbox`; its lifespan runs the notifier (when webhooks are configured)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(inbox.notifier.run()) if inbox.notifier.urls else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await inbox.notifier.close()
            # Sessions outlive this process (another replica, or this one restarted, serves them):
            # they end at sign-out or when the person's Vault token expires.
            inbox.sessions.clear()

    from lockgate.inbox.mcp import mcp_page, mcp_pin  # its own module: MCP pins reviewed in the inbox

    app = Starlette(
        routes=[
            Route("/", queue_page),
            Route("/queue", queue_fragment),
            Route("/queue/events", queue_events),
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/login/oidc", oidc_start, methods=["GET"]),
            Route("/login/oidc/callback", oidc_callback, methods=["GET"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/runs/{run_id}", run_page, methods=["GET"]),
            Route("/runs/{run_id}/halt", halt, methods=["POST"]),
            Route("/runs/{run_id}/requests/{request_id}", card_page, methods=["GET"]),
            Route("/runs/{run_id}/requests/{request_id}", verdict, methods=["POST"]),
            Route("/runs/{run_id}/requests/{request_id}/events", card_events, methods=["GET"]),
            Route("/freeze", freeze_page, methods=["GET"]),
            Route("/freeze", freeze, methods=["POST"]),
            Route("/mcp", mcp_page, methods=["GET"]),
            Route("/mcp/pin", mcp_pin, methods=["POST"]),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(_SecurityHeaders), Middleware(_Sessions)],
        lifespan=lifespan,
    )
    app.state.inbox = inbox
    app.state.templates = _templates()
    return app


def serve(inbox: Inbox, host: str, port: int) -> None:
    import uvicorn

    # Live pages hold server-sent event streams open: stopping waits for them only so long.
    uvicorn.run(create_app(inbox), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
