"""Liveness and readiness that mean it, over HTTP (`LOCKGATE_HEALTH_ADDRESS=host:port`).

- `GET /livez`: 200 while this process's event loop turns (the answer itself comes from that loop,
  and a ticker on it must have run within `stall` seconds) and its worker has not shut down. A
  failing liveness probe means: restart the container.
- `GET /readyz`: 200 only when the worker polls (started, not draining, not shut down), its Vault
  token is valid (lookup-self answers with a TTL left, or a renewable token), and the ledger answers
  `SELECT 1`; else 503 naming what is wrong. A failing readiness probe means: send no work here
  (a draining worker turns not-ready first, then stops).

Both answer JSON: `{"ok": bool, "checks": {name: "ok" | problem}}`. Each check is bounded by
`timeout` seconds (a hung Vault or database is a failed check, not a hung probe).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

__all__ = ["Probes"]


class Probes:
    """The worker's probes.

    Args:
        vault: the worker's `VaultBroker` (its `client` logs in or renews as needed).
        ledger: the worker's ledger (its `engine` answers `SELECT 1`).
        timeout: seconds each check may take.
        stall: seconds without a tick of the event loop after which the process is not live.
    """

    def __init__(self, vault: Any, ledger: Any, *, timeout: float = 3.0, stall: float = 10.0) -> None:
        self.vault = vault
        self.ledger = ledger
        self.timeout = timeout
        self.stall = stall
        self.worker: Any = None  # temporalio Worker, once running
        self.draining = False
        self._tick = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None

    # -- checks --------------------------------------------------------------------------------
    def _pollers(self) -> str:
        if self.draining:
            return "draining: the worker stopped polling and finishes what it runs"
        if self.worker is None or not self.worker.is_running:
            return "the worker is not running (not started yet, or stopped)"
        if self.worker.is_shutdown:
            return "the worker shut down"
        return "ok"

    def _vault(self) -> str:
        try:
            data = self.vault.client.auth.token.lookup_self()["data"]
        except Exception as err:  # noqa: BLE001 - unreachable, sealed, token revoked: not ready
            return f"Vault: {type(err).__name__}: {str(err)[:200]}"
        ttl = int(data.get("ttl") or 0)
        if ttl <= 0 and not data.get("renewable") and data.get("expire_time"):
            return "Vault: the worker's token has expired"
        return "ok"

    def _ledger(self) -> str:
        try:
            with self.ledger.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as err:  # noqa: BLE001 - down, unreachable, pool exhausted: not ready
            return f"ledger: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        return "ok"

    async def _bounded(self, check: Callable[[], str], name: str) -> str:
        try:
            return await asyncio.wait_for(asyncio.to_thread(check), self.timeout)
        except TimeoutError:
            return f"{name}: no answer within {self.timeout:g} s"

    async def ready(self) -> tuple[bool, dict[str, str]]:
        vault, ledger = await asyncio.gather(self._bounded(self._vault, "Vault"), self._bounded(self._ledger, "ledger"))
        checks = {"pollers": self._pollers(), "vault": vault, "ledger": ledger}
        return all(v == "ok" for v in checks.values()), checks

    async def live(self) -> tuple[bool, dict[str, str]]:
        lag = time.monotonic() - self._tick
        loop = "ok" if lag < self.stall else f"the event loop has not turned for {lag:.1f} s"
        down = self.worker is not None and self.worker.is_shutdown and not self.draining
        checks = {"loop": loop, "worker": "the worker shut down" if down else "ok"}
        return all(v == "ok" for v in checks.values()), checks

    # -- HTTP ----------------------------------------------------------------------------------
    async def _tick_forever(self) -> None:
        while True:
            self._tick = time.monotonic()
            await asyncio.sleep(min(1.0, self.stall / 4))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing in them matters here
            parts = line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if path in ("/livez", "/healthz"):
                ok, checks = await self.live()
            elif path == "/readyz":
                ok, checks = await self.ready()
            else:
                ok, checks = False, {"path": "unknown: use /livez or /readyz"}
            status = "200 OK" if ok else ("404 Not Found" if "path" in checks else "503 Service Unavailable")
            body = json.dumps({"ok": ok, "checks": checks}).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def serve(self, address: str) -> None:
        """Starts answering on `address` (host:port; port 0 picks one: see `port`)."""
        host, _, port = address.rpartition(":")
        self._ticker = asyncio.create_task(self._tick_forever())
        self._server = await asyncio.start_server(self._handle, host or "0.0.0.0", int(port))  # noqa: S104

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
