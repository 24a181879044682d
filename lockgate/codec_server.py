"""The codec server: the Temporal Web UI's remote codec protocol, over Vault Transit.

`POST /decode` and `POST /encode` take and return `{"payloads": [...]}` (protobuf JSON: base64
`data` and metadata values). Every caller brings a Vault token (`Authorization: Bearer <token>`):

- `/decode` answers only a token whose policy allows `transit/decrypt/<key>` for every key the
  payloads name; the unwrap itself is done with that same token, so Vault's audit log names who read.
- `/encode` answers only a token allowed `transit/datakey/plaintext/<key>` (the configured key).
- anyone else gets `403 {"error": ...}` and nothing decrypted (a refusal, not a silent pass-through:
  a script or the UI sees at once that it is not authorized).

The server holds no Vault credential of its own. CORS (preflight included) is part of the routes,
so `codec_routes(...)` can be mounted under any prefix of another Starlette app (the approvers'
inbox): `Mount("/codec", routes=codec_routes(config))`. `lockgate codec-server` serves them alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from temporalio.api.common.v1 import Payloads

from lockgate import vaultio
from lockgate.activities.codec import (
    WITHHELD,
    PayloadKeyError,
    PayloadKeyForbidden,
    PayloadKeyUnavailable,
    TransitCodec,
    VaultTransit,
    encrypted_key_names,
)

__all__ = ["CodecConfig", "bearer_token", "codec_app", "codec_routes", "serve"]

log = logging.getLogger("lockgate.codec")

# Headers the Temporal UI sends to a codec server (X-Namespace always, Authorization when asked to).
CODEC_HEADERS = ("Authorization", "Content-Type", "X-Namespace")
# Temporal refuses payloads above 2 MiB each; a UI batch of a few of them fits.
MAX_BODY = 16 * 1024 * 1024

TokenOf = Callable[[Request], "str | None"]


@dataclass(frozen=True)
class CodecConfig:
    """Where Vault is, which key `/encode` uses, which browser origins may call.

    Args:
        vault_addr: Vault's address (`VAULT_ADDR`).
        key: the Transit key `/encode` encrypts under (`LOCKGATE_PAYLOAD_KEY`); None: `/encode`
            returns payloads as they are, as an unencrypted deployment would store them.
        origins: origins of the Temporal UI (and inbox) allowed to call from a browser.
        mount: the Transit engine's mount.
    """

    vault_addr: str
    key: str | None
    origins: Sequence[str] = ()
    mount: str = "transit"


def bearer_token(request: Request) -> str | None:
    """The Vault token of `Authorization: Bearer <token>`."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def codec_routes(config: CodecConfig, *, token_of: TokenOf = bearer_token) -> list[BaseRoute]:
    """`/decode` and `/encode` as Starlette routes, CORS included.

    Args:
        config: Vault address, payload key, allowed origins.
        token_of: how a request carries its Vault token (default: a Bearer header; the inbox can
            pass one reading its signed-in session).
    """
    session = vaultio.make_session(
        pool_maxsize=16, addr=config.vault_addr
    )  # one keep-alive pool to Vault for every caller

    async def handle(request: Request, decode: bool) -> Response:
        if request.method != "POST":
            return _error(405, 'POST {"payloads": [...]}')
        try:
            body = json.loads(await request.body())
            payloads = list(json_format.ParseDict(body, Payloads(), ignore_unknown_fields=True).payloads)
        except (ValueError, TypeError, json_format.ParseError) as err:
            return _error(400, f'expected {{"payloads": [...]}}: {err}')
        token = token_of(request)
        where = f"namespace {request.headers.get('x-namespace', '-')}, {len(payloads)} payloads"
        if not token:
            log.info("codec %s refused (no Vault token): %s", request.url.path, where)
            return _error(403, "send a Vault token (Authorization: Bearer <token>) allowed to use the payload key")
        transit = VaultTransit.with_token(config.vault_addr, token, session=session)
        transit.mount = config.mount
        if decode:
            keys = encrypted_key_names(payloads) or ({config.key} if config.key else set())
            paths = [f"decrypt/{k}" for k in sorted(keys)]
        else:
            paths = [f"datakey/plaintext/{config.key}"] if config.key else []
        codec = TransitCodec(transit, None if decode else config.key)
        try:
            if paths and not await asyncio.to_thread(transit.allowed, paths):
                denied = ", ".join(f"transit/{p}" for p in paths)
                raise PayloadKeyForbidden(
                    f"{WITHHELD} (this token may not use {denied})" if decode else f"this token may not use {denied}"
                )
            out = await (codec.decode(payloads) if decode else codec.encode(payloads))
        except PayloadKeyForbidden as err:
            log.info("codec %s refused: %s: %s", request.url.path, where, err)
            return _error(403, str(err))
        except PayloadKeyUnavailable as err:
            return _error(503, str(err))
        except PayloadKeyError as err:
            return _error(400, str(err))
        log.info("codec %s: %s", request.url.path, where)
        return JSONResponse(json_format.MessageToDict(Payloads(payloads=out)) or {"payloads": []})

    async def decode(request: Request) -> Response:
        return await handle(request, decode=True)

    async def encode(request: Request) -> Response:
        return await handle(request, decode=False)

    cors = Middleware(
        CORSMiddleware,
        allow_origins=list(config.origins),
        allow_methods=["POST", "OPTIONS"],
        allow_headers=list(CODEC_HEADERS),
        allow_credentials=True,
        # A UI served from elsewhere may call a codec server on the operator's own machine.
        allow_private_network=True,
    )
    return [
        Route(path, fn, methods=["POST", "OPTIONS"], middleware=[cors], max_body_size=MAX_BODY)
        for path, fn in (("/decode", decode), ("/encode", encode))
    ]


def codec_app(config: CodecConfig) -> Starlette:
    """The standalone codec server: the codec routes and `GET /health`."""

    async def health(_request: Request) -> Response:
        return JSONResponse({"ok": True, "key": config.key, "vault": config.vault_addr})

    return Starlette(routes=[*codec_routes(config), Route("/health", health)])


def serve(config: CodecConfig, host: str = "127.0.0.1", port: int = 8235) -> None:
    """Serves `codec_app(config)` until interrupted (uvicorn)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(codec_app(config), host=host, port=port, log_level="warning", access_log=False)
