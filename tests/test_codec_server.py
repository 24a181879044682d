"""The codec server (Temporal UI remote codec protocol) decodes only for authorized people (scenario 26).

`lockgate codec-server` runs as its own process here, exactly as `lockgate dev up` starts it; the
mountable routes are also served inside another Starlette app under a prefix.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import requests
import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.routing import Mount
from temporalio.api.common.v1 import Payloads

from lockgate import worker
from lockgate.bootstrap import PAYLOAD_KEY, PAYLOAD_READER_POLICY, PAYLOAD_WRITER_POLICY
from lockgate.codec_server import CodecConfig, codec_routes
from lockgate.config import Settings
from lockgate.devstack import free_port
from tests.support.stack import ROOT, Outside

UI = "http://ui.example:8233"
SECRET = {"name": "Ada Lovelace", "email": "ada@example.com"}


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"codec server exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code in (200, 404, 405):
                return
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@pytest.fixture(scope="module")
def codec_server(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    server_env = {k: v for k, v in env.items() if k not in ("VAULT_TOKEN", "LOCKGATE_OPERATOR_TOKEN")}
    server_env["LOCKGATE_PAYLOAD_KEY"] = PAYLOAD_KEY
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockgate.cli", "codec-server", "--port", str(port), "--origin", UI],
        env=server_env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tokens(outside: Outside) -> dict[str, str]:
    def token(*policies: str) -> str:
        return outside.vault.auth.token.create(policies=list(policies), ttl="10m")["auth"]["client_token"]

    return {"reader": token(PAYLOAD_READER_POLICY), "writer": token(PAYLOAD_WRITER_POLICY), "other": token("default")}


async def encrypted_body(settings: Settings, deps: Any) -> dict[str, Any]:
    """Payloads as the worker writes them into history, in the UI's JSON shape."""
    converter = worker.data_converter(settings.model_copy(update={"payload_key": PAYLOAD_KEY}), deps.vault)
    payloads = await converter.encode([SECRET, "A-1001"])
    body = json_format.MessageToDict(Payloads(payloads=payloads))
    assert all(base64.b64decode(p["metadata"]["encoding"]) == b"binary/encrypted" for p in body["payloads"])
    return body


def post(url: str, body: dict[str, Any], token: str | None = None, origin: str = UI) -> requests.Response:
    headers = {"Content-Type": "application/json", "X-Namespace": "default", "Origin": origin}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(url, data=json.dumps(body), headers=headers, timeout=10)


def values(resp: requests.Response) -> list[Any]:
    out = []
    for p in resp.json()["payloads"]:
        assert base64.b64decode(p["metadata"]["encoding"]) == b"json/plain"
        out.append(json.loads(base64.b64decode(p["data"])))
    return out


async def test_decode_only_for_tokens_allowed_to_decrypt(
    codec_server: str, tokens: dict[str, str], settings: Settings, deps: Any
) -> None:
    body = await encrypted_body(settings, deps)
    refused = {
        "no token": await asyncio.to_thread(post, f"{codec_server}/decode", body),
        "invalid token": await asyncio.to_thread(post, f"{codec_server}/decode", body, "hvs.not-a-token"),
        "token without the key": await asyncio.to_thread(post, f"{codec_server}/decode", body, tokens["other"]),
    }
    for why, resp in refused.items():
        assert resp.status_code == 403, why
        assert "Ada" not in resp.text and "error" in resp.json(), why
        # The refusal is readable by the UI in the browser (CORS on errors too).
        assert resp.headers["access-control-allow-origin"] == UI, why

    ok = await asyncio.to_thread(post, f"{codec_server}/decode", body, tokens["reader"])
    assert ok.status_code == 200, ok.text
    assert values(ok) == [SECRET, "A-1001"]
    assert ok.headers["access-control-allow-origin"] == UI


async def test_a_token_without_the_key_decodes_nothing_not_even_plain_payloads(
    codec_server: str, tokens: dict[str, str]
) -> None:
    """Payloads that are not encrypted need no key, but the codec server is no service for anyone
    with a token: a caller not allowed to use the payload key is refused whatever it sends."""
    plain = {
        "payloads": [
            {
                "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                "data": base64.b64encode(b'"A-1001"').decode(),
            }
        ]
    }
    other = await asyncio.to_thread(post, f"{codec_server}/decode", plain, tokens["other"])
    assert other.status_code == 403 and "may not use transit/decrypt/" in other.json()["error"]
    ok = await asyncio.to_thread(post, f"{codec_server}/decode", plain, tokens["reader"])
    assert ok.status_code == 200 and values(ok) == ["A-1001"]


async def test_encode_needs_a_data_key_and_round_trips(
    codec_server: str, tokens: dict[str, str], settings: Settings, deps: Any
) -> None:
    plain = json_format.MessageToDict(Payloads(payloads=worker.DATA_CONVERTER.payload_converter.to_payloads([SECRET])))
    denied = await asyncio.to_thread(post, f"{codec_server}/encode", plain, tokens["reader"])
    assert denied.status_code == 403 and "datakey" in denied.json()["error"]

    encoded = await asyncio.to_thread(post, f"{codec_server}/encode", plain, tokens["writer"])
    assert encoded.status_code == 200, encoded.text
    (payload,) = encoded.json()["payloads"]
    assert base64.b64decode(payload["metadata"]["encoding"]) == b"binary/encrypted"
    assert b"Ada" not in base64.b64decode(payload["data"])
    # What the codec server encrypts, the worker's converter reads (same envelope format).
    converter = worker.data_converter(settings.model_copy(update={"payload_key": PAYLOAD_KEY}), deps.vault)
    proto = json_format.ParseDict(encoded.json(), Payloads())
    assert await converter.decode(list(proto.payloads)) == [SECRET]


def test_cors_preflight_for_the_ui_origin_only(codec_server: str) -> None:
    asked = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    ok = requests.options(f"{codec_server}/decode", headers={"Origin": UI, **asked}, timeout=5)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == UI
    allowed = {h.strip().lower() for h in ok.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-namespace"} <= allowed
    assert "POST" in ok.headers["access-control-allow-methods"]

    other = requests.options(f"{codec_server}/decode", headers={"Origin": "http://evil.example", **asked}, timeout=5)
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


@pytest.fixture
async def mounted(settings: Settings) -> AsyncIterator[str]:
    """codec_routes under a prefix of another app (as the approvers' inbox will mount them)."""
    port = free_port()
    app = Starlette(routes=[Mount("/codec", routes=codec_routes(CodecConfig(settings.vault_addr, PAYLOAD_KEY, (UI,))))])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.to_thread(wait_healthy, f"http://127.0.0.1:{port}/codec/decode")
        yield f"http://127.0.0.1:{port}/codec"
    finally:
        server.should_exit = True
        await task


async def test_routes_mount_under_a_prefix(mounted: str, tokens: dict[str, str], settings: Settings, deps: Any) -> None:
    body = await encrypted_body(settings, deps)
    assert (await asyncio.to_thread(post, f"{mounted}/decode", body)).status_code == 403
    ok = await asyncio.to_thread(post, f"{mounted}/decode", body, tokens["reader"])
    assert ok.status_code == 200 and values(ok)[0] == SECRET


async def test_what_the_codec_server_answers_to_bad_requests_and_browsers(
    codec_server: str, tokens: dict[str, str], settings: Settings, deps: Any
) -> None:
    """Each refusal says why with its own status (the UI shows the text), unknown fields of the
    UI's JSON are ignored, and a browser on the UI's origin may send its credentials, also to a
    codec server on the operator's own machine."""
    body = await encrypted_body(settings, deps)
    url = f"{codec_server}/decode"

    no_token = await asyncio.to_thread(post, url, body)
    assert no_token.status_code == 403 and "send a Vault token" in no_token.json()["error"]
    other = await asyncio.to_thread(post, url, body, tokens["other"])
    assert other.status_code == 403 and "may not use transit/decrypt/" in other.json()["error"]

    def raw(data: str, method: str = "POST") -> requests.Response:
        headers = {"Content-Type": "application/json", "Origin": UI, "Authorization": f"Bearer {tokens['reader']}"}
        return requests.request(method, url, data=data, headers=headers, timeout=10)

    bad = await asyncio.to_thread(raw, "{not json")
    assert bad.status_code == 400 and "expected" in bad.json()["error"]
    wrong_shape = await asyncio.to_thread(raw, json.dumps({"payloads": "nope"}))
    assert wrong_shape.status_code == 400 and "expected" in wrong_shape.json()["error"]
    extra = await asyncio.to_thread(raw, json.dumps({**body, "namespace": "default"}))
    assert extra.status_code == 200 and values(extra) == [SECRET, "A-1001"]
    plain_options = await asyncio.to_thread(raw, "", "OPTIONS")
    assert plain_options.status_code == 405 and "POST" in plain_options.json()["error"]
    corrupt = json.loads(json.dumps(body))
    corrupt["payloads"][0]["data"] = base64.b64encode(b"not an envelope").decode()
    broken = await asyncio.to_thread(raw, json.dumps(corrupt))
    assert broken.status_code == 400 and "Ada" not in broken.text

    asked = {
        "Origin": UI,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
        "Access-Control-Request-Private-Network": "true",
    }
    preflight = await asyncio.to_thread(requests.options, url, headers=asked, timeout=5)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert preflight.headers["access-control-allow-private-network"] == "true"
    ok = await asyncio.to_thread(post, url, body, tokens["reader"])
    assert ok.headers["access-control-allow-credentials"] == "true"
